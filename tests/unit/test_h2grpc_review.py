"""Findings of the adversarial review of extauthz.h2grpc (notes s6/review): each test fails
without its fix.

* a synchronous method that raises ends its own stream with INTERNAL; the connection and the
  other calls on it go on (before: the exception escaped ``data_received`` and the transport
  aborted the whole connection, no grpc-status on any stream);
* a SETTINGS frame full of INITIAL_WINDOW_SIZE entries costs one pass over the streams, not one
  per entry (a 16 KiB frame carries 2730 entries: x streams was a CPU amplification);
* ``stop()`` ends connections whose client does not read (a ``close()`` waits for the transport
  buffer to drain: for ever; Python 3.12's ``Server.wait_closed`` then waits for them too).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hpack
import pytest
from hyperframe.frame import DataFrame, RstStreamFrame

from extauthz.h2grpc import frames as f
from extauthz.h2grpc.connection import H2Connection, Stream
from extauthz.h2grpc.headers import BlockDecoder, HeaderError
from extauthz.netlimits import GrpcLimits
from tests.support.h2raw import CHECK_HEADERS, PREFACE, RawH2
from tests.support.h2server import HOLD_PATH, InProcessServer, check_request

LIMITS = GrpcLimits(max_concurrent_streams=4, max_receive_message_bytes=256 * 1024,
                    max_metadata_bytes=8 * 1024)
CHECK = check_request().SerializeToString()
RAISE_PATH = "/test.Raise/Raise"


def _raise(call: Any) -> None:
    raise RuntimeError("a handler bug")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    running = InProcessServer(tmp_path_factory.mktemp("h2review"), LIMITS)
    running.call(lambda: running.server.methods.__setitem__(RAISE_PATH, _raise))
    yield running
    running.stop()


def _path(path: str) -> list[tuple[str, str]]:
    return [(k, path if k == ":path" else v) for k, v in CHECK_HEADERS]


def _wait(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_synchronous_method_that_raises_ends_its_stream_not_the_connection(
    server: InProcessServer,
) -> None:
    client = RawH2(server.port)
    try:
        client.server_settings()
        held = client.call(b"", _path(HOLD_PATH))  # another call in flight on the connection
        _wait(lambda: len(server.held) >= 1)
        failed = client.response(client.call(b"", _path(RAISE_PATH)))
        assert failed.grpc_status == 13 and not failed.messages()
        assert not client.closed
        server.release()
        assert client.response(held).grpc_status == 0
        assert client.response(client.call(CHECK)).grpc_status == 0
    finally:
        server.held.clear()
        client.close()


class _Counted(dict[int, Stream]):
    """A streams dict that counts the passes over its values."""

    passes = 0

    def values(self) -> Any:
        type(self).passes += 1
        return super().values()


class _Host:
    def __init__(self) -> None:
        self.limits = GrpcLimits()
        self.connections: set[Any] = set()


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def _bare_connection() -> H2Connection:
    conn = H2Connection(_Host())  # type: ignore[arg-type]
    conn.transport = _Transport()  # type: ignore[assignment]
    conn.settled = True
    return conn


def test_initial_window_entries_cost_one_pass_over_the_streams() -> None:
    conn = _bare_connection()
    streams = _Counted()
    for sid in range(1, 129, 2):
        streams[sid] = Stream(sid, [], conn.peer_window)
    conn.streams = streams
    entries = 16_384 // 6
    payload = b"".join(f.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + (1000 + i).to_bytes(4, "big")
                       for i in range(entries))
    _Counted.passes = 0
    conn._settings(0, 0, payload)
    assert _Counted.passes <= 2  # the window change, and the flush
    final = 1000 + entries - 1
    assert conn.peer_window == final
    assert all(s.send_window == final for s in streams.values())


def test_an_intermediate_initial_window_overflow_is_still_a_flow_control_error() -> None:
    # RFC 9113 6.9.2: any change that makes a stream window exceed 2^31-1 is an error, even one
    # a later entry of the same frame would undo
    from extauthz.h2grpc.connection import ConnectionError_

    conn = _bare_connection()
    stream = conn.streams[1] = Stream(1, [], conn.peer_window)
    stream.send_window += 100  # a WINDOW_UPDATE the client sent
    payload = b"".join(f.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + value.to_bytes(4, "big")
                       for value in (f.MAX_WINDOW, 1000))
    with pytest.raises(ConnectionError_) as raised:
        conn._settings(0, 0, payload)
    assert raised.value.code == f.FLOW_CONTROL_ERROR


def test_stop_ends_a_connection_whose_client_does_not_read(tmp_path: Path) -> None:
    running = InProcessServer(tmp_path, LIMITS)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.port))
        block = hpack.Encoder().encode(_path(HOLD_PATH))
        # a call left open (pings are answered while one is), then pings, never reading, until
        # the server's transport buffer is over its high-water mark
        sock.sendall(PREFACE + f.settings({}) + f.frame(f.HEADERS, f.END_HEADERS, 1, block))
        pings = f.frame(f.PING, 0, 0, b"12345678") * 512
        sock.setblocking(False)
        deadline = time.monotonic() + 10
        while not running.call(lambda: any(c.write_paused for c in running.server.connections)):
            assert time.monotonic() < deadline, "the server never stopped writing"
            try:
                sock.send(pings)
            except BlockingIOError:
                time.sleep(0.01)
        started = time.monotonic()
        running.stop(grace=0.1)
        assert time.monotonic() - started < 5
        assert not running.server.connections
    finally:
        sock.close()


WATCH_PATH = "/grpc.health.v1.Health/Watch"


@pytest.mark.parametrize("violation", ["window_update_0", "data_after_end"])
def test_a_watch_reset_by_a_stream_error_is_cancelled_and_frees_its_slot(
    server: InProcessServer, violation: str,
) -> None:
    client = RawH2(server.port)
    try:
        client.server_settings()
        stream = client.call(b"", _path(WATCH_PATH))
        first = client.wait_for(DataFrame, stream_id=stream)
        assert first is not None  # the Watch is running: its first status was sent
        assert server.streams() == 1
        if violation == "window_update_0":  # a stream error (RFC 9113 6.9)
            client.send(f.window_update(stream, 0))
        else:  # DATA after the client's END_STREAM: STREAM_CLOSED (section 5.1)
            client.send(client.data(stream, b"late"))
        reset = client.wait_for(RstStreamFrame, stream_id=stream)
        assert reset is not None
        _wait(lambda: server.streams() == 0, timeout=2)
    finally:
        client.close()


def test_a_connection_left_unread_is_aborted_by_its_age_at_the_latest() -> None:
    # a client that reads a little now and then pauses the connection again and again: each
    # pause restarts the idle clock, so only the age bounds it
    conn = _bare_connection()
    limits = conn.limits
    now = time.monotonic()
    conn.opened = now - limits.max_connection_age - limits.connection_age_grace - 1
    conn.write_paused, conn.paused_at = True, now  # paused again just now
    assert conn.deadline < now
    aborted: list[bool] = []
    conn.transport.abort = lambda: aborted.append(True)  # type: ignore[union-attr]
    assert conn.expire(now) == "unread" and aborted


def _size_update(size: int) -> bytes:
    out = bytearray((0x20 | min(size, 31),))
    if size >= 31:
        size -= 31
        while size >= 128:
            out.append((size & 0x7F) | 0x80)
            size >>= 7
        out.append(size)
    return bytes(out)


def _insert(name: bytes, value: bytes) -> bytes:
    """A literal with incremental indexing and a literal name (RFC 7541 6.2.1)."""
    return b"\x40" + bytes((len(name),)) + name + bytes((len(value),)) + value


def test_the_memo_follows_evictions_that_leave_the_newest_entry_in_place() -> None:
    # blocks a real encoder does not send: a size update that evicts the oldest entries and one
    # that restores the size in the same block (the newest entry and the size limit unchanged),
    # an entry larger than the table (which empties it), references then an insertion
    oldest, newest = b"\xc0", b"\xbe"  # indexes 64 and 62 once three entries are in the table
    sequence = [
        _insert(b"x-a", b"1") + _insert(b"x-b", b"2") + _insert(b"x-c", b"3"),
        oldest, oldest, newest,
        _size_update(40) + _size_update(4096),  # keeps x-c only: 64 is gone
        oldest, newest, newest,
        newest + _insert(b"x-d", b"4"), newest, newest,
        _size_update(100) + _insert(b"x-big", b"v" * 120), newest,  # emptied, nothing added
        _size_update(4096) + _insert(b"x-e", b"5"), newest, newest,
        _size_update(0) + _size_update(4096), newest,
        # a full table of three 36-byte entries: one more evicts one, the size stays the same
        _size_update(108) + _insert(b"x-a", b"1") + _insert(b"x-b", b"2")
        + _insert(b"x-c", b"3"), newest, newest,
        _insert(b"x-d", b"4"), newest, newest,
        # a block that restores the size limit, remembered, then a smaller limit that evicts
        # nothing: the remembered block must be decoded again (its size update counts)
        _size_update(4096), _size_update(4096) + newest, _size_update(2048),
        _size_update(4096) + newest,
        b"".join(_insert(b"x-%02d" % i, b"v") for i in range(60)), b"\xf9",  # 121: the oldest
    ]
    memo = BlockDecoder(1 << 20)
    plain = hpack.Decoder(max_header_list_size=1 << 20)
    for block in sequence:
        try:
            expected: Any = [(str(n), str(v)) for n, v in plain.decode(block, raw=False)]
        except Exception as exc:  # the same block must fail with the memo too
            expected = type(exc)
        try:
            got: Any = memo.decode(block)
        except HeaderError:
            got = expected if isinstance(expected, type) else "failed"
        assert got == expected, block
