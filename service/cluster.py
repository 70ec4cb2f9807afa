"""Cluster start-up: on one host, a process waits for the lower processes to listen.

Why: under ``python -m bytewax.testing dataflow:flow -p 2`` (or ``-i``/``-a`` on one
machine) every process imports the flow, then Timely's ``create_sockets`` runs: process
0 binds its listener (``localhost:2101``) and process 1 connects to it. On a failed
connect Timely prints ``worker 1: error connecting to worker 0 ...; retrying`` and
sleeps one whole second. The processes start together, so it is a race: on a tiny
recording a ``-p 2`` run took 0.41 s when process 0 won and 1.40 s when process 1
connected too early (2 runs of 3); on ``samples/sample.jsonl.gz``, 0.5 s against 1.5 s
(5 runs of 10). On a 4-second replay that second decides whether two processes beat
one by 1.7x. With this wait: no retry in 20 runs, 0.50-0.58 s each.

So :func:`await_lower_processes`, called once the flow is built, lets a process with id
K > 0 wait (polling every 10 ms, 5 s at most) until every lower process whose address is
on this host is listening; Timely's first connect then succeeds.

"Listening" is read from ``/proc/net/tcp`` and ``/proc/net/tcp6``, never probed: Timely
reads an 8-byte worker index from every accepted connection and panics when the peer
closes it, so a probe connection would crash process 0, and binding the port ourselves
would make process 0's bind fail. Nothing is done for process 0, without an address
list, for hosts that are not loopback (a real cluster: there the 1-s retry is
harmless), or where ``/proc/net/tcp`` does not exist. It never raises: after the
deadline or any error it returns, and Timely retries as before.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path

log = logging.getLogger(__name__)

PROC_NET = Path("/proc/net")
_TCP_LISTEN = "0A"


def cluster_place(
    argv: Sequence[str], env: Mapping[str, str]
) -> tuple[int, list[str]] | None:
    """This process's id and the cluster's ``host:port`` addresses, read as
    ``bytewax.run`` reads them (``-i``/``--process-id``, ``-a``/``--addresses``,
    defaulting to ``BYTEWAX_PROCESS_ID``/``BYTEWAX_ADDRESSES``); None if either is
    missing or unparsable."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-i", "--process-id", default=env.get("BYTEWAX_PROCESS_ID"))
    parser.add_argument("-a", "--addresses", default=env.get("BYTEWAX_ADDRESSES"))
    try:
        args, _ = parser.parse_known_args(list(argv))
        process_id = int(args.process_id)
    except (argparse.ArgumentError, SystemExit, TypeError, ValueError):
        return None
    if not args.addresses:
        return None
    return process_id, str(args.addresses).split(";")


def local_lower_ports(process_id: int, addresses: Sequence[str]) -> list[int]:
    """Ports of the processes below ``process_id`` whose host is a loopback address."""
    ports = []
    for address in addresses[: max(process_id, 0)]:
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")  # "[::1]:2101"
        if port.isdigit() and _is_loopback(host):
            ports.append(int(port))
    return ports


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    ips = {info[4][0] for info in infos}
    return bool(ips) and all(ipaddress.ip_address(ip).is_loopback for ip in ips)


def listening_ports(
    proc_net: Path = PROC_NET, wanted: Set[int] = frozenset()
) -> set[int] | None:
    """Ports with a TCP listener in this network namespace (IPv4 and IPv6), read from
    ``/proc/net/tcp{,6}``; None where ``/proc/net/tcp`` does not exist. Once every port
    of ``wanted`` is found, ``tcp6`` is not read (each read costs milliseconds)."""
    if not (proc_net / "tcp").exists():
        return None
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:  # tcp6 is missing when IPv6 is disabled
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rpartition(":")[2], 16))
        if wanted and wanted <= ports:
            break
    return ports


def wait_until_listening(
    ports: Iterable[int],
    timeout: float = 5.0,
    poll: float = 0.01,
    proc_net: Path = PROC_NET,
) -> bool:
    """Poll until every port has a listener; False if ``timeout`` seconds pass first.
    True at once when there is nothing to check (no ports, no ``/proc/net/tcp``)."""
    wanted = set(ports)
    deadline = time.monotonic() + timeout
    while wanted:
        listening = listening_ports(proc_net, wanted)
        if listening is None:
            return True
        if wanted <= listening:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def await_lower_processes(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> bool:
    """Wait until the lower processes of this cluster that run on this host listen.

    ``argv``/``env`` default to ``sys.argv[1:]`` and ``os.environ``. True when there was
    nothing to wait for or all listen; False when the deadline passed or an error
    stopped the check. Never raises.
    """
    try:
        place = cluster_place(
            sys.argv[1:] if argv is None else argv, os.environ if env is None else env
        )
        if place is None:
            return True
        process_id, addresses = place
        ports = local_lower_ports(process_id, addresses)
        if not ports:
            return True
        started = time.monotonic()
        ready = wait_until_listening(ports, timeout)
        waited = time.monotonic() - started
        if ready:
            log.debug(
                "process %d: waited %.3f s for ports %s of lower processes to listen",
                process_id,
                waited,
                ports,
            )
        else:
            log.warning(
                "process %d: lower processes not listening on ports %s after %.1f s; "
                "Timely retries the connection",
                process_id,
                ports,
                waited,
            )
        return ready
    except Exception:  # start-up help only: never stop the flow from starting
        log.debug("cluster start-up wait skipped", exc_info=True)
        return False
