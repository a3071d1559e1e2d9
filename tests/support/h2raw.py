"""Raw HTTP/2 frames to the gRPC port: the abusive clients of issue 13.2.

Built from hyperframe + hpack (what the h2 library is made of) rather than h2's connection state
machine, because an abusive client is exactly one that ignores the peer's SETTINGS (h2 refuses
to open more streams than MAX_CONCURRENT_STREAMS).

The protocol tests of the built-in server (tests/unit/test_h2grpc.py) use the same client: any
frame (:meth:`RawH2.frame`, :func:`raw_frame` for ones hyperframe would refuse to build), and a
reader that keeps what it read (:meth:`RawH2.next_frame`, :meth:`RawH2.wait_for`,
:meth:`RawH2.response` collects one stream's answer, its header blocks decoded).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from extauthz.demo.procs import LOOPBACK

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
CANCEL = 0x8


#: the request headers of a Check call
CHECK_HEADERS = [
    (":method", "POST"), (":scheme", "http"), (":path", CHECK_PATH),
    (":authority", "extauthz"), ("content-type", "application/grpc"), ("te", "trailers"),
]


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return struct.pack(">BI", 0, len(payload)) + payload


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, as bytes (also the malformed ones hyperframe refuses to serialize)."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream_id.to_bytes(4, "big") + payload)


@dataclass
class Response:
    """What the server sent on one stream: header blocks (decoded), DATA, RST_STREAM code."""

    blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    data: bytes = b""
    data_frames: list[int] = field(default_factory=list)  # the length of each DATA frame
    reset: int | None = None
    ended: bool = False
    window_updates: list[int] = field(default_factory=list)  # the server's, on this stream

    @property
    def headers(self) -> dict[str, str]:
        """The first header block as a dict."""
        return dict(self.blocks[0]) if self.blocks else {}

    @property
    def trailers(self) -> dict[str, str]:
        """The last header block (the trailers; the only one of a trailers-only answer)."""
        return dict(self.blocks[-1]) if self.blocks else {}

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status")
        return None if value is None else int(value)

    def messages(self) -> list[bytes]:
        """The length-prefixed messages of the DATA."""
        out, data = [], self.data
        while len(data) >= 5:
            size = int.from_bytes(data[1:5], "big")
            out.append(data[5:5 + size])
            data = data[5 + size:]
        return out


class RawH2:
    """One HTTP/2 connection to the gRPC port, written frame by frame."""

    def __init__(self, port: int, *, initial_window: int = 65535, preface: bool = True,
                 settings: dict[int, int] | None = None) -> None:
        """Connect; with ``preface`` send the client preface and SETTINGS (``settings``, or
        the initial window and no push)."""
        self.sock = socket.create_connection((LOOPBACK, port), 5)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.next_stream = 1
        self.inbox: list[Frame] = []  # frames read and not yet taken
        self.closed = False  # the server closed the connection
        self._buffer = b""
        if preface:
            values = settings if settings is not None else {
                SettingsFrame.INITIAL_WINDOW_SIZE: initial_window, SettingsFrame.ENABLE_PUSH: 0}
            self.sock.sendall(PREFACE + SettingsFrame(0, settings=values).serialize())

    # -- reading -------------------------------------------------------------------------------

    def _read_one(self, deadline: float) -> Frame | None:
        """The next frame off the socket; None when closed or at ``deadline``."""
        while True:
            if len(self._buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
                if len(self._buffer) >= 9 + length:
                    frame.parse_body(memoryview(self._buffer[9:9 + length]))
                    self._buffer = self._buffer[9 + length:]
                    return frame
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            self._buffer += chunk

    def wait_for(self, match: type[Frame] | None = None, timeout: float = 5.0,
                 stream_id: int | None = None) -> Any:
        """The first frame read (kept ones first) of type ``match`` (any: None) on
        ``stream_id`` (any: None), taken out of the inbox; None when closed or at timeout.
        Header blocks are decoded as they are read (the HPACK state follows the server)."""
        for index, kept in enumerate(self.inbox):
            if _matches(kept, match, stream_id):
                return self.inbox.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            frame = self._read_one(deadline)
            if frame is None:
                return None
            if isinstance(frame, HeadersFrame):
                frame.decoded = self.decoder.decode(frame.data)  # type: ignore[attr-defined]
            if _matches(frame, match, stream_id):
                return frame
            self.inbox.append(frame)

    def next_frame(self, timeout: float = 5.0) -> Any:
        """The next frame (kept ones first); None when closed or at timeout."""
        return self.wait_for(None, timeout)

    def drain(self, timeout: float = 0.3) -> list[Frame]:
        """Every frame that arrives within ``timeout`` (and the kept ones)."""
        frames = []
        while (frame := self.next_frame(timeout)) is not None:
            frames.append(frame)
        return frames

    def server_settings(self, timeout: float = 5.0) -> dict[int, int]:
        """Read frames until the server's first SETTINGS (and ACK it); its values."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.wait_for(SettingsFrame, max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise ConnectionError("closed before SETTINGS")
            assert isinstance(frame, SettingsFrame)
            if "ACK" not in frame.flags:
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.sock.sendall(ack.serialize())
                return dict(frame.settings)

    def response(self, stream_id: int, timeout: float = 5.0,
                 window_updates: bool = False) -> Response:
        """Read until ``stream_id`` ends (END_STREAM, RST_STREAM, GOAWAY or close); what it
        got. ``window_updates``: give back every DATA byte (a client that reads)."""
        out = Response()
        deadline = time.monotonic() + timeout
        while not out.ended and out.reset is None:
            frame = self.wait_for(None, max(0.0, deadline - time.monotonic()), stream_id)
            if frame is None:
                gone = self.wait_for(GoAwayFrame, 0)
                if gone is not None:
                    self.inbox.insert(0, gone)
                    return out
                raise TimeoutError(f"stream {stream_id}: no end ({out})")
            if isinstance(frame, HeadersFrame):
                out.blocks.append(frame.decoded)  # type: ignore[attr-defined]
            elif isinstance(frame, DataFrame):
                out.data += frame.data
                out.data_frames.append(len(frame.data))
                if window_updates and frame.data:
                    self.send(WindowUpdateFrame(0, window_increment=len(frame.data)).serialize()
                              + WindowUpdateFrame(stream_id, window_increment=len(frame.data))
                              .serialize())
            elif isinstance(frame, RstStreamFrame):
                out.reset = int(frame.error_code)
            elif isinstance(frame, WindowUpdateFrame):
                out.window_updates.append(int(frame.window_increment))
            out.ended = "END_STREAM" in frame.flags
        return out

    # -- writing -------------------------------------------------------------------------------

    def open_stream(self) -> int:
        """The next client stream identifier (taken)."""
        stream = self.next_stream
        self.next_stream += 2
        return stream

    def headers(self, stream: int, headers: list[tuple[str, str]] | None = None, *,
                end_stream: bool = False, end_headers: bool = True) -> bytes:
        """A HEADERS frame with ``headers`` (a Check call's by default) encoded."""
        frame = HeadersFrame(stream)
        frame.data = self.encoder.encode(CHECK_HEADERS if headers is None else headers)
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def data(self, stream: int, payload: bytes, *, end_stream: bool = True) -> bytes:
        """DATA frames (at most 16 KiB each) carrying ``payload``."""
        out = []
        chunks = [payload[at:at + 16384] for at in range(0, len(payload), 16384)] or [b""]
        for index, chunk in enumerate(chunks):
            frame = DataFrame(stream)
            frame.data = chunk
            if end_stream and index == len(chunks) - 1:
                frame.flags.add("END_STREAM")
            out.append(frame.serialize())
        return b"".join(out)

    def call(self, message: bytes, headers: list[tuple[str, str]] | None = None) -> int:
        """Send one call (HEADERS + the message with END_STREAM); its stream identifier."""
        stream = self.open_stream()
        self.sock.sendall(self.headers(stream, headers) + self.data(stream, grpc_message(message)))
        return stream

    def ping(self, opaque: bytes = b"12345678") -> bytes:
        return PingFrame(0, opaque_data=opaque).serialize()

    def _headers(self, stream: int, end_stream: bool) -> bytes:
        return self.headers(stream, end_stream=end_stream)

    def calls(self, count: int, message: bytes) -> bytes:
        """The frames of ``count`` complete Check calls (HEADERS + DATA with END_STREAM)."""
        out = []
        for _ in range(count):
            stream = self.next_stream
            self.next_stream += 2
            data = DataFrame(stream)
            data.data = grpc_message(message)
            data.flags.add("END_STREAM")
            out.append(self._headers(stream, False) + data.serialize())
        return b"".join(out)

    def rapid_resets(self, count: int) -> bytes:
        """``count`` streams opened and cancelled at once (CVE-2023-44487, "rapid reset")."""
        out = []
        for _ in range(count):
            stream = self.next_stream
            self.next_stream += 2
            out.append(self._headers(stream, False)
                       + RstStreamFrame(stream, error_code=CANCEL).serialize())
        return b"".join(out)

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server closed the connection (or the send stalled)."""
        try:
            self.sock.settimeout(5)
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def goaway(self, timeout: float = 2.0) -> int | None:
        """Read (keeping the other frames) until a GOAWAY or the end; its error code, or
        None."""
        frame = self.wait_for(GoAwayFrame, timeout)
        return None if frame is None else int(frame.error_code)

    def closed_by_server(self, timeout: float = 2.0) -> bool:
        """Read (keeping frames) until the server closes; False at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            frame = self._read_one(deadline)
            if frame is None:
                return self.closed
            if isinstance(frame, HeadersFrame):
                frame.decoded = self.decoder.decode(frame.data)  # type: ignore[attr-defined]
            self.inbox.append(frame)
        return True

    def close(self) -> None:
        self.sock.close()


def _matches(frame: Frame, match: type[Frame] | None, stream_id: int | None) -> bool:
    return ((match is None or isinstance(frame, match))
            and (stream_id is None or frame.stream_id == stream_id))
