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
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from pathlib import Path

from common.text import shown

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


def workers_per_process(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """``-w``/``--workers-per-process`` as ``bytewax.run`` reads it (default
    ``BYTEWAX_WORKERS_PER_PROCESS``, else 1); 1 when unparsable."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument(
        "-w", "--workers-per-process", default=env.get("BYTEWAX_WORKERS_PER_PROCESS")
    )
    try:
        args, _ = parser.parse_known_args(list(argv))
        return max(int(args.workers_per_process or 1), 1)
    except (argparse.ArgumentError, SystemExit, TypeError, ValueError):
        return 1


def own_products(
    products: Iterable[str],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The products this cluster member reads (and keeps the books of, see
    ``service/placement.py``) under ``-i``/``-a``; every product otherwise.

    Bytewax 0.21 gives partition ``i`` of the sorted partition names to worker
    ``i % (processes x workers)``, and process ``p`` runs workers ``p x w`` to
    ``p x w + w - 1`` (``service.placement.source_worker_for_product``). The views use
    it so that a member's live view and dashboard list the products it holds, not the
    other members' ones as "awaiting snapshot" forever.
    """
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    products = list(products)
    place = cluster_place(argv, env)
    if place is None:
        return products
    process_id, addresses = place
    workers = workers_per_process(argv, env)
    total = len(addresses) * workers
    ordered = sorted(products)
    return [p for p in products if (ordered.index(p) % total) // workers == process_id]


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


# --- a lost peer: one line naming it, instead of Bytewax's panic traceback -----------

_TCP_ESTABLISHED = "01"
HANGUPS_SCRIPT = str(Path(__file__).with_name("hangups.py"))
"""The process that times the ends of the peers' connections (run by path, with the
standard library only)."""
NAMING_GRACE_SECONDS = 1.0
PEER_TIMEOUT_SECONDS = 30.0
"""A peer that answers nothing this long is lost (the default of the stall watchdog)."""


def _hex_ip(text: str) -> str:
    """An address of ``/proc/net/tcp{,6}`` (32-bit words in host byte order) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def established(
    proc_net: Path = PROC_NET,
) -> list[tuple[tuple[str, int], tuple[str, int], int]]:
    """This namespace's established TCP connections: ``(local, remote, inode)``."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_ESTABLISHED:
                continue
            (lip, lport), (rip, rport) = (f.split(":") for f in fields[1:3])
            local = (_hex_ip(lip), int(lport, 16))
            remote = (_hex_ip(rip), int(rport, 16))
            found.append((local, remote, int(fields[9])))
    return found


def _resolve(host: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in infos}


def resolved(addresses: Sequence[str]) -> list[tuple[set[str], int]]:
    """Each ``host:port`` of the cluster as (its IP addresses, port); no IP when the
    name does not resolve (yet: a pod's name is published once it runs)."""
    hosts = []
    for address in addresses:
        host, _, port = address.strip().rpartition(":")
        hosts.append((_resolve(host), int(port) if port.isdigit() else -1))
    return hosts


def peer_connections(
    process_id: int,
    hosts: Sequence[tuple[set[str], int]],
    connections: Iterable[tuple[tuple[str, int], tuple[str, int], int]],
) -> dict[int, set[int]]:
    """Socket inode -> the process ids it may lead to (``hosts`` from :func:`resolved`).

    Timely connects process K to every lower process's address and accepts the higher
    ones on its own port: a connection to ``host:port`` of a lower process is that
    process; one accepted on this process's port comes from a higher process on that
    remote host (several candidates when several processes share a host)."""
    own_port = hosts[process_id][1]
    peers: dict[int, set[int]] = {}
    for (_, lport), (rip, rport), inode in connections:
        lower = {
            j for j in range(process_id) if rip in hosts[j][0] and rport == hosts[j][1]
        }
        higher = set()
        if lport == own_port:
            higher = {
                j for j in range(process_id + 1, len(hosts)) if rip in hosts[j][0]
            }
        if lower or higher:
            peers[inode] = lower | higher
    return peers


def _socket_fds(proc_self: Path = Path("/proc/self")) -> dict[int, int]:
    """Socket inode -> file descriptor, for this process."""
    fds: dict[int, int] = {}
    try:
        entries = list((proc_self / "fd").iterdir())
    except OSError:
        return fds
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            fds[int(target[8:-1])] = int(entry.name)
    return fds


class PeerWatch:
    """Which peer of the cluster went away first, seen the moment its connection closes.

    Why: when a peer process dies (``kill -9``, a crashed pod) Timely's network thread
    panics and Bytewax raises ``PanicException: Send thread panic: Any { .. }`` out of
    ``python -m bytewax.run``: a Rust traceback that names nobody (measured across two
    network namespaces: status 1, 0.013 s after the kill). This thread finds Timely's
    connections to the peers once they exist (``/proc/self/net/tcp`` and
    ``/proc/self/fd``; Timely offers no API), and a small process of its own
    (``service/hangups.py``) blocks in ``poll()`` on them for a hang-up only (never
    reading a byte: the data is Timely's) and notes when each ended, so the first peer
    to go is known although the others end too, because of it, milliseconds later.
    :func:`watch_peers` turns the panic into one line naming it.
    """

    def __init__(
        self,
        process_id: int,
        addresses: Sequence[str],
        timeout: float = PEER_TIMEOUT_SECONDS,
    ) -> None:
        self.process_id = process_id
        self.timeout = timeout
        """Seconds a peer may leave sent data unacknowledged (or not answer keepalive
        probes) before its connection is dropped; 0: the kernel's default (minutes)."""
        self.timed_out = False
        """Whether the first lost connection timed out (no answer) rather than closed."""
        self.addresses = [a.strip() for a in addresses]
        self.lost: list[int] = []
        """Process ids whose connection closed first (one, or the candidates)."""
        self._watched = threading.Event()
        self._lost_seen = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="peer-watch", daemon=True).start()

    def watching(self, timeout: float) -> bool:
        """True once the peers' connections are found and watched."""
        return self._watched.wait(timeout)

    def _find(self) -> dict[int, set[int]]:
        """fd -> candidate process ids, once every peer has a connection: the fds are
        this watcher's own duplicates of Timely's (see :meth:`_run`). Timely starts no
        worker before that, so this may wait as long as a peer takes to start: every
        50 ms for 5 s, then every 0.5 s; names resolved at most once a second."""
        wanted = set(range(len(self.addresses))) - {self.process_id}
        started = time.monotonic()
        hosts, resolved_at = resolved(self.addresses), time.monotonic()
        while True:
            inodes = peer_connections(self.process_id, hosts, established())
            held = _hold(inodes, _socket_fds())
            if set().union(*held.values(), set()) >= wanted:
                return held
            for fd in held:
                os.close(fd)
            now = time.monotonic()
            time.sleep(0.05 if now - started < 5 else 0.5)
            if now - resolved_at >= 1:
                hosts, resolved_at = resolved(self.addresses), now

    def _run(self) -> None:
        """Hold a duplicate of each peer's socket until the first loss is named, so
        that a connection Timely has already closed can still be asked when it last
        heard from its peer (:func:`ack_age`); time the ends in a process of its own
        (``service/hangups.py``: this thread wakes late when the worker holds the
        interpreter lock); name the first; then let go of everything."""
        held: dict[int, set[int]] = {}
        child = None
        try:
            held = self._find()
            timeouts_before = aborts_on_timeout()
            for fd in held:
                if self.timeout:
                    bound_silence(fd, self.timeout)
            child = time_ends(list(held))
            self._watched.set()
            ended = first_ends(child.stdout.fileno(), CLOSE_ORDER_SECONDS)
            if ended:
                self._first_loss(first_ended(ended), held, timeouts_before)
        except Exception:  # naming help only: never disturb the flow
            log.debug("watching the cluster's peers failed", exc_info=True)
        finally:
            self._watched.set()
            for fd in held:
                os.close(fd)
            if child is not None:
                child.kill()
                child.wait()

    def _first_loss(
        self, closed: list[int], by_fd: Mapping[int, set[int]], timeouts_before: int
    ) -> None:
        """Name the lost peer from the first connections that ended (``closed``).

        Under a partition a peer that closed its connection is alive enough to close:
        it is ending because of the one that went quiet, and both may end within the
        same millisecond (every member's timeout started together). So when a watched
        connection (ended or not) has acknowledged nothing for over half the timeout
        (:func:`quiet_after`), the quietest ones are named, as unreachable: keepalive
        makes a live peer answer within a third of it. Otherwise the closed ones are,
        and whether they timed out is read from the namespace's count (the socket's own
        error is gone: Timely's read took it)."""
        ages = {fd: ack_age(fd) for fd in by_fd}
        known = {fd: age for fd, age in ages.items() if age is not None}
        oldest = max(known.values(), default=0.0)
        if self.timeout and oldest > quiet_after(self.timeout):
            quiet = [by_fd[fd] for fd, age in known.items() if age >= 0.8 * oldest]
            lost, timed_out = set().union(*quiet), True
        else:
            lost = set().union(*(by_fd.get(fd, set()) for fd in closed))
            timed_out = aborts_on_timeout() > timeouts_before
        if lost:
            self.timed_out = timed_out
            self.lost = sorted(lost)
            self._lost_seen.set()

    def lost_line(self, panic: BaseException) -> str:
        """The one line said when the cluster's network panicked. The panic reaches
        the main thread about when the watcher wakes: it gets up to
        :data:`NAMING_GRACE_SECONDS` to record the peer (it is ready in well under a
        millisecond once it holds the GIL)."""
        if self._watched.is_set():
            self._lost_seen.wait(NAMING_GRACE_SECONDS)
        advice = (
            "this member stops too (status 1); restart the whole cluster "
            "(Bytewax clusters fail and recover as a whole)"
        )
        if self.lost:
            named = " or ".join(
                f"process {j} ({shown(self.addresses[j])})" for j in self.lost
            )
            how = (
                f"no answer for {self.timeout:g} s (unreachable)"
                if self.timed_out
                else "its connection closed"
            )
            return f"lost cluster peer {named}: {how}; {advice}"
        # no peer seen going (before the watch began, or a panic of another kind):
        # say what Bytewax said, in one line
        reason = shown(str(panic) or type(panic).__name__, limit=200)
        return f"the cluster's dataflow failed (Bytewax: {reason}); {advice}"


def keepalive_idle(seconds: float) -> int:
    """Seconds of silence before the first keepalive probe (whole seconds, >= 1)."""
    return max(1, int(seconds / 3))


def quiet_after(seconds: float) -> float:
    """A live peer's connection acknowledges something at least this often (keepalive
    answers within :func:`keepalive_idle` + a second); past it, a connection is quiet."""
    return max(seconds / 2, keepalive_idle(seconds) + 1.0)


def bound_silence(fd: int, seconds: float) -> None:
    """Make a peer that stops answering (a partition: no reset ever comes) drop its
    connection after about ``seconds``, so that Timely's thread for it fails and
    :class:`PeerWatch` names it: without this Linux retransmits for about 15 minutes
    and keeps an idle connection forever. ``TCP_USER_TIMEOUT`` bounds how long sent
    data may stay unacknowledged; keepalive probes, every second after a third of the
    bound of silence, make an idle connection send something to be acknowledged. Only
    socket options of Timely's socket change (set through a duplicate descriptor,
    closed at once). Never raises: the stall watchdog is the backstop."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if sock.type != socket.SOCK_STREAM:
                return
            idle = keepalive_idle(seconds)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, int(seconds) - idle)
            )
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000)
            )
    except (OSError, AttributeError, ValueError):
        log.debug("cannot bound the silence of a peer's connection", exc_info=True)


_TCP_INFO_LAST_ACK_RECV = 56
"""Offset of ``tcpi_last_ack_recv`` (ms since the last ACK came) in ``struct tcp_info``."""


def ack_age(fd: int) -> float | None:
    """Seconds since the socket last received an acknowledgement (a FIN carries one);
    None when unknown (the descriptor is closed)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack_from("I", info, _TCP_INFO_LAST_ACK_RECV)[0] / 1000
    except (OSError, AttributeError, struct.error):
        return None


CLOSE_ORDER_SECONDS = 0.005
"""Ends this close together are not told apart (kernel ticks are 1 to 4 ms); a peer
that ends because another did ends 14 to 30 ms later (measured)."""


def first_ended(ended: Mapping[int, int]) -> list[int]:
    """Of the connections' end times (fd -> ``time.monotonic_ns()``), the ones that
    ended first: within :data:`CLOSE_ORDER_SECONDS` of the earliest."""
    if not ended:
        return []
    first = min(ended.values())
    bound = first + int(CLOSE_ORDER_SECONDS * 1e9)
    return sorted(fd for fd, at in ended.items() if at <= bound)


def time_ends(fds: Sequence[int], timeout: float = 10.0) -> subprocess.Popen:
    """Start ``service/hangups.py`` on ``fds`` and return once it watches them (its
    ``ready`` line). Its output then gives the ends (:func:`first_ends`); closing its
    input or killing it lets go of its duplicates."""
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", HANGUPS_SCRIPT, *map(str, fds)],
        pass_fds=tuple(fds),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out = child.stdout.fileno()
    if not select.select([out], [], [], timeout)[0] or os.read(out, 6) != b"ready\n":
        child.kill()
        child.wait()
        raise OSError("the process timing the peers' connections did not start")
    return child


def first_ends(fd: int, window: float) -> dict[int, int]:
    """Read ``FD MONOTONIC_NS`` lines from the timing process (``fd``: its output)
    until ``window`` seconds past the first end have passed: every end in that window
    is known. Blocks until the first end; {} if the process ended without one."""
    text = b""
    deadline: float | None = None
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        text += chunk
        if deadline is None:
            deadline = time.monotonic() + window
    ends: dict[int, int] = {}
    for line in text.decode().splitlines():
        watched, at = line.split()
        ends[int(watched)] = int(at)
    return ends


def _hold(
    inodes: Mapping[int, set[int]], fds: Mapping[int, int]
) -> dict[int, set[int]]:
    """A duplicate fd of each socket in ``inodes`` (inode -> candidate process ids)
    that this process has open (``fds``: inode -> fd), checked to be that socket still
    (Timely could have closed the fd and a new file taken its number)."""
    held: dict[int, set[int]] = {}
    for inode, ids in inodes.items():
        if inode not in fds:
            continue
        try:
            fd = os.dup(fds[inode])
        except OSError:
            continue
        if os.fstat(fd).st_ino == inode:
            held[fd] = ids
        else:
            os.close(fd)
    return held


def aborts_on_timeout(proc_net: Path = PROC_NET) -> int:
    """Connections of this network namespace dropped because the other side stopped
    answering (``TcpExt: TCPAbortOnTimeout`` of ``/proc/net/netstat``); 0 if unknown."""
    try:
        lines = (proc_net / "netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines, lines[1:], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            counts = dict(zip(names.split(), values.split(), strict=False))
            try:
                return int(counts.get("TCPAbortOnTimeout", 0))
            except ValueError:
                return 0
    return 0


def is_panic(exc: BaseException) -> bool:
    """Bytewax's Rust panics reach Python as ``pyo3_runtime.PanicException``."""
    return type(exc).__name__ == "PanicException"


def watch_peers(
    on_lost: Callable[[str], object],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = PEER_TIMEOUT_SECONDS,
) -> PeerWatch | None:
    """In a cluster (``-i``/``-a`` with more than one address), watch the peers and
    turn a panic of the cluster's network into ``on_lost(one line)`` (the service
    passes :meth:`service.runtime.Shutdown.failed`: closers run, status 1). Anything
    else uncaught keeps Python's traceback. None outside a cluster; never raises."""
    try:
        place = cluster_place(
            sys.argv[1:] if argv is None else argv, os.environ if env is None else env
        )
        if place is None or len(place[1]) < 2 or not 0 <= place[0] < len(place[1]):
            return None
        watch = PeerWatch(*place, timeout=timeout)
        watch.start()
    except Exception:
        log.debug("not watching the cluster's peers", exc_info=True)
        return None
    previous = sys.excepthook

    def hook(kind, exc, tb):
        if exc is not None and is_panic(exc):
            on_lost(watch.lost_line(exc))
        previous(kind, exc, tb)

    sys.excepthook = hook
    log.info(
        "cluster member %d of %d; peers %s",
        watch.process_id,
        len(watch.addresses),
        ", ".join(
            f"{j}={shown(a)}"
            for j, a in enumerate(watch.addresses)
            if j != watch.process_id
        ),
    )
    return watch
