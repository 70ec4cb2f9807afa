"""Cluster start-up: a process waits for the lower processes on its host to listen.

Real sockets on 127.0.0.1 (no mocks): a listening one is seen at once, a bound one that
never listens is waited for until the deadline. The end-to-end test runs
``python -m bytewax.testing dataflow:flow -p 2`` and counts Timely's connect retries.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import cluster
from tests.support.flow import (
    REPO,
    FlowProcess,
    flow_env,
    free_port,
    read_jsonl,
    wait_until,
)

SAMPLE = REPO / "samples" / "sample.jsonl.gz"
HAS_PROC_NET = Path("/proc/net/tcp").exists()
needs_proc_net = pytest.mark.skipif(not HAS_PROC_NET, reason="no /proc/net/tcp")


@pytest.fixture
def bound() -> Iterator[socket.socket]:
    """A socket bound to a loopback port but not listening: nobody can connect there,
    and no other test can take the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def _port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


# --- arguments, read as bytewax.run reads them -------------------------------------


def test_place_from_argv():
    addresses = "localhost:2101;localhost:2102"
    argv = ["dataflow:flow", "-i", "1", "-a", addresses, "-w", "2"]
    assert cluster.cluster_place(argv, {}) == (1, addresses.split(";"))
    argv = ["dataflow:flow", "--process-id=2", "--addresses", "a:1;b:2;c:3"]
    assert cluster.cluster_place(argv, {}) == (2, ["a:1", "b:2", "c:3"])


def test_place_from_env_and_argv_wins():
    env = {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": "h:1;h:2"}
    assert cluster.cluster_place(["dataflow:flow"], env) == (1, ["h:1", "h:2"])
    assert cluster.cluster_place(["-i", "0"], env) == (0, ["h:1", "h:2"])


@pytest.mark.parametrize(
    "argv",
    [
        ["dataflow:flow"],  # neither
        ["dataflow:flow", "-w", "2"],
        ["dataflow:flow", "-i", "1"],  # no addresses
        ["dataflow:flow", "-a", "h:1;h:2"],  # no process id
        ["dataflow:flow", "-i", "one", "-a", "h:1;h:2"],  # unparsable
        ["dataflow:flow", "-a", "h:1;h:2", "-i"],  # flag without its value
    ],
)
def test_place_missing_or_unparsable_is_none(argv):
    assert cluster.cluster_place(argv, {}) is None


def test_only_lower_loopback_ports():
    addresses = ["localhost:2101", "127.0.0.1:2102", "[::1]:2103", "localhost:2104"]
    assert cluster.local_lower_ports(0, addresses) == []
    assert cluster.local_lower_ports(1, addresses) == [2101]
    assert cluster.local_lower_ports(3, addresses) == [2101, 2102, 2103]
    # another host (TEST-NET-1, no DNS needed) is a real cluster: not waited for
    assert cluster.local_lower_ports(2, ["192.0.2.1:2101", "192.0.2.2:2102"]) == []
    assert cluster.local_lower_ports(2, ["192.0.2.1:2101", "localhost:2102"]) == [2102]


def test_listening_ports_reads_proc_format(tmp_path):
    header = "  sl  local_address rem_address   st tx_queue rx_queue ...\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 0100007F:0835 00000000:0000 0A 00000000:00000000 00:00000000\n"
        + "   1: 0100007F:0836 0100007F:9C40 01 00000000:00000000 00:00000000\n"
    )
    (tmp_path / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000001000000:0837 "
        + "00000000000000000000000000000000:0000 0A 00000000:00000000\n"
    )
    # 0x835 = 2101 listens on IPv4, 0x836 is an established connection, 0x837 on IPv6
    assert cluster.listening_ports(tmp_path) == {2101, 2103}
    assert cluster.wait_until_listening([2101, 2103], timeout=0, proc_net=tmp_path)
    assert not cluster.wait_until_listening([2102], timeout=0, proc_net=tmp_path)


def test_nothing_to_check_without_proc_net(tmp_path):
    started = time.monotonic()
    assert cluster.listening_ports(tmp_path) is None
    assert cluster.wait_until_listening([2101], timeout=5, proc_net=tmp_path)
    assert time.monotonic() - started < 1


# --- waiting on real sockets ------------------------------------------------------


@pytest.mark.slow
@needs_proc_net
def test_returns_promptly_when_the_port_listens():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        assert cluster.wait_until_listening([_port(server)], timeout=5)
        assert time.monotonic() - started < 1


@pytest.mark.slow
@needs_proc_net
def test_waits_until_the_port_starts_listening(bound):
    listen_later = threading.Timer(0.3, bound.listen)
    started = time.monotonic()
    listen_later.start()
    try:
        assert cluster.wait_until_listening([_port(bound)], timeout=5)
    finally:
        listen_later.cancel()
    assert 0.25 <= time.monotonic() - started < 2


@pytest.mark.slow
@needs_proc_net
def test_gives_up_after_the_deadline(bound):
    started = time.monotonic()
    assert not cluster.wait_until_listening([_port(bound)], timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2


@pytest.mark.slow
@needs_proc_net
def test_process_waits_for_its_lower_peer(bound, caplog):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        addresses = f"127.0.0.1:{_port(server)};127.0.0.1:{_port(bound)}"
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="service.cluster"):
            assert cluster.await_lower_processes(["-i", "1", "-a", addresses], {})
        assert time.monotonic() - started < 1
        assert "waited" in caplog.text

    # the peer never listens: one warning after the deadline, no exception
    caplog.clear()
    addresses = f"127.0.0.1:{_port(bound)};127.0.0.1:1"
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="service.cluster"):
        env = {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": addresses}
        assert not cluster.await_lower_processes([], env, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert [r.levelname for r in caplog.records] == ["WARNING"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["-i", "0", "-a", "{a};{b}"],  # process 0 waits for nobody
        ["-i", "1"],  # no address list
        ["-i", "1", "-a", "192.0.2.1:{port};{b}"],  # the lower process is elsewhere
        ["dataflow:flow"],  # a plain single-process run
    ],
)
def test_nothing_to_wait_for_returns_at_once(bound, argv):
    port = _port(bound)  # nobody listens here: waiting would last the whole 5 s
    a, b = f"127.0.0.1:{port}", "127.0.0.1:1"
    argv = [arg.format(a=a, b=b, port=port) for arg in argv]
    started = time.monotonic()
    assert cluster.await_lower_processes(argv, {}, timeout=5)
    assert time.monotonic() - started < 0.5


# --- end to end: no connect retry ---------------------------------------------------


@pytest.mark.slow
def test_two_processes_connect_without_retry(tmp_path):
    """Without the wait, process 1 often connected before process 0 listened: Timely
    printed "error connecting to worker 0" and slept 1 s (5 runs of 10). The line
    goes to stderr here, since the flow moves fd 1 there (records keep stdout), so
    both streams are checked."""
    for run in range(3):
        out = tmp_path / f"run{run}.jsonl"
        env = flow_env(
            ORDERBOOK_REPLAY=str(SAMPLE),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        args = ["bytewax.testing", "dataflow:flow", "-p", "2", "-w", "1"]
        flow = FlowProcess(args, env)  # own process group, killed whole by finish()
        assert flow.finish(timeout=60) == 0, flow.stderr[-3000:]
        assert "error connecting to worker" not in flow.stdout
        assert "error connecting to worker" not in flow.stderr, flow.stderr[-3000:]
        assert read_jsonl(out)


# --- a lost peer is named -----------------------------------------------------------


def test_proc_net_addresses_are_read_in_host_order(tmp_path):
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm retrnsmt uid to inode\n"
    (tmp_path / "tcp").write_text(
        header
        # 10.231.7.2:2101 <- 10.231.7.3:40000 established (inode 111); one listening
        + "   0: 0207E70A:0835 0307E70A:9C40 01 00000000:00000000 00:0 0 0 0 111\n"
        + "   1: 0207E70A:0835 00000000:0000 0A 00000000:00000000 00:0 0 0 0 112\n"
    )
    (tmp_path / "tcp6").write_text(
        header
        # ::ffff:127.0.0.1:2102 -> ::ffff:127.0.0.1:2101 (an IPv4-mapped address)
        + "   0: 0000000000000000FFFF00000100007F:0836 "
        + "0000000000000000FFFF00000100007F:0835 01 00000000:00000000 00:0 0 0 0 113\n"
    )
    assert cluster.established(tmp_path) == [
        (("10.231.7.2", 2101), ("10.231.7.3", 40000), 111),
        (("127.0.0.1", 2102), ("127.0.0.1", 2101), 113),
    ]


def test_peer_connections_are_matched_to_process_ids():
    addresses = ["10.231.7.2:2101", "10.231.7.3:2101", "10.231.7.4:2101"]
    connections = [
        (("10.231.7.3", 45000), ("10.231.7.2", 2101), 1),  # 1 -> 0: connected
        (("10.231.7.3", 2101), ("10.231.7.4", 51000), 2),  # 2 -> 1: accepted
        (("10.231.7.3", 47000), ("10.231.7.1", 8765), 3),  # the exchange: not a peer
    ]
    assert cluster.peer_connections(1, cluster.resolved(addresses), connections) == {
        1: {0},
        2: {2},
    }
    # several higher processes on one host: each accepted connection may be any of them
    local = ["127.0.0.1:2101", "127.0.0.1:2102", "127.0.0.1:2103"]
    accepted = [(("127.0.0.1", 2101), ("127.0.0.1", p), p) for p in (50001, 50002)]
    assert cluster.peer_connections(0, cluster.resolved(local), accepted) == {
        50001: {1, 2},
        50002: {1, 2},
    }


def test_the_lost_line_names_the_peer_or_says_what_is_known():
    watch = cluster.PeerWatch(0, ["h0:2101", "h1:2101", "h2:2101"])
    panic = RuntimeError("Send thread panic: Any { .. }")
    assert cluster.PeerWatch(0, ["h0:1"]).lost == []
    assert watch.lost_line(panic).startswith(
        "the cluster's dataflow failed (Bytewax: Send thread panic: Any { .. }); "
        "this member stops too (status 1);"
    )
    assert "\n" not in watch.lost_line(RuntimeError("two\nlines"))
    watch.lost = [2]
    assert watch.lost_line(panic).startswith(
        "lost cluster peer process 2 (h2:2101): its connection closed;"
    )
    watch.lost = [1, 2]
    assert "process 1 (h1:2101) or process 2 (h2:2101)" in watch.lost_line(panic)


@pytest.mark.parametrize(
    "argv", [["dataflow:flow"], ["-i", "0", "-a", "h:1"], ["-i", "2", "-a", "h:1;h:2"]]
)
def test_no_watch_outside_a_cluster(argv):
    before = sys.excepthook
    assert cluster.watch_peers(lambda line: None, argv, {}) is None
    assert sys.excepthook is before


@pytest.mark.slow
def test_a_killed_peer_on_this_host_is_named_in_one_line(tmp_path):
    """Two members on 127.0.0.1, each with its own sim exchange: ``kill -9`` of
    process 1 ends process 0 with one line naming it, status 1, no panic traceback
    (before: ``pyo3_runtime.PanicException: Send thread panic: Any { .. }``)."""
    ports = [free_port(), free_port()]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    members = []
    for i in range(2):
        out = tmp_path / f"member{i}.jsonl"
        env = flow_env(
            ORDERBOOK_FEED="sim",
            ORDERBOOK_SIM_DEPTH="50",
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        args = ["bytewax.run", "dataflow:flow", "-i", str(i), "-a", addresses]
        members.append((FlowProcess(args, env), out))
    try:
        for flow, out in members:
            flow.wait_for(lambda out=out: read_jsonl(out), 60, "a summary per member")
        members[1][0].stop(signal.SIGKILL)
        survivor = members[0][0]
        assert survivor.finish(timeout=20) == 1
    finally:
        for flow, _ in members:
            if flow.proc.poll() is None:  # finish() twice would read stderr twice
                flow.stop(signal.SIGKILL)
    said = [s for s in survivor.stderr.splitlines() if s.startswith("orderbook:")]
    assert said == [
        f"orderbook: lost cluster peer process 1 (127.0.0.1:{ports[1]}): its connection "
        "closed; this member stops too (status 1); restart the whole cluster "
        "(Bytewax clusters fail and recover as a whole)"
    ], survivor.stderr[-3000:]
    assert "Traceback" not in survivor.stderr
    assert f"peers 1=127.0.0.1:{ports[1]}" in survivor.stderr


def test_timeouts_are_counted_from_proc_net_netstat(tmp_path):
    (tmp_path / "netstat").write_text(
        "TcpExt: SyncookiesSent TCPAbortOnData TCPAbortOnTimeout\n"
        "TcpExt: 0 12 3\n"
        "IpExt: InNoRoutes\nIpExt: 0\n"
    )
    assert cluster.aborts_on_timeout(tmp_path) == 3
    assert cluster.aborts_on_timeout(tmp_path / "missing") == 0


def test_a_timed_out_peer_is_said_to_be_unreachable():
    watch = cluster.PeerWatch(1, ["h0:2101", "h1:2101"], timeout=5)
    watch.lost, watch.timed_out = [0], True
    assert watch.lost_line(RuntimeError("Send thread panic")).startswith(
        "lost cluster peer process 0 (h0:2101): no answer for 5 s (unreachable); "
    )


def test_of_connections_ended_together_the_first_is_named():
    ms = 1_000_000
    assert cluster.first_ended({7: 1000 * ms, 8: 1030 * ms}) == [7]
    assert cluster.first_ended({7: 1030 * ms, 8: 1004 * ms}) == [8]
    # within 5 ms they are not told apart
    assert cluster.first_ended({7: 1000 * ms, 8: 1004 * ms}) == [7, 8]
    assert cluster.first_ended({}) == []


def _tcp_pair(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    member = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    return member, peer


@pytest.mark.slow  # a process
def test_connection_ends_are_timed_as_they_come_not_when_the_member_looks():
    """The member reads the ends late (its watcher thread waits for the interpreter
    lock); the timing process noted each as it came, so the first is still told."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        pairs = [_tcp_pair(server), _tcp_pair(server)]
    fds = [member.fileno() for member, _ in pairs]
    child = cluster.time_ends(fds)
    try:
        out = child.stdout.fileno()
        pairs[1][1].close()  # peer 1 goes first
        wait_until(lambda: select.select([out], [], [], 0)[0], 10, "the first end")
        time.sleep(0.02)  # the gap to tell: a survivor ends 14-30 ms after the lost
        pairs[0][1].close()
        # this member reads only now, after both ended, as a starved watcher does
        # (and until the timing process, done, ends its output)
        ends = cluster.first_ends(out, 10.0)
        assert cluster.first_ended(ends) == [fds[1]]
        assert ends[fds[0]] - ends[fds[1]] >= 20_000_000
        # it let go of its duplicates as they ended, and ends once done
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
        for member, peer in pairs:
            member.close()
            peer.close()


@pytest.mark.parametrize("timeout", [1, 2, 3, 5, 30, 3600])
def test_a_live_idle_peer_is_never_taken_for_a_quiet_one(timeout):
    """Keepalive probes a silent connection after keepalive_idle s and a live peer
    answers at once: quiet_after stays above that, and below the timeout itself from
    3 s on (below it an unreachable peer is named by the kernel's count instead)."""
    assert cluster.quiet_after(timeout) >= cluster.keepalive_idle(timeout) + 1
    if timeout >= 3:
        assert cluster.quiet_after(timeout) <= timeout * 0.7


@pytest.mark.parametrize("members,workers", [(3, 1), (2, 2), (3, 2)])
def test_each_member_shows_the_products_it_holds_and_they_cover_all(members, workers):
    """A cluster member's views list the products whose partitions Bytewax gives its
    workers, not the other members' ones (which would read "awaiting snapshot" for
    ever): the members' lists are disjoint, cover every product, and agree with
    service.placement's rule for Bytewax's partition placement."""
    from service.placement import source_worker_for_product

    products = ["BTC-USD", "ETH-USD", "SOL-USD", "BTC-EUR", "ETH-EUR", "LTC-USD", "X-Y"]
    addresses = ";".join(f"10.0.0.{i}:2101" for i in range(members))
    shown = [
        cluster.own_products(
            products, ["-i", str(p), "-a", addresses, "-w", str(workers)], {}
        )
        for p in range(members)
    ]
    assert sorted(sum(shown, [])) == sorted(products)
    for p, mine in enumerate(shown):
        assert mine  # 7 products over at most 6 workers: everyone holds some
        for product in mine:
            worker = source_worker_for_product(products, product, members * workers)
            assert worker // workers == p
    # outside a cluster, and with the worker count from the environment
    assert cluster.own_products(products, ["dataflow:flow"], {}) == products
    env = {"BYTEWAX_WORKERS_PER_PROCESS": str(workers)}
    assert cluster.own_products(products, ["-i", "0", "-a", addresses], env) == shown[0]
