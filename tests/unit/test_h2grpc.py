"""The built-in HTTP/2 gRPC server (extauthz.h2grpc) against raw HTTP/2 clients: every protocol
error (RFC 9113) with its exact GOAWAY or RST_STREAM code, flow control both ways, the gRPC
request rules (gRPC over HTTP/2: status codes, trailers-only answers, grpc-message), the stream
and ping bounds, and HPACK (the memo of repeated blocks decodes exactly like a fresh decoder).

The server runs in process on a thread of its own (:mod:`tests.support.h2server`); clients are
sockets writing frames (:mod:`tests.support.h2raw`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2
from extauthz.h2grpc import frames as f
from extauthz.h2grpc.connection import STREAM_WINDOW
from extauthz.h2grpc.headers import (
    MEMO_ENTRIES,
    BlockDecoder,
    HeaderError,
    http_status_block,
    trailers,
)
from extauthz.netlimits import GrpcLimits
from tests.support.h2raw import CHECK_HEADERS, PREFACE, RawH2, grpc_message, raw_frame
from tests.support.h2server import ECHO_PATH, HOLD_PATH, InProcessServer, check_request
from tests.support.hypo import budget

#: small bounds, so that tests reach them quickly
LIMITS = GrpcLimits(max_concurrent_streams=4, max_receive_message_bytes=256 * 1024,
                    max_metadata_bytes=8 * 1024)
CHECK = check_request().SerializeToString()
DENIED = check_request(key=None).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    running = InProcessServer(tmp_path_factory.mktemp("h2grpc"), LIMITS)
    yield running
    running.stop()


@pytest.fixture
def conn(server: InProcessServer) -> Iterator[RawH2]:
    server.release()  # what an earlier test left held
    server.held.clear()
    client = RawH2(server.port)
    client.server_settings()
    yield client
    client.close()
    server.release()
    server.held.clear()


def headers_for(path: str, **changes: str | None) -> list[tuple[str, str]]:
    """A call's request headers for ``path``, with ``changes`` (None: left out)."""
    base = dict(CHECK_HEADERS) | {":path": path}
    for name, value in changes.items():
        key = name.replace("_", "-") if not name.startswith("p_") else ":" + name[2:]
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return list(base.items())


def connection_error(client: RawH2, code: int) -> None:
    """The server answers GOAWAY with ``code`` and closes the connection."""
    assert client.goaway(timeout=5) == code
    assert client.closed_by_server(timeout=5)


def served(server: InProcessServer) -> None:
    """A new well-behaved client still gets its check answered (allowed)."""
    client = RawH2(server.port)
    try:
        client.server_settings()
        answer = client.response(client.call(CHECK))
        assert answer.grpc_status == 0, answer
        response = external_auth_pb2.CheckResponse.FromString(answer.messages()[0])
        assert response.status.code == 0
    finally:
        client.close()


# -- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
                                   b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
                                   b"PRI * HTTP/1.1\r\n"])
def test_a_wrong_preface_is_a_protocol_error(server: InProcessServer, first: bytes) -> None:
    client = RawH2(server.port, preface=False)
    try:
        client.send(first)
        connection_error(client, f.PROTOCOL_ERROR)
    finally:
        client.close()
    served(server)


def test_a_preface_in_single_bytes_is_accepted(server: InProcessServer) -> None:
    client = RawH2(server.port, preface=False)
    try:
        for byte in PREFACE + SettingsFrame(0).serialize():
            client.send(bytes((byte,)))
        client.server_settings()
        assert client.response(client.call(CHECK)).grpc_status == 0
    finally:
        client.close()


@pytest.mark.parametrize("first", [
    PingFrame(0, opaque_data=b"12345678").serialize(),
    raw_frame(f.SETTINGS, f.ACK, 0),  # an acknowledgement is not the client's SETTINGS
    raw_frame(f.HEADERS, f.END_HEADERS, 1, b"\x82"),
])
def test_the_first_frame_must_be_settings(server: InProcessServer, first: bytes) -> None:
    client = RawH2(server.port, preface=False)
    try:
        client.send(PREFACE + first)
        connection_error(client, f.PROTOCOL_ERROR)
    finally:
        client.close()


def test_server_settings_are_advertised(conn: RawH2) -> None:
    client = RawH2(conn.sock.getpeername()[1])
    try:
        settings = client.server_settings()
        # the connection window is raised at once to 8 MiB
        update = client.wait_for(WindowUpdateFrame, stream_id=0)
    finally:
        client.close()
    assert settings == {SettingsFrame.MAX_CONCURRENT_STREAMS: 4,
                        SettingsFrame.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                        SettingsFrame.MAX_HEADER_LIST_SIZE: 8 * 1024,
                        SettingsFrame.ENABLE_PUSH: 0}
    assert update is not None and update.window_increment == (8 << 20) - 65535
    # the client's SETTINGS are acknowledged
    ack = conn.drain(0.2)
    assert any(isinstance(fr, SettingsFrame) and "ACK" in fr.flags for fr in ack)


# -- frame level errors ------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "code"), [
    (raw_frame(f.DATA, 0, 1, b"x" * 16385), f.FRAME_SIZE_ERROR),  # larger than 16 KiB
    (raw_frame(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),  # DATA on stream 0
    (raw_frame(f.DATA, 0, 7, b"x"), f.PROTOCOL_ERROR),  # DATA on an idle stream
    (raw_frame(f.HEADERS, f.END_HEADERS, 0, b"\x82"), f.PROTOCOL_ERROR),
    (raw_frame(f.SETTINGS, f.ACK, 0, b"\x00" * 6), f.FRAME_SIZE_ERROR),
    (raw_frame(f.SETTINGS, 0, 0, b"\x00" * 5), f.FRAME_SIZE_ERROR),
    (raw_frame(f.SETTINGS, 0, 1), f.PROTOCOL_ERROR),
    (f.settings({f.INITIAL_WINDOW_SIZE: 2**31}), f.FLOW_CONTROL_ERROR),
    (f.settings({f.MAX_FRAME_SIZE: 16383}), f.PROTOCOL_ERROR),
    (f.settings({f.MAX_FRAME_SIZE: 2**24}), f.PROTOCOL_ERROR),
    (f.settings({f.ENABLE_PUSH: 2}), f.PROTOCOL_ERROR),
    (raw_frame(f.WINDOW_UPDATE, 0, 0, b"\x00" * 4), f.PROTOCOL_ERROR),  # increment 0
    (raw_frame(f.WINDOW_UPDATE, 0, 0, b"\x00" * 3), f.FRAME_SIZE_ERROR),
    (f.window_update(0, 2**31 - 1), f.FLOW_CONTROL_ERROR),  # overflow (8 MiB + this)
    (f.window_update(9, 1), f.PROTOCOL_ERROR),  # an idle stream
    (raw_frame(f.PING, 0, 0, b"1234567"), f.FRAME_SIZE_ERROR),
    (raw_frame(f.PING, 0, 1, b"12345678"), f.PROTOCOL_ERROR),
    (raw_frame(f.PRIORITY, 0, 1, b"\x00" * 4), f.FRAME_SIZE_ERROR),
    (raw_frame(f.PRIORITY, 0, 0, b"\x00" * 5), f.PROTOCOL_ERROR),
    (raw_frame(f.RST_STREAM, 0, 0, b"\x00" * 4), f.PROTOCOL_ERROR),
    (raw_frame(f.RST_STREAM, 0, 1, b"\x00" * 4), f.PROTOCOL_ERROR),  # an idle stream
    (raw_frame(f.RST_STREAM, 0, 1, b"\x00" * 3), f.FRAME_SIZE_ERROR),
    (raw_frame(f.GOAWAY, 0, 1, b"\x00" * 8), f.PROTOCOL_ERROR),
    (raw_frame(f.GOAWAY, 0, 0, b"\x00" * 7), f.FRAME_SIZE_ERROR),
    (raw_frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\x00\x00\x00\x02\x82"), f.PROTOCOL_ERROR),
    (raw_frame(f.CONTINUATION, f.END_HEADERS, 1, b"\x82"), f.PROTOCOL_ERROR),  # no HEADERS
    (raw_frame(f.HEADERS, f.END_HEADERS, 2, b"\x82"), f.PROTOCOL_ERROR),  # an even stream
    (raw_frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff"), f.COMPRESSION_ERROR),
    (raw_frame(f.HEADERS, f.END_HEADERS, 1, b"\xbf"), f.COMPRESSION_ERROR),  # index 63
    (raw_frame(f.HEADERS, f.END_HEADERS | f.PADDED, 1, b"\x05\x82"), f.PROTOCOL_ERROR),
    (raw_frame(f.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, b"\x00\x00"), f.FRAME_SIZE_ERROR),
])
def test_connection_errors(server: InProcessServer, conn: RawH2, frame: bytes,
                           code: int) -> None:
    conn.send(frame)
    connection_error(conn, code)
    served(server)


def test_unknown_frame_types_and_settings_are_ignored(conn: RawH2) -> None:
    conn.send(raw_frame(0xFA, 0xFF, 3, b"anything") + f.settings({0x99: 7}))
    assert conn.response(conn.call(CHECK)).grpc_status == 0


def test_stream_identifiers_must_increase(conn: RawH2) -> None:
    conn.send(conn.headers(5))
    conn.send(conn.headers(3))  # a new stream below the last one
    connection_error(conn, f.PROTOCOL_ERROR)


def test_frames_on_a_half_closed_stream_are_stream_errors(server: InProcessServer,
                                                          conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream, headers_for(HOLD_PATH))
              + conn.data(stream, grpc_message(b"")))
    _wait(lambda: len(server.held) >= 1)
    conn.send(conn.data(stream, grpc_message(b"more")))  # after END_STREAM
    answer = conn.response(stream)
    assert answer.reset == f.STREAM_CLOSED
    server.release()
    assert conn.response(conn.call(CHECK)).grpc_status == 0  # the connection goes on


def test_trailers_on_a_stream_end_it(conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream) + conn.data(stream, grpc_message(CHECK), end_stream=False)
              + conn.headers(stream, [("x-trailer", "1")], end_stream=True))
    assert conn.response(stream).grpc_status == 0


def test_trailers_without_end_stream_are_a_protocol_error(conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream) + conn.data(stream, grpc_message(CHECK), end_stream=False)
              + conn.headers(stream, [("x-trailer", "1")]))
    connection_error(conn, f.PROTOCOL_ERROR)


# -- header blocks: CONTINUATION, padding, priority --------------------------------------------


def test_a_header_block_in_continuation_frames(conn: RawH2) -> None:
    stream = conn.open_stream()
    block = conn.encoder.encode(CHECK_HEADERS)
    first, second, third = block[:3], block[3:7], block[7:]
    conn.send(raw_frame(f.HEADERS, 0, stream, first)
              + raw_frame(f.CONTINUATION, 0, stream, second)
              + raw_frame(f.CONTINUATION, 0, stream, b"")
              + raw_frame(f.CONTINUATION, f.END_HEADERS, stream, third)
              + conn.data(stream, grpc_message(CHECK)))
    assert conn.response(stream).grpc_status == 0


@pytest.mark.parametrize("between", [
    PingFrame(0, opaque_data=b"12345678").serialize(),
    raw_frame(f.DATA, f.END_STREAM, 1, b""),
    raw_frame(f.CONTINUATION, f.END_HEADERS, 3, b""),  # another stream's continuation
    raw_frame(f.HEADERS, f.END_HEADERS, 3, b"\x82"),
])
def test_a_header_block_must_not_be_interleaved(conn: RawH2, between: bytes) -> None:
    block = conn.encoder.encode(CHECK_HEADERS)
    conn.send(raw_frame(f.HEADERS, 0, 1, block[:3]) + between
              + raw_frame(f.CONTINUATION, f.END_HEADERS, 1, block[3:]))
    connection_error(conn, f.PROTOCOL_ERROR)


def test_a_continuation_flood_ends_at_max_metadata_bytes(server: InProcessServer,
                                                         conn: RawH2) -> None:
    block = conn.encoder.encode(CHECK_HEADERS)
    conn.send(raw_frame(f.HEADERS, 0, 1, block))
    sent = 0
    while sent <= LIMITS.max_metadata_bytes:
        if not conn.send(raw_frame(f.CONTINUATION, 0, 1, b"\x00" * 1000)):
            break
        sent += 1000
    connection_error(conn, f.ENHANCE_YOUR_CALM)
    served(server)


def test_a_header_block_larger_than_max_metadata_bytes_in_one_frame(conn: RawH2) -> None:
    headers = [*CHECK_HEADERS, ("x-big", os.urandom(LIMITS.max_metadata_bytes).hex())]
    conn.send(raw_frame(f.HEADERS, 0, 1, conn.encoder.encode(headers)[:16000]))
    connection_error(conn, f.ENHANCE_YOUR_CALM)


def test_a_header_list_larger_than_max_metadata_bytes_decoded(conn: RawH2) -> None:
    # Huffman makes the block small; decoded it is over the bound: the HPACK decoder stops
    # half-way, its table can no longer follow the client's, so the connection ends
    headers = [*CHECK_HEADERS, ("x-big", "v" * (LIMITS.max_metadata_bytes + 1))]
    conn.send(conn.headers(1, headers))
    connection_error(conn, f.COMPRESSION_ERROR)


def test_padded_and_prioritized_frames(conn: RawH2) -> None:
    stream = conn.open_stream()
    block = conn.encoder.encode(CHECK_HEADERS)
    head = (bytes((7,)) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 7)  # pad 7, priority
    message = grpc_message(CHECK)
    conn.send(raw_frame(f.HEADERS, f.END_HEADERS | f.PADDED | f.PRIORITY_FLAG, stream, head)
              + raw_frame(f.DATA, f.PADDED, stream, bytes((3,)) + message[:10] + b"\x00" * 3)
              + raw_frame(f.DATA, f.PADDED, stream, b"\x00")  # only the pad length
              + raw_frame(f.DATA, f.PADDED | f.END_STREAM, stream, b"\x00" + message[10:]))
    assert conn.response(stream).grpc_status == 0


def test_bad_padding_in_data_is_a_protocol_error(conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream) + raw_frame(f.DATA, f.PADDED, stream, b"\x04abc"))
    connection_error(conn, f.PROTOCOL_ERROR)


# -- flow control ------------------------------------------------------------------------------


def test_answers_obey_the_client_window_and_frame_size(server: InProcessServer) -> None:
    client = RawH2(server.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 10,
                                          SettingsFrame.MAX_FRAME_SIZE: 16384})
    try:
        client.server_settings()
        message = bytes(range(256)) * 400  # 100 KiB: more than the connection window
        stream = client.call(message, headers_for(ECHO_PATH))
        head = client.wait_for(HeadersFrame, stream_id=stream)
        first = client.wait_for(DataFrame, stream_id=stream)
        assert head is not None and first is not None
        assert len(first.data) == 10
        assert client.wait_for(DataFrame, timeout=0.3, stream_id=stream) is None  # window 0
        client.send(f.window_update(stream, 20))
        second = client.wait_for(DataFrame, stream_id=stream)
        assert second is not None and len(second.data) == 20
        client.send(f.window_update(stream, 1 << 20))
        # the rest: at most 16 KiB per frame, until the connection window (65 535) is spent
        rest = client.drain(0.3)
        sizes = [len(fr.data) for fr in rest if isinstance(fr, DataFrame)]
        assert sizes and max(sizes) == 16384 and sum(sizes) == 65535 - 30
        client.send(f.window_update(0, 1 << 20))
        answer = client.response(stream)
        assert all(size <= 16384 for size in answer.data_frames)
        assert answer.grpc_status == 0
        total = first.data + second.data + b"".join(fr.data for fr in rest
                                                    if isinstance(fr, DataFrame)) + answer.data
        assert total == grpc_message(message)
    finally:
        client.close()


def test_a_lower_initial_window_applies_to_open_streams(server: InProcessServer) -> None:
    client = RawH2(server.port, initial_window=100)
    try:
        client.server_settings()
        stream = client.call(b"x" * 300, headers_for(ECHO_PATH))
        first = client.wait_for(DataFrame, stream_id=stream)
        assert first is not None and len(first.data) == 100
        client.send(f.settings({f.INITIAL_WINDOW_SIZE: 50}))  # window now -50
        client.send(f.window_update(stream, 60))
        second = client.wait_for(DataFrame, stream_id=stream)
        assert second is not None and len(second.data) == 10
        client.send(f.settings({f.INITIAL_WINDOW_SIZE: 1000}))
        answer = client.response(stream)
        assert answer.grpc_status == 0 and len(answer.data) == 305 - 110
    finally:
        client.close()


def test_a_settings_window_overflowing_an_open_stream_is_a_flow_control_error(
    server: InProcessServer,
) -> None:
    client = RawH2(server.port, initial_window=0)
    try:
        client.server_settings()
        stream = client.call(b"", headers_for(HOLD_PATH))
        client.send(f.window_update(stream, 2**31 - 1))
        client.send(f.settings({f.INITIAL_WINDOW_SIZE: 1}))
        connection_error(client, f.FLOW_CONTROL_ERROR)
    finally:
        client.close()


def test_stream_window_updates_of_zero_and_overflow_are_stream_errors(
    server: InProcessServer,
) -> None:
    client = RawH2(server.port, initial_window=0)
    try:
        client.server_settings()
        zero = client.call(b"x", headers_for(ECHO_PATH))
        client.send(raw_frame(f.WINDOW_UPDATE, 0, zero, b"\x00" * 4))
        assert client.response(zero).reset == f.PROTOCOL_ERROR
        over = client.call(b"", headers_for(HOLD_PATH))  # not answered: the window stays
        client.send(f.window_update(over, 2**31 - 1) + f.window_update(over, 1))
        assert client.response(over).reset == f.FLOW_CONTROL_ERROR
        server.release()
        _wait(lambda: server.streams() == 0)
        server.held.clear()
    finally:
        client.close()


def test_a_2_mib_request_completes_with_stream_window_updates(tmp_path: Path) -> None:
    big = InProcessServer(tmp_path, GrpcLimits())  # 4 MiB messages
    try:
        client = RawH2(big.port)
        client.server_settings()
        request = check_request(body=b"b" * (2 << 20)).SerializeToString()
        stream = client.open_stream()
        client.send(client.headers(stream) + client.data(stream, grpc_message(request)))
        answer = client.response(stream, timeout=20)
        assert answer.grpc_status == 0
        # 1 MiB granted per stream: the rest came by WINDOW_UPDATEs on the stream
        assert sum(answer.window_updates) >= len(request) + 5 - STREAM_WINDOW
        client.close()
    finally:
        big.stop()


def test_data_is_counted_against_the_connection_window(server: InProcessServer,
                                                      conn: RawH2) -> None:
    # 5 MiB in messages over the limit (refused as they arrive, then ignored): the connection
    # window (8 MiB) is given back from 4 MiB on, so the client is never stuck
    for _ in range(20):
        stream = conn.open_stream()
        conn.send(conn.headers(stream) + conn.data(stream, b"\x00" * (256 * 1024 + 16)))
        answer = conn.response(stream)
        assert answer.grpc_status == 8
    updates = [fr.window_increment for fr in conn.drain(0.2)
               if isinstance(fr, WindowUpdateFrame) and fr.stream_id == 0]
    assert sum(updates) >= 4 << 20


# -- gRPC requests -----------------------------------------------------------------------------


def test_the_first_header_block_sets_the_dynamic_table_size_to_zero(
    server: InProcessServer,
) -> None:
    client = RawH2(server.port)
    try:
        client.server_settings()
        first, second = client.call(CHECK), client.call(CHECK)
        blocks = [frame.data for frame in client.drain(0.3)
                  if isinstance(frame, HeadersFrame) and frame.stream_id in (first, second)]
    finally:
        client.close()
    # head (with the update), trailers, head, trailers
    assert [block[:1] for block in blocks] == [b"\x20", b"\x00", b"\x88", b"\x00"]
    assert blocks[1] == blocks[3] == trailers(0)


def test_an_allowed_and_a_denied_check(conn: RawH2) -> None:
    allowed = conn.response(conn.call(CHECK))
    denied = conn.response(conn.call(DENIED))
    assert allowed.headers[":status"] == "200"
    assert allowed.headers["content-type"] == "application/grpc"
    assert allowed.grpc_status == 0 and "grpc-message" not in allowed.trailers
    assert len(allowed.blocks) == 2
    assert external_auth_pb2.CheckResponse.FromString(allowed.messages()[0]).status.code == 0
    assert denied.grpc_status == 0
    assert external_auth_pb2.CheckResponse.FromString(denied.messages()[0]).status.code == 16


@pytest.mark.parametrize(("changes", "http"), [
    ({"content_type": "text/plain"}, "415"),
    ({"content_type": None}, "415"),
    ({"content_type": "application/grpc-web"}, "415"),
    ({"p_method": "GET"}, "405"),
    ({"p_method": None}, "400"),
])
def test_a_request_that_is_no_grpc_call_gets_an_http_status(conn: RawH2, changes: dict[str, str],
                                                            http: str) -> None:
    answer = conn.response(conn.call(CHECK, headers_for(HOLD_PATH, **changes)))
    assert answer.blocks == [[(":status", http)]]
    assert answer.ended


@pytest.mark.parametrize("content_type", ["application/grpc+proto", "application/grpc;x=1"])
def test_grpc_content_type_variants_are_accepted(conn: RawH2, content_type: str) -> None:
    answer = conn.response(conn.call(CHECK, headers_for(
        "/envoy.service.auth.v3.Authorization/Check", content_type=content_type)))
    assert answer.grpc_status == 0


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 13, "the request has no message"),
    (b"\x00\x00\x00", 13, "the request has no message"),
    (b"\x01" + len(CHECK).to_bytes(4, "big") + CHECK, 12,
     "compressed messages are not accepted"),
    (grpc_message(CHECK) + grpc_message(CHECK), 13, "the request must be exactly one message"),
    (grpc_message(CHECK)[:-1], 13, "the request must be exactly one message"),
])
def test_malformed_messages(conn: RawH2, body: bytes, status: int, message: str) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream) + conn.data(stream, body))
    answer = conn.response(stream)
    assert answer.grpc_status == status
    assert unquote(answer.trailers["grpc-message"]) == message
    assert answer.headers[":status"] == "200"  # trailers-only: one block with everything
    assert len(answer.blocks) == 1 and answer.data == b""


def test_headers_with_end_stream_and_no_message(conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream, end_stream=True))
    assert conn.response(stream).grpc_status == 13


def test_an_unknown_method_is_unimplemented(conn: RawH2) -> None:
    answer = conn.response(conn.call(CHECK, headers_for("/no.Such/Method")))
    assert answer.grpc_status == 12
    assert answer.trailers["grpc-message"] == "unknown method"


def test_a_message_larger_than_the_limit_is_resource_exhausted(server: InProcessServer,
                                                               conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream)
              + conn.data(stream, grpc_message(b"x" * (LIMITS.max_receive_message_bytes + 1))))
    answer = conn.response(stream)
    assert answer.grpc_status == 8
    # the client is told to stop sending (RST_STREAM NO_ERROR after the answer)
    reset = conn.wait_for(RstStreamFrame, stream_id=stream)
    assert reset is not None and reset.error_code == f.NO_ERROR
    assert conn.response(conn.call(CHECK)).grpc_status == 0
    assert server.call(lambda: server.server.budget.held) == 0


def test_a_message_exactly_at_the_limit_is_served(conn: RawH2) -> None:
    message = b"e" * LIMITS.max_receive_message_bytes
    answer = conn.response(conn.call(message, headers_for(ECHO_PATH)), window_updates=True)
    assert answer.grpc_status == 0 and answer.messages() == [message]


def test_health_check_watch_and_unknown_service(server: InProcessServer, conn: RawH2) -> None:
    from grpc_health.v1 import health_pb2

    def health(method: str, service: str) -> int:
        path = f"/grpc.health.v1.Health/{method}"
        request = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        return conn.call(request, headers_for(path))

    ok = conn.response(health("Check", ""))
    assert health_pb2.HealthCheckResponse.FromString(ok.messages()[0]).status == 1
    unknown = conn.response(health("Check", "nope"))
    assert unknown.grpc_status == 5 and unknown.trailers["grpc-message"] == "unknown service"
    watch = health("Watch", "")
    first = conn.wait_for(DataFrame, stream_id=watch)
    assert first is not None
    assert health_pb2.HealthCheckResponse.FromString(first.data[5:]).status == 1
    # a Watch reset by the client ends (its task is cancelled, its stream slot freed)
    conn.send(RstStreamFrame(watch, error_code=f.CANCEL).serialize())
    _wait(lambda: server.streams() == 0)


# -- stream and ping bounds --------------------------------------------------------------------


def test_streams_beyond_max_concurrent_streams_are_refused(server: InProcessServer,
                                                           conn: RawH2) -> None:
    held = [conn.call(b"", headers_for(HOLD_PATH)) for _ in range(4)]
    _wait(lambda: len(server.held) >= 4)
    refused = conn.call(CHECK)
    assert conn.response(refused).reset == f.REFUSED_STREAM
    server.release()
    for stream in held:
        answer = conn.response(stream)
        assert answer.grpc_status == 0 and answer.messages() == [b"held"]
    server.held.clear()
    assert conn.response(conn.call(CHECK)).grpc_status == 0


def test_a_reset_check_counts_until_it_finishes_and_its_answer_is_dropped(
    server: InProcessServer, conn: RawH2,
) -> None:
    held = [conn.call(b"", headers_for(HOLD_PATH)) for _ in range(4)]
    _wait(lambda: len(server.held) >= 4)
    conn.send(RstStreamFrame(held[0], error_code=f.CANCEL).serialize())
    assert conn.response(conn.call(CHECK)).reset == f.REFUSED_STREAM  # still counted
    assert server.streams() == 4
    server.release()
    for stream in held[1:]:
        assert conn.response(stream).grpc_status == 0
    # nothing was sent on the reset stream
    assert conn.wait_for(None, timeout=0.2, stream_id=held[0]) is None
    server.held.clear()
    assert server.streams() == 0
    assert conn.response(conn.call(CHECK)).grpc_status == 0


def test_data_after_a_reset_is_ignored(conn: RawH2) -> None:
    stream = conn.open_stream()
    conn.send(conn.headers(stream) + RstStreamFrame(stream, error_code=f.CANCEL).serialize()
              + conn.data(stream, grpc_message(CHECK)))
    assert conn.wait_for(None, timeout=0.2, stream_id=stream) is None
    assert conn.response(conn.call(CHECK)).grpc_status == 0


def test_pings_are_answered(conn: RawH2) -> None:
    conn.send(conn.ping(b"abcdefgh"))
    ack = conn.wait_for(PingFrame)
    assert ack is not None and "ACK" in ack.flags and ack.opaque_data == b"abcdefgh"
    conn.send(raw_frame(f.PING, f.ACK, 0, b"abcdefgh"))  # an ACK is not answered
    assert conn.wait_for(PingFrame, timeout=0.2) is None


def test_ping_strikes_without_calls_end_the_connection(conn: RawH2) -> None:
    for _ in range(2):
        conn.send(conn.ping())
        assert conn.wait_for(PingFrame) is not None
    assert conn.response(conn.call(CHECK)).grpc_status == 0  # a call resets the strikes
    for _ in range(2):
        conn.send(conn.ping())
        assert conn.wait_for(PingFrame) is not None
    conn.send(conn.ping())
    gone = conn.wait_for(GoAwayFrame)
    assert gone is not None and gone.error_code == f.ENHANCE_YOUR_CALM
    assert gone.additional_data == b"too_many_pings"
    assert conn.closed_by_server()


def test_pings_during_a_call_are_no_strikes(server: InProcessServer, conn: RawH2) -> None:
    stream = conn.call(b"", headers_for(HOLD_PATH))
    _wait(lambda: len(server.held) >= 1)
    for _ in range(10):
        conn.send(conn.ping())
        assert conn.wait_for(PingFrame) is not None
    server.release()
    assert conn.response(stream).grpc_status == 0
    server.held.clear()


def test_a_client_goaway_lets_open_calls_finish_then_closes(server: InProcessServer,
                                                            conn: RawH2) -> None:
    stream = conn.call(b"", headers_for(HOLD_PATH))
    _wait(lambda: len(server.held) >= 1)
    conn.send(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    refused = conn.call(CHECK)  # a stream after its own GOAWAY
    assert conn.response(refused).reset == f.REFUSED_STREAM
    server.release()
    assert conn.response(stream).grpc_status == 0
    server.held.clear()
    assert conn.closed_by_server()


def test_a_client_goaway_without_calls_closes_at_once(conn: RawH2) -> None:
    conn.send(GoAwayFrame(0, last_stream_id=0, error_code=f.NO_ERROR).serialize())
    assert conn.closed_by_server()


def _wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _decoded(decoder: hpack.Decoder, block: bytes) -> list[tuple[str, str]]:
    return [(str(n), str(v)) for n, v in decoder.decode(block, raw=False)]


# -- HPACK -------------------------------------------------------------------------------------

_NAMES = st.sampled_from([":method", ":path", "content-type", "te", "x-a", "x-b",
                          "grpc-timeout", "authorization", "x-long-name-to-fill-the-table"])
_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_HEADER_LISTS = st.lists(st.tuples(_NAMES, _VALUES, st.booleans()), min_size=1, max_size=6)


@given(blocks=st.lists(st.tuples(_HEADER_LISTS, st.sampled_from([None, 0, 64, 256, 4096]),
                                 st.integers(0, 3)), min_size=1, max_size=12))
@budget(150)
def test_the_block_memo_decodes_like_a_fresh_decoder(
    blocks: list[tuple[list[tuple[str, str, bool]], int | None, int]],
) -> None:
    encoder = hpack.Encoder()
    memo = BlockDecoder(1 << 20)
    fresh = hpack.Decoder(max_header_list_size=1 << 20)
    for headers, table_size, repeats in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size  # a size update in the next block
        block = encoder.encode([hpack.HeaderTuple(n, v) if index
                                else hpack.NeverIndexedHeaderTuple(n, v)
                                for n, v, index in headers])
        for _ in range(1 + repeats):  # the same bytes again: a memo hit when the table holds
            try:
                expected = _decoded(fresh, block)
            except hpack.HPACKError:  # a repeated block that changed the table may be invalid
                with pytest.raises(HeaderError):
                    memo.decode(block)
                return  # both tables are now undefined: the connection would end here
            assert memo.decode(block) == expected


def test_the_memo_is_bounded_and_emptied_when_the_table_changes() -> None:
    encoder = hpack.Encoder()
    memo = BlockDecoder(1 << 20)
    encoder.encode([("x-a", "1")])  # the encoder's table: x-a: 1
    memo.decode(hpack.Encoder().encode([("x-a", "1")]))  # the decoder's too
    for index in range(MEMO_ENTRIES + 10):
        memo.decode(hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple("x-n", str(index))]))
    assert len(memo._memo) == MEMO_ENTRIES
    memo.decode(hpack.Encoder().encode([("x-new", "v")]))  # inserts into the table
    assert memo._memo == {}


def test_an_invalid_block_is_a_header_error() -> None:
    for block in (b"\xff\xff\xff\xff\xff\xff", b"\x80", b"\x00\x85\xff\xff\xff\xff\xff",
                  b"\x3f\xe2\x1f"):  # index too large, index 0, bad Huffman, size > 4096
        with pytest.raises(HeaderError):
            BlockDecoder(1 << 20).decode(block)


@pytest.mark.parametrize(("status", "message"), [
    (0, ""), (5, "unknown service"), (13, "100% sure\r\nnot ascii: é ✓"), (2, "%" * 2000)])
def test_trailers_decode_with_a_real_decoder(status: int, message: str) -> None:
    for with_head in (False, True):
        block = trailers(status, message, with_head=with_head)
        decoded = dict(_decoded(hpack.Decoder(), block))
        assert decoded["grpc-status"] == str(status)
        if message:
            encoded = decoded["grpc-message"]
            assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
            assert unquote(encoded) == message[:1024]
        else:
            assert "grpc-message" not in decoded
        if with_head:
            assert decoded[":status"] == "200"
            assert decoded["content-type"] == "application/grpc"


def test_grpc_message_percent_encoding_is_exact() -> None:
    block = trailers(13, "a%b\n é~ ok")
    assert dict(_decoded(hpack.Decoder(), block))["grpc-message"] == \
        "a%25b%0A %C3%A9~ ok"


@pytest.mark.parametrize("status", [200, 400, 404, 405, 415, 500])
def test_http_status_blocks_decode(status: int) -> None:
    assert _decoded(hpack.Decoder(), http_status_block(status)) == [
        (":status", str(status))]


# -- going away --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    running = InProcessServer(tmp_path_factory.mktemp("idle"), GrpcLimits(idle_timeout=0.5))
    yield running
    running.stop()


def test_a_graceful_goaway_serves_calls_sent_before_it_was_read(
    idle_server: InProcessServer,
) -> None:
    client = RawH2(idle_server.port)
    try:
        client.server_settings()
        first = client.wait_for(GoAwayFrame, timeout=3)  # the idle timeout
        assert first is not None
        assert (first.last_stream_id, first.error_code) == (2**31 - 1, f.NO_ERROR)
        assert first.additional_data == b"idle"
        ping = client.wait_for(PingFrame)
        assert ping is not None and "ACK" not in ping.flags
        # a call the client sent before it read the GOAWAY: served, not refused
        stream = client.call(CHECK)
        assert client.response(stream).grpc_status == 0
        client.send(raw_frame(f.PING, f.ACK, 0, ping.opaque_data))
        final = client.wait_for(GoAwayFrame)
        assert final is not None and (final.last_stream_id, final.error_code) == (stream, 0)
        assert client.closed_by_server()
    finally:
        client.close()


def test_the_final_goaway_follows_without_the_ping_answer(idle_server: InProcessServer) -> None:
    client = RawH2(idle_server.port)
    try:
        client.server_settings()
        assert client.goaway(timeout=3) == f.NO_ERROR
        started = time.monotonic()
        final = client.wait_for(GoAwayFrame, timeout=3)
        waited = time.monotonic() - started
        assert final is not None and final.last_stream_id == 0
        assert 0.8 < waited < 2.0  # GOAWAY_ACK_WAIT (1 s) and a sweeper tick
        assert client.closed_by_server()
    finally:
        client.close()


def test_the_connection_holding_the_request_budget_is_the_one_closed(
    server: InProcessServer,
) -> None:
    # the budget: 4 x 256 KiB of requests still arriving, server-wide (ByteBudget); a
    # connection over it is closed only if it holds more than its share (budget / connections)
    limit = server.call(lambda: server.server.budget.limit)
    assert limit == 4 * LIMITS.max_receive_message_bytes
    first, hog, other = RawH2(server.port), RawH2(server.port), RawH2(server.port)
    clients = (first, hog, other)
    try:
        for client in clients:
            client.server_settings()
        prefix = b"\x00" + LIMITS.max_receive_message_bytes.to_bytes(4, "big")
        for stream in [first.open_stream() for _ in range(4)]:  # ~1 MB held, within limits
            first.send(first.headers(stream)
                       + first.data(stream, prefix + b"f" * 250_000, end_stream=False))
        first.drain(0.2)
        small = other.open_stream()  # a little held by a third client
        other.send(other.headers(small) + other.data(small, b"\x00\x00\x00\x10\x00" + b"o" * 64,
                                                     end_stream=False))
        other.drain(0.2)
        # the budget is now full: the next client to hold more than a third of it is closed
        for stream in [hog.open_stream() for _ in range(4)]:
            if not hog.send(hog.headers(stream)
                            + hog.data(stream, prefix + b"h" * 120_000, end_stream=False)):
                break
        assert hog.goaway() == f.ENHANCE_YOUR_CALM
        assert hog.closed_by_server()
        # the others go on: the first one within its share, the small one to its answer
        first.send(first.data(1, b"f" * 1000, end_stream=False))
        assert first.wait_for(GoAwayFrame, timeout=0.3) is None
        other.send(other.data(small, b"o" * (0x1000 - 64)))
        answer = other.response(small)  # a whole message, answered (it is no CheckRequest)
        assert answer.grpc_status == 0
        assert external_auth_pb2.CheckResponse.FromString(answer.messages()[0]).status.code == 3
    finally:
        for client in clients:
            client.close()
    _wait(lambda: server.call(lambda: server.server.budget.held) == 0)
