"""A recording HTTP/2 TCP proxy: what Envoy's gRPC client sends the built-in server, frame by
frame (docs/envoy-wire-facts.md, "gRPC client as seen by the built-in server").

Each accepted connection is forwarded to ``target``; both directions are parsed with hyperframe
(header blocks decoded with a decoder per direction) and kept in :attr:`H2Proxy.frames` as
``(connection index, "c2s" | "s2c", frame, decoded headers or None)``. ``refuse`` streams: the
first ``refuse`` requests are answered RST_STREAM REFUSED_STREAM by the proxy (the server still
gets the HEADERS, so that the HPACK tables stay in step, then a RST_STREAM CANCEL; what it
answers on those streams is dropped).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import hpack
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame

from extauthz.demo.procs import LOOPBACK

__all__ = ["H2Proxy"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REFUSED_STREAM, CANCEL = 0x7, 0x8


class H2Proxy:
    """See module docstring. ``port`` is where it listens; :meth:`close` stops it."""

    def __init__(self, target_port: int = 0, refuse: int = 0) -> None:
        self.target_port = target_port
        self.refuse = refuse
        self.frames: list[tuple[int, str, Frame, list[tuple[str, str]] | None]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._refused: set[tuple[int, int]] = set()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="h2proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((LOOPBACK, self.target_port), 5)
            with self._lock:
                index = self.connections
                self.connections += 1
                self._sockets += [client, server]
            for source, sink, way in ((client, server, "c2s"), (server, client, "s2c")):
                threading.Thread(target=self._pump, args=(index, source, sink, client, server,
                                                          way), daemon=True).start()

    def _pump(self, index: int, source: socket.socket, sink: socket.socket,
              client: socket.socket, server: socket.socket, way: str) -> None:
        decoder = hpack.Decoder(max_header_list_size=1 << 20)
        buffer = b""
        preface = way == "c2s"
        try:
            while chunk := source.recv(1 << 16):
                buffer += chunk
                if preface:
                    if len(buffer) < len(PREFACE):
                        continue
                    sink.sendall(buffer[:len(PREFACE)])
                    buffer, preface = buffer[len(PREFACE):], False
                while len(buffer) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                    if len(buffer) < 9 + length:
                        break
                    raw, buffer = buffer[:9 + length], buffer[9 + length:]
                    frame.parse_body(memoryview(raw[9:]))
                    decoded = None
                    if isinstance(frame, HeadersFrame):
                        decoded = [(str(n), str(v)) for n, v in decoder.decode(frame.data)]
                    with self._lock:
                        self.frames.append((index, way, frame, decoded))
                    self._forward(index, way, frame, raw, sink, client, server)
        except OSError:
            pass
        finally:
            for sock in (sink, source):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _forward(self, index: int, way: str, frame: Frame, raw: bytes, sink: socket.socket,
                 client: socket.socket, server: socket.socket) -> None:
        key = (index, frame.stream_id)
        if way == "s2c":
            if key not in self._refused:
                sink.sendall(raw)
            return
        if isinstance(frame, HeadersFrame) and key not in self._refused and self.refuse > 0:
            with self._lock:
                self.refuse -= 1
                self._refused.add(key)
            server.sendall(raw + RstStreamFrame(frame.stream_id, error_code=CANCEL).serialize())
            client.sendall(RstStreamFrame(frame.stream_id,
                                          error_code=REFUSED_STREAM).serialize())
            return
        if key in self._refused and isinstance(frame, (DataFrame, RstStreamFrame)):
            return
        sink.sendall(raw)

    def of_type(self, kind: type[Frame], way: str = "c2s") -> list[Any]:
        """The frames of ``kind`` seen in direction ``way``."""
        with self._lock:
            return [f for _, w, f, _ in self.frames if w == way and isinstance(f, kind)]

    def requests(self) -> list[list[tuple[str, str]]]:
        """The decoded request header blocks (client to server)."""
        with self._lock:
            return [d for _, w, f, d in self.frames
                    if w == "c2s" and d is not None and f.stream_id % 2]

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
