"""Raw HTTP/2 frames to the gRPC port: the abusive clients of issue 13.2.

Built from hyperframe + hpack (what the h2 library is made of) rather than h2's connection state
machine, because an abusive client is exactly one that ignores the peer's SETTINGS (h2 refuses
to open more streams than MAX_CONCURRENT_STREAMS).
"""

from __future__ import annotations

import socket
import struct

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from extauthz.demo.procs import LOOPBACK

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
CANCEL = 0x8


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return struct.pack(">BI", 0, len(payload)) + payload


class RawH2:
    """One HTTP/2 connection to the gRPC port, written frame by frame."""

    def __init__(self, port: int, *, initial_window: int = 65535) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), 5)
        self.encoder = hpack.Encoder()
        self.next_stream = 1
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: initial_window,
                                              SettingsFrame.ENABLE_PUSH: 0})
        self.sock.sendall(PREFACE + settings.serialize())

    def server_settings(self, timeout: float = 5.0) -> dict[int, int]:
        """Read frames until the server's first SETTINGS; its values."""
        self.sock.settimeout(timeout)
        buffer = b""
        while True:
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9:9 + length]))
                buffer = buffer[9 + length:]
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    ack = SettingsFrame(0)
                    ack.flags.add("ACK")
                    self.sock.sendall(ack.serialize())
                    return dict(frame.settings)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before SETTINGS")
            buffer += chunk

    def _headers(self, stream: int, end_stream: bool) -> bytes:
        frame = HeadersFrame(stream)
        frame.data = self.encoder.encode([
            (":method", "POST"), (":scheme", "http"), (":path", CHECK_PATH),
            (":authority", "extauthz"), ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

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
        """Read (discarding) until a GOAWAY or the end; its error code, or None."""
        self.sock.settimeout(timeout)
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return None
                buffer += chunk
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                    if len(buffer) < 9 + length:
                        break
                    frame.parse_body(memoryview(buffer[9:9 + length]))
                    buffer = buffer[9 + length:]
                    if isinstance(frame, GoAwayFrame):
                        return int(frame.error_code)
        except (TimeoutError, OSError):
            return None

    def close(self) -> None:
        self.sock.close()
