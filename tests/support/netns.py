"""Hosts of their own for cluster tests: Linux network namespaces joined by a bridge.

Why: on 127.0.0.1 a lost peer resets the connection at once, so a test there can
never show what a cluster does when the network between its hosts fails (no reset, no
error: packets just stop). Here each member runs in a namespace of its own with an
address on a private subnet (``10.231.X.0/24``), behind a veth pair whose host end is
in a bridge; the bridge carries ``10.231.X.1``, the address of the test process itself
(where the test's local exchange listens, so the test can read its true book).

A partition is :meth:`NetLab.partition`: the host end of a member's veth goes down, so
nothing passes either way and no reset reaches anyone (:meth:`NetLab.rx_packets` lets
a test check it). Names carry a tag unique to the run (interface names are at most
15 characters), and the subnet's third byte is one no interface of the machine uses, so
parallel runs do not collide. :func:`unavailable` says why a machine cannot do this
(not root, no ``ip``, namespaces refused), for ``pytest.skip``. :meth:`NetLab.close`
kills what was started in the namespaces and removes them and the bridge; it runs from
a fixture's finalizer, so also on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.flow import REPO

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET_PREFIX = "10.231"
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [IP, *args], capture_output=True, text=True, check=check, timeout=20
    )


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not shutil.which("ip") and not Path(IP).exists():
        return "no `ip` command (iproute2)"
    name = f"obprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _free_third_byte() -> int:
    used = _ip("-4", "-o", "addr").stdout
    for _ in range(200):
        third = secrets.randbelow(250) + 1
        if f"{SUBNET_PREFIX}.{third}." not in used:
            return third
    raise RuntimeError(f"no free {SUBNET_PREFIX}.X.0/24 subnet")


class NetLab:
    """A bridge with ``hosts`` namespaces on it; host ``i`` (0-based) is ``address(i)``.

    ``NetLab(3)`` makes three namespaces; :meth:`popen` runs a command in one. Use it
    as a context manager (or call :meth:`close`)."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"{os.getpid() % 100000:05d}{next(_counter) % 100:02d}"
        self.bridge = f"ob{self.tag}b"
        self.third = _free_third_byte()
        self.host_address = f"{SUBNET_PREFIX}.{self.third}.1"
        self.namespaces: list[str] = []
        self._veths: list[str] = []
        self._procs: list[subprocess.Popen] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(hosts):
                self._add_host(i)
        except BaseException:
            self.close()
            raise

    def _add_host(self, i: int) -> None:
        ns, outer, inner = f"ob{self.tag}n{i}", f"ob{self.tag}h{i}", f"ob{self.tag}i{i}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._veths.append(outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")

    def address(self, i: int) -> str:
        """Host ``i``'s address (``10.231.X.(i+2)``; ``.1`` is the test process)."""
        return f"{SUBNET_PREFIX}.{self.third}.{i + 2}"

    def inner(self, i: int) -> str:
        return f"ob{self.tag}i{i}"

    def popen(
        self, i: int, args: list[str], env: dict[str, str], **kw
    ) -> subprocess.Popen:
        """``python -m ARGS`` from the repository, in host ``i``'s namespace, in a
        process group of its own (killed whole by :meth:`close`)."""
        proc = subprocess.Popen(
            [IP, "netns", "exec", self.namespaces[i], sys.executable, "-m", *args],
            cwd=REPO,
            env=env,
            start_new_session=True,
            **kw,
        )
        self._procs.append(proc)
        return proc

    def partition(self, i: int) -> None:
        """Cut host ``i`` off: its link goes down, nothing passes, nobody is reset."""
        _ip("link", "set", self._veths[i], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self._veths[i], "up")

    def rx_packets(self, i: int) -> int:
        """Packets host ``i``'s interface has received (constant while partitioned)."""
        shown = _ip("-n", self.namespaces[i], "-j", "-s", "link", "show", self.inner(i))
        return int(json.loads(shown.stdout)[0]["stats64"]["rx"]["packets"])

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.namespaces:
            # anything still inside (a child that left the group) dies with the netns
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
        for veth in self._veths:
            _ip("link", "del", veth, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.namespaces, self._veths = [], []

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Member:
    """One member of a Bytewax cluster on a :class:`NetLab` host: ``python -m
    bytewax.run dataflow:flow -i I -a ADDRESSES`` in host ``i``'s namespace, its JSON
    lines in ``out``, its stderr in ``log`` (a file: a pipe nobody reads could fill)."""

    def __init__(
        self,
        lab: NetLab,
        i: int,
        addresses: str,
        env: dict[str, str],
        folder: Path,
        args: tuple[str, ...] = (),
    ) -> None:
        self.i = i
        self.out = folder / f"member{i}.jsonl"
        self.log = folder / f"member{i}.log"
        env = {**env, "ORDERBOOK_OUTPUT": f"jsonl:{self.out}"}
        with self.log.open("a") as log:
            self.proc = lab.popen(
                i,
                ["bytewax.run", "dataflow:flow", "-i", str(i), "-a", addresses, *args],
                env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the member's process group; after SIGKILL, wait for its end."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def said(self) -> list[str]:
        """The service's own lines (``orderbook: ...``) on stderr."""
        return [s for s in self.stderr.splitlines() if s.startswith("orderbook:")]


def start_cluster(
    lab: NetLab,
    env: dict[str, str],
    folder: Path,
    port: int = 2101,
    args: tuple[str, ...] = (),
    recovery: list[Path] | None = None,
) -> list[Member]:
    """Every host of ``lab`` runs one member; the address list names them in order.
    ``recovery``: one Bytewax recovery directory per member (``-r``), its own
    partitions (see ``tests.support.recovery.split_store``)."""
    folder.mkdir(parents=True, exist_ok=True)
    addresses = ";".join(f"{lab.address(i)}:{port}" for i in range(len(lab.namespaces)))
    return [
        Member(
            lab,
            i,
            addresses,
            env,
            folder,
            (*args, "-r", str(recovery[i])) if recovery else args,
        )
        for i in range(len(lab.namespaces))
    ]
