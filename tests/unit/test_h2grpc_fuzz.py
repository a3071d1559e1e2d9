"""Random frame sequences and random bytes into one connection of the built-in gRPC server
(extauthz.h2grpc.connection.H2Connection), in process with a transport that records what is
written: no exception escapes ``data_received``, nothing hangs, every byte the server writes is
a well-formed frame, and once the connection is gone nothing is left held (streams, budget,
tasks, the connection slot). A normal call is served after each batch of examples.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame
from hypothesis import given
from hypothesis import strategies as st

from extauthz.h2grpc import NativeGrpcServer
from extauthz.h2grpc import frames as f
from extauthz.h2grpc.connection import H2Connection
from extauthz.health import HealthService
from extauthz.netlimits import GrpcLimits
from tests.support.configs import started_engine
from tests.support.h2raw import CHECK_HEADERS, PREFACE, grpc_message, raw_frame
from tests.support.h2server import CONFIG, ECHO_PATH, HOLD_PATH, check_request
from tests.support.hypo import budget

LIMITS = GrpcLimits(max_concurrent_streams=3, max_receive_message_bytes=4096,
                    max_metadata_bytes=2048)
CHECK = check_request().SerializeToString()


class Recorder(asyncio.Transport):
    """A transport that keeps what is written; closing it ends the connection (soon, as a
    socket transport does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.out = bytearray()
        self.writes = 0  # calls of write (docs/grpc-native.md: one per read)
        self.closed = False
        self.protocol: H2Connection | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed or self.protocol is None or self.protocol.transport is not None
        if not self.closed:
            self.out += data
            self.writes += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Harness:
    """A NativeGrpcServer (not listening) whose connections are fed by hand."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        engine = self.loop.run_until_complete(
            self.stack.enter_async_context(started_engine(directory, CONFIG)))
        self.server = NativeGrpcServer(engine, None, health=HealthService(), limits=LIMITS)
        self.server.loop = self.loop
        self.server.methods[ECHO_PATH] = lambda call: call.finish(0, call.message)
        self.server.methods[HOLD_PATH] = self._hold
        self.server.complete_on_reset.add(HOLD_PATH)

    @staticmethod
    async def _hold(call: Any) -> None:
        await asyncio.sleep(3600)

    def feed(self, chunks: list[bytes]) -> bytes:
        """A connection gets ``chunks`` (one read each), runs a little, is closed; what the
        server wrote."""
        assert self.server.guard.admit()
        conn = H2Connection(self.server)
        transport = Recorder(self.loop)
        transport.protocol = conn
        conn.connection_made(transport)
        for chunk in chunks:
            if transport.closed:
                break
            conn.data_received(chunk)  # raises if anything escapes
        self.spin()
        transport.close()
        self.spin()
        assert conn.transport is None and not conn.streams
        return bytes(transport.out)

    def spin(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))

    def assert_nothing_held(self) -> None:
        self.spin()
        server = self.server
        assert not server.connections
        assert server.budget.held == 0
        assert all(task.done() for task in server.tasks), server.tasks
        assert server.guard.admit()  # the slot came back (and is given back here)
        server.guard.release()

    def close(self) -> None:
        self.loop.run_until_complete(self.stack.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    running = Harness(tmp_path_factory.mktemp("fuzz"))
    yield running
    running.close()


def parse_frames(data: bytes) -> list[Frame]:
    """Every frame of ``data``; fails unless it is whole frames, each well-formed, with header
    blocks a fresh HPACK decoder reads, and every stream's answer sound (:func:`_answers`)."""
    frames, decoder = [], hpack.Decoder()
    blocks: dict[int, list[dict[bytes, bytes]]] = {}
    while data:
        assert len(data) >= 9, data
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        assert length <= 16384 and len(data) >= 9 + length
        frame.parse_body(memoryview(data[9:9 + length]))
        if isinstance(frame, HeadersFrame):
            blocks.setdefault(frame.stream_id, []).append(
                dict(decoder.decode(frame.data, raw=True)))
        frames.append(frame)
        data = data[9 + length:]
    _answers(frames, blocks)
    return frames


def _answers(frames: list[Frame], blocks: dict[int, list[dict[bytes, bytes]]]) -> None:
    """Each stream's answer in order: its response headers, DATA, then trailers that end it
    (or trailers-only), nothing but RST_STREAM after its end; ``grpc-status: 0`` only after a
    message (Envoy takes an OK call with no message as a failure, but no answer of this server
    may rely on that)."""
    ended: set[int] = set()
    data: dict[int, int] = {}
    for frame in frames:
        sid = frame.stream_id
        if sid == 0 or isinstance(frame, RstStreamFrame):
            continue
        assert sid & 1 and sid not in ended, frame  # a client stream, not yet ended
        if isinstance(frame, DataFrame):
            assert len(blocks.get(sid, ())) >= 1 and "END_STREAM" not in frame.flags, frame
            data[sid] = data.get(sid, 0) + len(frame.data)
        if "END_STREAM" in frame.flags:
            ended.add(sid)
    for sid, stream_blocks in blocks.items():
        assert len(stream_blocks) <= 2, stream_blocks  # headers + trailers, or trailers-only
        status = stream_blocks[-1].get(b"grpc-status")
        if sid in ended and status is not None and int(status) == 0:
            assert data.get(sid, 0) >= 5, (sid, stream_blocks)  # an OK answer carries a message


def normal_call(harness: Harness) -> None:
    encoder = hpack.Encoder()
    request = (PREFACE + f.settings({}) + raw_frame(f.HEADERS, f.END_HEADERS, 1,
                                                     encoder.encode(CHECK_HEADERS))
               + raw_frame(f.DATA, f.END_STREAM, 1, grpc_message(CHECK)))
    out = parse_frames(harness.feed([request]))
    blocks = [list(hpack.Decoder().decode(fr.data, raw=True)) for fr in out
              if isinstance(fr, HeadersFrame)]
    assert (b"grpc-status", b"0") in blocks[-1]


_STREAMS = st.sampled_from([0, 1, 1, 3, 3, 5, 2, 2**31 - 1])
_FLAGS = st.one_of(st.sampled_from([0, f.END_STREAM, f.END_HEADERS, f.END_HEADERS | f.END_STREAM,
                                    f.PADDED, f.PRIORITY_FLAG, f.ACK]), st.integers(0, 255))
_PATHS = st.sampled_from(["/envoy.service.auth.v3.Authorization/Check", ECHO_PATH, HOLD_PATH,
                          "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/x"])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([f.DATA, f.HEADERS, f.HEADERS, f.PRIORITY, f.RST_STREAM,
                                 f.SETTINGS, f.PUSH_PROMISE, f.PING, f.GOAWAY, f.WINDOW_UPDATE,
                                 f.CONTINUATION, 0x0A]))
    stream, flags = draw(_STREAMS), draw(_FLAGS)
    if kind == f.HEADERS and draw(st.booleans()):
        headers = [*CHECK_HEADERS[:2], (":path", draw(_PATHS)), *CHECK_HEADERS[3:]]
        payload = hpack.Encoder().encode(headers)
    elif kind == f.DATA and draw(st.booleans()):
        payload = grpc_message(draw(st.sampled_from([CHECK, b"", b"\x08\x01"])))
    elif kind == f.WINDOW_UPDATE:
        payload = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    elif kind == f.SETTINGS and not flags & f.ACK:
        payload = b"".join(draw(st.integers(0, 8)).to_bytes(2, "big")
                           + draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
                           for _ in range(draw(st.integers(0, 3))))
    else:
        payload = draw(st.binary(max_size=40))
    return raw_frame(kind, flags, stream, payload)


@st.composite
def calls(draw: st.DrawFn) -> bytes:
    """Mostly valid traffic: calls on increasing streams (messages cut anywhere, some reset,
    windows given), with random frames between them."""
    out, encoder = [], hpack.Encoder()
    for index in range(draw(st.integers(1, 6))):
        stream = 2 * index + 1
        headers = [*CHECK_HEADERS[:2], (":path", draw(_PATHS)), *CHECK_HEADERS[3:]]
        out.append(raw_frame(f.HEADERS, f.END_HEADERS, stream, encoder.encode(headers)))
        body = grpc_message(draw(st.sampled_from([CHECK, b"", b"\x0a\x00", b"x" * 5000])))
        cut = draw(st.integers(0, len(body)))
        out.append(raw_frame(f.DATA, 0, stream, body[:cut]))
        action = draw(st.sampled_from(["end", "end", "reset", "open", "window"]))
        if action == "reset":
            out.append(raw_frame(f.RST_STREAM, 0, stream, f.CANCEL.to_bytes(4, "big")))
        elif action != "open":
            out.append(raw_frame(f.DATA, f.END_STREAM, stream, body[cut:]))
        if action == "window":
            out.append(f.window_update(stream, draw(st.integers(1, 1 << 16))))
        out.extend(draw(st.lists(frames(), max_size=2)))
    return b"".join(out)


@given(traffic=calls(), cuts=st.lists(st.integers(0, 20_000), max_size=4))
@budget(200)
def test_random_calls(harness: Harness, traffic: bytes, cuts: list[int]) -> None:
    data = PREFACE + f.settings({f.INITIAL_WINDOW_SIZE: 0x40}) + traffic
    parse_frames(harness.feed(_chunks(data, cuts)))
    harness.assert_nothing_held()


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(sequence=st.lists(frames(), max_size=25), cuts=st.lists(st.integers(0, 10_000),
                                                                max_size=4))
@budget(300)
def test_random_frame_sequences(harness: Harness, sequence: list[bytes], cuts: list[int]) -> None:
    data = PREFACE + f.settings({f.INITIAL_WINDOW_SIZE: 0x20}) + b"".join(sequence)
    parse_frames(harness.feed(_chunks(data, cuts)))
    harness.assert_nothing_held()


@given(noise=st.binary(max_size=300), handshake=st.booleans())
@budget(200)
def test_random_bytes(harness: Harness, noise: bytes, handshake: bool) -> None:
    data = (PREFACE + f.settings({}) if handshake else b"") + noise
    parse_frames(harness.feed([data]))
    harness.assert_nothing_held()


def test_a_normal_call_after_the_fuzz(harness: Harness) -> None:
    normal_call(harness)
    harness.assert_nothing_held()


def test_the_answers_of_one_read_leave_in_one_write(harness: Harness) -> None:
    """docs/grpc-native.md: everything one read produced is sent in one ``write`` (under load
    one read carries several checks): ten checks in one read, ten answers, one write."""
    encoder = hpack.Encoder()
    calls = b"".join(
        raw_frame(f.HEADERS, f.END_HEADERS, stream, encoder.encode(CHECK_HEADERS))
        + raw_frame(f.DATA, f.END_STREAM, stream, grpc_message(CHECK))
        for stream in range(1, 21, 2))
    assert harness.server.guard.admit()
    conn = H2Connection(harness.server)
    transport = Recorder(harness.loop)
    transport.protocol = conn
    conn.connection_made(transport)  # its SETTINGS: one write
    assert transport.writes == 1
    conn.data_received(PREFACE + f.settings({}) + calls)
    assert transport.writes == 2
    out = parse_frames(bytes(transport.out))
    trailers = [fr for fr in out if isinstance(fr, HeadersFrame) and "END_STREAM" in fr.flags]
    assert len(trailers) == 10
    transport.close()
    harness.spin()
    harness.assert_nothing_held()
