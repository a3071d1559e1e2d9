"""Issue 13.1 and 13.3: abusive clients of the HTTP ext_authz transport, a real ``extauthz serve``
process, and a normal client measuring itself meanwhile (gRPC Check on a channel, an HTTP
transport check on a keep-alive connection, ``/healthz`` on a new connection every time).

Every test states its bound: the normal client's p99 during the attack stays under
:data:`P99_BOUND` (generous: 2 shared cores; the measured figures are printed), none of its
requests fails, and memory stays within the bound the README's resource model documents.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import grpc
import pytest

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from extauthz.demo.procs import LOOPBACK
from tests.support.abuse import (
    API_KEY,
    NormalClient,
    Samples,
    Server,
    check_request,
    http_check_bytes,
    p99,
    rss_mib,
    start_server,
)
from tests.support.load import metric

#: the normal client's p99 while an attack runs (a healthy idle server answers in ~1-3 ms)
P99_BOUND = 0.5


@pytest.fixture
def server_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Server] = []

    def start(*flags: str, nofile: int | None = None) -> Server:
        server = start_server(tmp_path / f"s{len(started)}", flags, nofile=nofile)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def assert_normal_client_unharmed(samples: Samples, *, http_transport: bool = True,
                                  healthz: bool = True, bound: float = P99_BOUND) -> None:
    kinds = ["grpc"] + (["healthz"] if healthz else []) + (["http_authz"] if http_transport
                                                           else [])
    print("\nnormal client during the attack:", samples.summary())
    assert not samples.failures, samples.summary()
    for kind in kinds:
        values = samples.latencies.get(kind, [])
        assert len(values) >= 10, samples.summary()
        assert p99(values) < bound, samples.summary()


def http_metric(server: Server, name: str, **labels: str) -> float:
    return metric(server.metrics(), name, {"port": "http_authz", **labels})


def read_status(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n", 1)[0]


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server closed (EOF or RST) this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.setblocking(True)


# -- 13.1: many tiny chunks ----------------------------------------------------------------------


def chunked_request(chunks: int) -> bytes:
    head = (f"POST /check/api/x HTTP/1.1\r\nhost: api.example.com\r\nx-api-key: {API_KEY}\r\n"
            "transfer-encoding: chunked\r\n\r\n").encode()
    return head + b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"


def test_forty_thousand_one_byte_chunks_cost_linear_time_and_stall_no_one(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory()
    payload = chunked_request(40_000)  # 240 KB; took 17.6 s of CPU with the per-chunk re-sum
    timings = []
    with NormalClient(server) as normal:
        time.sleep(0.5)
        with socket.create_connection((LOOPBACK, server.authz_port)) as sock:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline or len(timings) < 3:  # keep attacking ~3 s
                started = time.perf_counter()
                sock.sendall(payload)
                assert read_status(sock) == b"HTTP/1.1 200 OK"
                timings.append(time.perf_counter() - started)
                assert len(timings) < 5000
        time.sleep(0.3)
    print(f"\n40 000 one-byte chunks: {len(timings)} requests, max {max(timings) * 1000:.0f} ms, "
          f"median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms")
    assert max(timings) < 2.0, timings  # linear: ~0.1 s here (was 17.6 s)
    assert_normal_client_unharmed(normal.samples)


# -- 13.3: idle connections, slow heads, pipelining without reading ------------------------------


def test_idle_connection_flood_under_nofile_1024_leaves_grpc_and_healthz_working(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    idle = 3.0
    server = server_factory("--http-authz-idle-timeout", str(idle), nofile=1024)
    flood: list[socket.socket] = []
    with NormalClient(server) as normal:
        time.sleep(0.5)  # its HTTP-transport connection is open before the flood
        try:
            for _ in range(1124):  # what stopped gRPC and /healthz under nofile=1024
                # (refused beyond the cap so fast that connect() may see the reset)
                with contextlib.suppress(ConnectionResetError):
                    flood.append(socket.create_connection((LOOPBACK, server.authz_port), 5))
            opened = time.monotonic()
            while True:  # until the server has accepted (held or refused) every attempt
                text = server.metrics()
                held = metric(text, "extauthz_connections", {"port": "http_authz"})
                refused = metric(text, "extauthz_connections_refused_total",
                                 {"port": "http_authz"})
                if held + refused >= 1124 + 1 or time.monotonic() - opened > 5:
                    break
                time.sleep(0.1)
            # a brand-new gRPC channel still connects and checks (descriptors left for it)
            with grpc.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                assert stub.Check(check_request(), timeout=5).status.code == 0
            # the idle ones are closed after the idle timeout (plus one sweep tick)
            while time.monotonic() - opened < idle + 3:
                if sum(closed_by_peer(s) for s in flood) == len(flood):
                    break
                time.sleep(0.25)
            closed_after = time.monotonic() - opened
            all_closed = sum(closed_by_peer(s) for s in flood)
        finally:
            for sock in flood:
                sock.close()
        # a new HTTP-transport connection is served again
        with socket.create_connection((LOOPBACK, server.authz_port), 5) as sock:
            sock.sendall(http_check_bytes())
            assert read_status(sock) == b"HTTP/1.1 200 OK"
    print(f"\n1124 idle connections: held {held:.0f} (cap 256), refused {refused:.0f}, all closed "
          f"after {closed_after:.1f} s (idle timeout {idle} s)")
    assert held == 256  # the cap (the normal client's connection is one of them)
    assert refused >= 1124 - 256
    assert all_closed == len(flood)
    assert closed_after < idle + 3
    assert http_metric(server, "extauthz_connections_closed_total", reason="idle_timeout") >= 250
    assert_normal_client_unharmed(normal.samples)


def test_slow_request_heads_are_closed_at_the_head_timeout(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    head_timeout = 2.0
    server = server_factory("--http-authz-head-timeout", str(head_timeout))
    slow: list[socket.socket] = []
    with NormalClient(server) as normal:
        time.sleep(0.5)
        try:
            for _ in range(200):
                sock = socket.create_connection((LOOPBACK, server.authz_port), 5)
                sock.sendall(b"GET /check/api/x HTTP/1.1\r\nhost: a\r\n")
                slow.append(sock)
            started = time.monotonic()
            closed_at: dict[int, float] = {}
            while len(closed_at) < len(slow) and time.monotonic() - started < head_timeout + 5:
                for index, sock in enumerate(slow):
                    if index in closed_at:
                        continue
                    try:  # one more header byte every ~0.25 s: never a complete head
                        sock.send(b"x")
                    except OSError:
                        closed_at[index] = time.monotonic() - started
                        continue
                    if closed_by_peer(sock):
                        closed_at[index] = time.monotonic() - started
                time.sleep(0.25)
        finally:
            for sock in slow:
                sock.close()
    slowest = max(closed_at.values()) if closed_at else float("inf")
    print(f"\n200 slow heads: {len(closed_at)} closed, the last after {slowest:.1f} s "
          f"(head timeout {head_timeout} s)")
    assert len(closed_at) == len(slow)
    assert slowest < head_timeout + 2.5
    assert http_metric(server, "extauthz_connections_closed_total", reason="head_timeout") >= 200
    assert_normal_client_unharmed(normal.samples)


def test_pipelining_client_that_never_reads_is_no_longer_read_and_memory_is_bounded(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    idle = 4.0
    server = server_factory("--http-authz-idle-timeout", str(idle))
    request = http_check_bytes()
    total = 150_000
    payload = request * total  # ~14 MB of pipelined requests
    before = rss_mib(server)
    peak = before
    with NormalClient(server) as normal:
        time.sleep(0.5)
        sock = socket.create_connection((LOOPBACK, server.authz_port), 5)
        # never read (a tiny SO_RCVBUF here would make loopback TCP back off for seconds)
        sock.setblocking(False)
        sent = 0
        stalled_since = time.monotonic()
        try:
            while sent < len(payload) and time.monotonic() - stalled_since < 2.0:
                try:
                    n = sock.send(payload[sent:sent + 65536])
                except BlockingIOError:
                    time.sleep(0.02)
                    peak = max(peak, rss_mib(server))
                    continue
                except OSError:
                    break
                sent += n
                stalled_since = time.monotonic()
            peak = max(peak, rss_mib(server))
            paused = http_metric(server, "extauthz_reading_paused_total")
            # the unread answers are held idle_timeout at most, then the connection is aborted
            # (watched on the server: reading our socket here would un-stall it)
            waited = time.monotonic()
            while (http_metric(server, "extauthz_connections_closed_total",
                               reason="unread_output") < 1
                   and time.monotonic() - waited < idle + 6):
                time.sleep(0.25)
            aborted_after = time.monotonic() - waited
        finally:
            sock.close()
        time.sleep(1.0)
    after = rss_mib(server)
    accepted = sent // len(request)
    print(f"\npipelining without reading: {accepted} of {total} requests accepted by the kernel "
          f"before the server stopped reading; RSS {before:.1f} -> peak {peak:.1f} -> "
          f"{after:.1f} MiB; aborted {aborted_after:.1f} s after the client stalled")
    assert sent < len(payload)  # the server stopped reading: TCP pushed back
    assert paused >= 1
    assert peak - before < 16, (before, peak)
    assert aborted_after < idle + 6
    assert http_metric(server, "extauthz_connections_closed_total",
                       reason="unread_output") == 1
    assert http_metric(server, "extauthz_connections") == 0  # none left (normal client gone)
    assert after - before < 16
    assert_normal_client_unharmed(normal.samples)


# -- admin listener ---------------------------------------------------------------------------


def test_admin_connection_flood_is_capped_and_cut_at_the_connection_lifetime(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    lifetime = 2.0
    server = server_factory("--admin-max-connections", "20",
                            "--admin-max-connection-age", str(lifetime))
    flood: list[socket.socket] = []
    with NormalClient(server, healthz=False) as normal:  # the checks, on the other ports
        time.sleep(0.5)
        try:
            for _ in range(100):
                with contextlib.suppress(ConnectionResetError):
                    flood.append(socket.create_connection((LOOPBACK, server.http_port), 5))
            opened = time.monotonic()
            while sum(closed_by_peer(s) for s in flood) < len(flood):
                assert time.monotonic() - opened < lifetime + 3, "admin connections not cut"
                time.sleep(0.2)
            cut_after = time.monotonic() - opened
        finally:
            for sock in flood:
                sock.close()
    text = server.metrics()  # and /metrics answers again
    refused = metric(text, "extauthz_connections_refused_total", {"port": "admin"})
    cut = metric(text, "extauthz_connections_closed_total", {"port": "admin", "reason": "lifetime"})
    print(f"\n100 idle admin connections: {refused:.0f} refused (cap 20), {cut:.0f} cut after "
          f"{cut_after:.1f} s (lifetime {lifetime} s)")
    assert refused >= 80
    assert cut >= 19
    assert_normal_client_unharmed(normal.samples, healthz=False)


def test_oversized_heads_bodies_and_the_server_budget_refuse_and_close(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    budget = 1_000_000
    server = server_factory("--http-authz-max-buffered-bytes", str(budget),
                            "--http-authz-max-body-bytes", "200000")
    statuses: dict[bytes, int] = {}
    held: list[socket.socket] = []
    with NormalClient(server) as normal:
        time.sleep(0.5)
        try:
            for _ in range(30):  # request heads over 96 KiB: 431 and closed
                with socket.create_connection((LOOPBACK, server.authz_port), 5) as sock:
                    sock.sendall(b"GET /check/api/x HTTP/1.1\r\nx-big: " + b"a" * 100_000
                                 + b"\r\n\r\n")
                    status = read_status(sock)
                    statuses[status] = statuses.get(status, 0) + 1
            for _ in range(30):  # bodies over 200 000 bytes: 413 and closed
                with socket.create_connection((LOOPBACK, server.authz_port), 5) as sock:
                    sock.sendall(b"POST /check/api/x HTTP/1.1\r\ncontent-length: 300000\r\n\r\n"
                                 + b"b" * 250_000)
                    status = read_status(sock)
                    statuses[status] = statuses.get(status, 0) + 1
            for _ in range(12):  # 12 x 150 KB held and never finished: 1 MB budget crossed
                sock = socket.create_connection((LOOPBACK, server.authz_port), 5)
                sock.sendall(b"POST /check/api/x HTTP/1.1\r\ncontent-length: 190000\r\n\r\n"
                             + b"c" * 150_000)
                held.append(sock)
            time.sleep(0.5)
            refused = [status for status in map(_answer_if_any, held) if status]
        finally:
            for sock in held:
                sock.close()
    print(f"\noversized: {statuses}; budget: {len(refused)} of 12 held requests refused "
          f"({refused[:1]})")
    assert statuses == {b"HTTP/1.1 431 Request Header Fields Too Large": 30,
                        b"HTTP/1.1 413 Content Too Large": 30}
    assert len(refused) >= 5  # 1 MB / 150 KB: at most 6 fit
    assert set(refused) == {b"HTTP/1.1 503 Service Unavailable"}
    assert http_metric(server, "extauthz_connections_closed_total", reason="too_large") == 60
    assert http_metric(server, "extauthz_connections_closed_total",
                       reason="buffer_budget") == len(refused)
    assert_normal_client_unharmed(normal.samples)


def _answer_if_any(sock: socket.socket) -> bytes:
    """The status line the server sent on a connection we have not finished ("" if none)."""
    try:
        return read_status(sock, timeout=0.3)
    except TimeoutError:
        return b""
