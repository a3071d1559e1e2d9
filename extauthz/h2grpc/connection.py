"""One HTTP/2 connection of the built-in gRPC server: frames in, unary calls out.

The client is Envoy's gRPC client (or any gRPC client that can reach the port). Everything it
sends is bounded before it is kept (:class:`~extauthz.netlimits.GrpcLimits`):

* a frame larger than SETTINGS_MAX_FRAME_SIZE (16 KiB, not raised) is a connection error;
* a header block (HEADERS + CONTINUATION) larger than ``max_metadata_bytes`` ends the
  connection (a CONTINUATION flood never grows past it), and HPACK's decoded header list is
  bounded by the same figure;
* at most ``max_concurrent_streams`` streams are open; a stream counts until its answer is
  written *and* its check finished, so a client that resets its streams (rapid reset) cannot
  make more checks run at once than that;
* a message larger than ``max_receive_message_bytes`` is refused (RESOURCE_EXHAUSTED) as it
  arrives, and the bytes of messages still arriving are charged to the server's budget
  (:class:`~extauthz.netlimits.ByteBudget`: a connection over its fair share is closed);
* answers the client does not read stay in the stream (flow control) or in the transport's
  buffer; past the transport's high-water mark the connection is no longer read.

Flow control: the server grants 1 MiB per stream and 8 MiB per connection, and gives back what
it received once half is used; it obeys the client's windows and maximum frame size for DATA
it sends. Per call the steady state writes one ``write`` (HEADERS, DATA, trailing HEADERS) and
no WINDOW_UPDATE (the connection's is sent every ~4 MiB received).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from extauthz.h2grpc import frames as f
from extauthz.h2grpc.headers import BlockDecoder, HeaderError, http_status_block, response_head
from extauthz.h2grpc.headers import trailers as trailer_block
from extauthz.netlimits import ByteBudget, ConnectionGuard, GrpcLimits

log = logging.getLogger("extauthz.h2grpc")

__all__ = ["Call", "H2Connection", "Stream"]

#: what the server grants: per stream, and for the connection as a whole
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 8 << 20
#: gRPC status codes the transport itself answers with
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, \
    UNAVAILABLE = 0, 1, 2, 3, 8, 12, 13, 14
#: pings answered while no call is open before the connection is told to go away (grpc core's
#: max_ping_strikes = 2, keepalive_permit_without_calls = 0)
MAX_PING_STRIKES = 2
_PAYLOAD_HEAD = 5  # the gRPC message prefix: compressed flag + 4-byte length
#: a graceful GOAWAY: the first names the largest stream identifier, and a PING with this
#: payload asks when the client has read it; the final one follows the answer, or this long
_MAX_STREAM_ID = 2**31 - 1
_GOAWAY_PING = b"goaway\x00\x00"
GOAWAY_ACK_WAIT = 1.0
_INF = float("inf")


class ConnectionError_(Exception):
    """A connection error (RFC 9113 section 5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


class Stream:
    """One client-initiated stream: its request headers, the message arriving, the answer."""

    __slots__ = ("answered", "body", "call", "ended", "head", "head_sent", "headers", "id",
                 "outbox", "received", "recv_window", "send_window", "task", "trailer")

    def __init__(self, stream_id: int, headers: list[tuple[str, str]], send_window: int) -> None:
        self.id = stream_id
        self.headers = headers
        self.body = bytearray()
        self.received = 0  # bytes of DATA (the budget is charged for them until dispatch)
        self.recv_window = STREAM_WINDOW
        self.send_window = send_window
        self.ended = False  # END_STREAM received
        self.answered = False  # END_STREAM sent (or the stream was reset)
        self.call: Call | None = None
        self.task: asyncio.Future[Any] | None = None
        self.head_sent = False  # the response headers were queued
        #: what is still to send, in this order: the response HEADERS frame, the DATA bytes
        #: (flow-controlled), the trailing HEADERS frame
        self.head = b""
        self.outbox = bytearray()
        self.trailer = b""


class Call:
    """What a method handler gets: the request message, its headers, and how to answer.

    A unary handler calls :meth:`finish` once (message and status); a server-streaming one
    calls :meth:`send` per message and then :meth:`finish` without message.
    """

    __slots__ = ("_conn", "_stream", "headers", "message")

    def __init__(self, conn: H2Connection, stream: Stream, message: bytes) -> None:
        self._conn = conn
        self._stream = stream
        self.message = message
        self.headers = stream.headers

    @property
    def cancelled(self) -> bool:
        """The client reset the stream or the connection is gone: nothing more will be sent."""
        return self._stream.answered or self._conn.transport is None

    def header(self, name: str) -> str | None:
        """The value of request header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def send(self, message: bytes) -> None:
        """One message of a streaming answer (the response headers go first, once)."""
        self._conn.send_message(self._stream, message)

    def finish(self, status: int = OK, message: bytes | None = None, text: str = "") -> None:
        """End the call: ``message`` (if any) and the trailers with ``status``/``text``."""
        self._conn.finish(self._stream, status, message, text)


#: a method: called with the call; returns nothing (synchronous answer) or an awaitable
Handler = Callable[[Call], Any]


class Host(Protocol):
    """What a connection uses of its server (:class:`~extauthz.h2grpc.server.NativeGrpcServer`;
    a protocol, so that this module does not import the server that imports it)."""

    limits: GrpcLimits
    connections: set[H2Connection]
    guard: ConnectionGuard
    budget: ByteBudget
    tasks: set[asyncio.Future[Any]]
    methods: dict[str, Handler]
    complete_on_reset: set[str]
    port_label: str
    closed: Any  # the connections_closed counter (labels: port, reason)
    reading_paused: Any  # a counter child
    refused_streams: Any  # a counter child

    def start_call(self, coro: Coroutine[Any, Any, Any], path: str) -> asyncio.Future[Any]:
        """Run a method's coroutine."""


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection (an asyncio protocol)."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        #: writes held while a read is processed (see data_received); None: write at once
        self.batch: list[bytes] | None = None
        self.preface = False  # the client's 24-byte preface arrived
        self.settled = False  # ... and its first SETTINGS (the handshake is done)
        self.decoder = BlockDecoder(self.limits.max_metadata_bytes)
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        #: the stream whose header block is being continued (CONTINUATION), and the block
        self.continuing: tuple[int, int, bytearray] | None = None
        self.peer_window = f.DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = f.DEFAULT_MAX_FRAME_SIZE
        self.send_window = f.DEFAULT_WINDOW  # connection-level window for what we send
        self.recv_window = CONNECTION_WINDOW
        self.uncredited = 0
        self.held = 0  # bytes of messages still arriving, charged to the server's budget
        self.ping_strikes = 0
        #: the first header block sent said "dynamic table size 0" (see _first_block)
        self.table_signalled = False
        #: when the first of a graceful GOAWAY's two frames went out (see go_away)
        self.announced: float | None = None
        self.goaway_why = ""
        self.goaway_sent = False  # we sent the (final) GOAWAY
        self.peer_away = False  # the client sent GOAWAY
        self.closing = False
        self.write_paused = False
        self.paused_at = 0.0
        now = time.monotonic()
        self.opened = now
        self.since = now  # last time a call was open (idle timeout)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports implement asyncio.Transport's
        # interface without subclassing it (serve --event-loop uvloop)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.server.connections.add(self)
        transport.write(f.settings({
            f.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
            f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            f.MAX_HEADER_LIST_SIZE: self.limits.max_metadata_bytes,
            f.ENABLE_PUSH: 0,
        }) + f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        self.server.guard.release()
        self.server.budget.release(self.held)
        self.held = 0
        for stream in self.streams.values():
            stream.answered = True
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:
        # answers are not read: stop reading requests until they are (TCP pushes back)
        self.write_paused = True
        self.paused_at = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()
            self.server.reading_paused.inc()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # what the frames of this read make us send goes out in one write at the end: Envoy
        # multiplexes the checks of many requests on one connection, and under load one read
        # carries several of them (one send() instead of one per answer)
        self.batch = []
        try:
            self._received(data)
        finally:
            batch, self.batch = self.batch, None
            if batch and self.transport is not None:
                self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def _received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            if not self.preface:
                if len(buf) < len(f.CLIENT_PREFACE):
                    if not f.CLIENT_PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    return
                if not buf.startswith(f.CLIENT_PREFACE):
                    raise ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 preface")
                del buf[:len(f.CLIENT_PREFACE)]
                self.preface = True
            self._frames()
        except ConnectionError_ as exc:
            self.fail(exc.code, exc.why)

    # -- frames in ---------------------------------------------------------------------------

    def _frames(self) -> None:
        buf = self.buf
        view = memoryview(buf)
        offset = 0
        end = len(buf)
        try:
            while end - offset >= f.FRAME_HEADER_SIZE and not self.closing:
                length = int.from_bytes(view[offset:offset + 3], "big")
                if length > f.DEFAULT_MAX_FRAME_SIZE:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, "frame too large")
                if end - offset - f.FRAME_HEADER_SIZE < length:
                    break
                kind = buf[offset + 3]
                flags = buf[offset + 4]
                stream_id = int.from_bytes(view[offset + 5:offset + 9], "big") & 0x7FFFFFFF
                start = offset + f.FRAME_HEADER_SIZE
                offset = start + length
                payload = bytes(view[start:offset])
                if self.continuing is not None and kind != f.CONTINUATION:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "CONTINUATION expected")
                if not self.settled and (kind != f.SETTINGS or flags & f.ACK):
                    raise ConnectionError_(f.PROTOCOL_ERROR, "the preface must be SETTINGS")
                handler = _HANDLERS.get(kind)
                if handler is not None:
                    handler(self, flags, stream_id, payload)
                # frames of unknown types are ignored (section 5.5)
        finally:
            view.release()
            del buf[:offset]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._credit(size)
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None and not stream.answered:  # after the client's END_STREAM
                self._refuse(stream, f.STREAM_CLOSED)
            return  # a stream we ended (refused, reset, answered early): ignored
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._refuse(stream, f.FLOW_CONTROL_ERROR)
            return
        if flags & f.PADDED:
            payload = _unpad(payload)
        if not stream.answered:
            size = len(payload)
            stream.body += payload
            stream.received += size
            self.held += size
            # charged before anything may release the stream's bytes (finish below)
            if size and not self.server.budget.charge(size, self.held):
                raise ConnectionError_(f.ENHANCE_YOUR_CALM, "request bytes over budget")
            if stream.received > self.limits.max_receive_message_bytes + _PAYLOAD_HEAD:
                self.finish(stream, RESOURCE_EXHAUSTED, None,
                            "the request message is larger than the server accepts")
                return
        if flags & f.END_STREAM:
            self._ended(stream)
        elif stream.recv_window < STREAM_WINDOW // 2:
            self._write(f.window_update(stream_id, STREAM_WINDOW - stream.recv_window))
            stream.recv_window = STREAM_WINDOW

    def _credit(self, size: int) -> None:
        """Give the connection's window back once half of it was used."""
        self.uncredited += size
        if self.uncredited >= CONNECTION_WINDOW // 2:
            self._write(f.window_update(0, self.uncredited))
            self.recv_window += self.uncredited
            self.uncredited = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            payload = _unpad(payload)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "short PRIORITY fields")
            payload = payload[5:]
        if flags & f.END_HEADERS:
            self._block(stream_id, flags, payload)
        else:
            self._hold_block(stream_id, flags, bytearray(payload))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        held = self.continuing
        if held is None or held[0] != stream_id:
            raise ConnectionError_(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        held[2].extend(payload)
        if flags & f.END_HEADERS:
            self.continuing = None
            self._block(stream_id, held[1], bytes(held[2]))
        else:
            self._hold_block(stream_id, held[1], held[2])

    def _hold_block(self, stream_id: int, flags: int, block: bytearray) -> None:
        if len(block) > self.limits.max_metadata_bytes:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
        self.continuing = (stream_id, flags, block)

    def _block(self, stream_id: int, flags: int, block: bytes) -> None:
        """A whole header block: a new stream's request headers, or a stream's trailers."""
        if len(block) > self.limits.max_metadata_bytes:
            raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
        try:  # always decoded: the dynamic table must follow the client's, refused or not
            headers = self.decoder.decode(block)
        except HeaderError as exc:
            raise ConnectionError_(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: they must end the stream
            if stream.ended:  # half-closed (remote): a stream error (section 5.1)
                if not stream.answered:
                    self._refuse(stream, f.STREAM_CLOSED)
                return
            if not flags & f.END_STREAM:
                raise ConnectionError_(f.PROTOCOL_ERROR, "trailers without END_STREAM")
            self._ended(stream)
            return
        if stream_id <= self.last_stream_id or not stream_id & 1:
            if stream_id & 1 and flags & f.END_STREAM:
                # trailers of a stream we already ended (answered early, reset): ignored.
                # Without END_STREAM this can only be a new stream below the last one.
                return
            raise ConnectionError_(f.PROTOCOL_ERROR, "stream identifier not allowed")
        self.last_stream_id = stream_id
        if self.goaway_sent or self.peer_away:
            self._write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.server.refused_streams.inc()
            self._write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        stream = Stream(stream_id, headers, self.peer_window)
        self.streams[stream_id] = stream
        if flags & f.END_STREAM:
            self._ended(stream)

    def _priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        # priorities are ignored (RFC 9113 deprecates them); the frame is checked all the same
        if stream_id == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "PRIORITY of the wrong size")

    def _rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id > self.last_stream_id:
            raise ConnectionError_(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.answered = True
        stream.head = stream.trailer = b""
        stream.outbox.clear()
        self._release_body(stream)
        if stream.task is not None and not stream.task.done():
            if _path(stream.headers) not in self.server.complete_on_reset:
                stream.task.cancel()  # a Watch: nothing to finish, its slot is freed
                return
            # the check runs to its end (it counts against the stream limit until then), its
            # answer is dropped: a reset never cuts a decision's record in half
            return
        del self.streams[stream_id]

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        windows: list[int] = []
        for at in range(0, len(payload), 6):
            ident = int.from_bytes(payload[at:at + 2], "big")
            value = int.from_bytes(payload[at + 2:at + 6], "big")
            if ident == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window too large")
                windows.append(value)
            elif ident == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "max frame size out of range")
                self.peer_max_frame = value
            elif ident == f.ENABLE_PUSH and value > 1:
                raise ConnectionError_(f.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
        if windows:
            self._initial_window(max(windows), windows[-1])
        self._write(f.settings_ack())
        self.settled = True
        self._flush_all()

    def _initial_window(self, highest: int, last: int) -> None:
        """The client's SETTINGS_INITIAL_WINDOW_SIZE entries of one frame (``last`` stays,
        ``highest`` is the largest): one pass over the streams, not one per entry -- a 16 KiB
        SETTINGS frame carries 2730 entries, which times the open streams was CPU a client
        could ask for at will. Each entry changes every stream window in turn (section 6.9.2):
        the largest is the one that could overflow one."""
        old = self.peer_window
        self.peer_window = last
        delta = last - old
        for stream in self.streams.values():
            if stream.send_window + highest - old > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "stream window overflow")
            stream.send_window += delta

    def _push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionError_(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & f.ACK:
            if payload == _GOAWAY_PING and self.announced is not None and not self.goaway_sent:
                self._final_goaway(f.NO_ERROR, self.goaway_why)
            return
        if not self.streams:
            self.ping_strikes += 1
            if self.ping_strikes > MAX_PING_STRIKES:
                raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too_many_pings")
        self._write(f.ping_ack(payload))

    def _goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "GOAWAY too short")
        # the client will open no more streams: close once ours are answered
        self.peer_away = True
        self._close_if_done()

    def _window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_all()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(f.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._refuse(stream, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self._refuse(stream, f.FLOW_CONTROL_ERROR)
            return
        self._flush(stream)

    # -- calls -------------------------------------------------------------------------------

    def _ended(self, stream: Stream) -> None:
        """The request is complete: hand it to its method."""
        stream.ended = True
        if stream.answered:
            return
        self.ping_strikes = 0
        body = stream.body
        self._release_body(stream)
        error = _request_error(stream.headers, body)
        if error is not None:
            status, text, http = error
            if http:
                self._end_http(stream, http)
            else:
                self.finish(stream, status, None, text)
            return
        handler = self.server.methods.get(_path(stream.headers))
        if handler is None:
            self.finish(stream, UNIMPLEMENTED, None, "unknown method")
            return
        call = stream.call = Call(self, stream, bytes(body[_PAYLOAD_HEAD:]))
        stream.body = bytearray()
        try:
            result = handler(call)
        except Exception as exc:
            # a synchronous handler that raises must end its own stream closed (INTERNAL),
            # as a coroutine's exception does in _settled: escaping data_received would make
            # the transport abort the connection and every other call on it
            log.error("gRPC method failed: %s", type(exc).__name__)
            self.finish(stream, INTERNAL, None, "the call did not complete")
            return
        if result is not None:
            task = stream.task = self.server.start_call(result, _path(stream.headers))
            if task.done():
                self._settled(stream, task)
            else:
                task.add_done_callback(lambda done: self._settled(stream, done))

    def _settled(self, stream: Stream, task: asyncio.Future[Any]) -> None:
        """A method's coroutine finished: if it did not answer, fail closed (INTERNAL)."""
        self.server.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gRPC method failed: %s", type(task.exception()).__name__)
        stream.task = None
        if not stream.answered:
            self.finish(stream, UNAVAILABLE if task.cancelled() else INTERNAL, None,
                        "the call did not complete")
        elif self.streams.get(stream.id) is stream and not stream.outbox and not stream.trailer:
            del self.streams[stream.id]
            self._close_if_done()

    def _release_body(self, stream: Stream) -> None:
        if stream.received:
            self.server.budget.release(stream.received)
            self.held -= stream.received
            stream.received = 0

    # -- frames out --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        batch = self.batch
        if batch is not None:
            batch.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def send_message(self, stream: Stream, message: bytes) -> None:
        """Send one message on ``stream`` (the response headers first, once)."""
        if stream.answered or self.transport is None:
            return
        self._queue(stream, message)
        self._flush(stream)

    def _queue(self, stream: Stream, message: bytes) -> None:
        if not stream.head_sent:
            stream.head_sent = True
            stream.head = (_RESPONSE_HEAD_FRAME(stream.id) if self.table_signalled
                           else f.frame(f.HEADERS, f.END_HEADERS, stream.id,
                                        self._first_block(_HEAD_BLOCK)))
        stream.outbox += len(message).to_bytes(_PAYLOAD_HEAD, "big")  # flag 0 + length
        stream.outbox += message

    def finish(self, stream: Stream, status: int, message: bytes | None, text: str = "") -> None:
        """End ``stream``: ``message`` (if any), then the trailers (trailers-only when nothing
        was sent), then the stream is closed -- in one write when the windows allow."""
        if stream.answered or self.transport is None:
            return
        self.since = time.monotonic()
        sid = stream.id
        if message is not None:
            self._queue(stream, message)
        end = f.END_HEADERS | f.END_STREAM
        if stream.head_sent:
            stream.trailer = f.frame(f.HEADERS, end, sid, trailer_block(status, text))
        else:  # trailers-only
            stream.trailer = f.frame(f.HEADERS, end, sid, self._first_block(
                trailer_block(status, text, with_head=True)))
        stream.answered = True
        self._flush(stream)
        if not stream.ended:
            # answered before the request ended (refused while arriving): stop its upload
            self._write(f.rst_stream(sid, f.NO_ERROR))
            stream.ended = True
            self._release_body(stream)

    def _first_block(self, block: bytes) -> bytes:
        """``block``, preceded on the connection's first header block by an HPACK dynamic
        table size update to 0 (RFC 7541 section 6.3). Our blocks never use the dynamic table;
        saying so once means a client that lowers SETTINGS_HEADER_TABLE_SIZE never waits for
        an update (nghttp2 requires one in the next block, else COMPRESSION_ERROR)."""
        if self.table_signalled:
            return block
        self.table_signalled = True
        return _TABLE_SIZE_ZERO + block

    def _end_http(self, stream: Stream, status: int) -> None:
        """Answer a request that is no gRPC call with a bare HTTP status."""
        stream.answered = True
        self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream.id,
                            self._first_block(http_status_block(status))))
        self.streams.pop(stream.id, None)
        self._close_if_done()

    def _flush(self, stream: Stream) -> None:
        """Send what of ``stream``'s answer the windows allow; forget the stream when all of
        it is sent and its method has returned."""
        out = []
        if stream.head:
            out.append(stream.head)
            stream.head = b""
        outbox = stream.outbox
        while outbox:
            room = min(self.send_window, stream.send_window, self.peer_max_frame, len(outbox))
            if room <= 0:
                break
            out.append(f.frame(f.DATA, 0, stream.id, bytes(outbox[:room])))
            del outbox[:room]
            self.send_window -= room
            stream.send_window -= room
        if not outbox and stream.trailer:
            out.append(stream.trailer)
            stream.trailer = b""
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))
        if (stream.answered and not outbox and not stream.trailer
                and (stream.task is None or stream.task.done())
                and self.streams.get(stream.id) is stream):
            del self.streams[stream.id]
            self._close_if_done()

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outbox:
                self._flush(stream)

    def _refuse(self, stream: Stream, code: int) -> None:
        """A stream error: RST_STREAM with ``code``; the stream is gone."""
        self._write(f.rst_stream(stream.id, code))
        stream.answered = stream.ended = True
        stream.head = stream.trailer = b""
        stream.outbox.clear()
        self._release_body(stream)
        if stream.task is None or stream.task.done():
            self.streams.pop(stream.id, None)
        elif _path(stream.headers) not in self.server.complete_on_reset:
            # as for the client's RST_STREAM: a Watch has nothing left to send, and left
            # running it would hold its stream slot until the connection ends (_settled frees it)
            stream.task.cancel()

    # -- going away --------------------------------------------------------------------------

    def go_away(self, code: int = f.NO_ERROR, why: str = "") -> None:
        """Tell the client no new stream will be served; close once the open ones are done.

        Without error in two steps (RFC 9113 section 6.8, as grpc core does): a GOAWAY with
        the largest stream identifier and a PING, then, when the PING is answered (or after
        :data:`GOAWAY_ACK_WAIT`), the final GOAWAY with the last stream taken. A call the client
        sent before it read the first one is served: refused (REFUSED_STREAM), Envoy fails it
        closed without a retry (docs/envoy-wire-facts.md)."""
        if self.transport is None or self.goaway_sent:
            self._close_if_done()
            return
        if code != f.NO_ERROR:
            self._final_goaway(code, why)
        elif self.announced is None:
            self.announced = time.monotonic()
            self.goaway_why = why
            self._write(f.goaway(_MAX_STREAM_ID, code, why.encode("ascii", "replace"))
                        + f.frame(f.PING, 0, 0, _GOAWAY_PING))

    def _final_goaway(self, code: int, why: str) -> None:
        self.goaway_sent = True
        self._write(f.goaway(self.last_stream_id, code, why.encode("ascii", "replace")))
        self._close_if_done()

    def fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with ``code`` and close at once."""
        log.debug("HTTP/2 connection error %d: %s", code, why)
        self.server.closed.labels(self.server.port_label, "protocol_error").inc()
        if self.transport is not None:
            if not self.goaway_sent:
                self.goaway_sent = True
                self._write(f.goaway(self.last_stream_id, code, why.encode("ascii", "replace")))
            self._send_batch()
            self.closing = True
            self.transport.close()

    def _close_if_done(self) -> None:
        if ((self.goaway_sent or self.peer_away) and not self.streams
                and self.transport is not None):
            self._send_batch()
            self.closing = True
            self.transport.close()

    def _send_batch(self) -> None:
        """Write what is held now (before a close: nothing may be written after it)."""
        batch = self.batch
        if batch:
            self.batch = []
            if self.transport is not None:
                self.transport.write(b"".join(batch))

    @property
    def deadline(self) -> float:
        """When the server's sweeper acts on this connection (``inf``: not now)."""
        limits = self.limits
        if self.transport is None:
            return _INF
        age = self.opened + limits.max_connection_age
        if self.closing or self.write_paused:  # answers left unread
            # never past the age's grace either: a client that reads a little now and then
            # restarts paused_at at each pause and would otherwise outlive every deadline
            return min((self.since if self.closing else self.paused_at) + limits.idle_timeout,
                       age + limits.connection_age_grace)
        if not self.settled:
            return self.opened + limits.handshake_timeout
        if self.goaway_sent:
            return age + limits.connection_age_grace
        if self.announced is not None:  # the first GOAWAY's PING unanswered
            return self.announced + GOAWAY_ACK_WAIT
        if self.streams:
            return age
        return min(age, self.since + limits.idle_timeout)

    def expire(self, now: float) -> str | None:
        """Past :attr:`deadline`: GOAWAY (idle or aged), or abort (stuck, silent); the reason."""
        if self.transport is None:
            return None
        if self.closing or self.write_paused or not self.settled or self.goaway_sent:
            reason = ("handshake_timeout" if not self.settled else
                      "age_grace" if self.goaway_sent and not self.write_paused
                      and not self.closing else "unread")
            self.closing = True
            self.transport.abort()
            return reason
        if self.announced is not None:
            self._final_goaway(f.NO_ERROR, self.goaway_why)
            return None
        if self.streams:
            self.go_away(f.NO_ERROR, "max_age")
            return "max_age"
        idle = now - self.since >= self.limits.idle_timeout
        self.go_away(f.NO_ERROR, "idle" if idle else "max_age")
        return "idle_timeout" if idle else "max_age"


def _RESPONSE_HEAD_FRAME(stream_id: int) -> bytes:
    """The response HEADERS frame of ``stream_id`` (the block is a constant)."""
    return _HEAD_PREFIX + stream_id.to_bytes(4, "big") + _HEAD_BLOCK


_HEAD_BLOCK = response_head()
#: an HPACK dynamic table size update to 0 (001 prefix, 5-bit integer 0)
_TABLE_SIZE_ZERO = b"\x20"
_HEAD_PREFIX = len(_HEAD_BLOCK).to_bytes(3, "big") + bytes((f.HEADERS, f.END_HEADERS))


def _unpad(payload: bytes) -> bytes:
    """The payload of a PADDED frame without its padding (PROTOCOL_ERROR when malformed)."""
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(f.PROTOCOL_ERROR, "bad padding")
    return payload[1:len(payload) - payload[0]]


def _path(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name == ":path":
            return value
    return ""


def _request_error(headers: list[tuple[str, str]],
                   body: bytearray) -> tuple[int, str, int] | None:
    """Why a request is no unary gRPC call we can answer: (grpc status, text, http status or
    0), or None. gRPC over HTTP/2: a wrong method or content type is answered with an HTTP
    status; a compressed or malformed message with a gRPC status."""
    method = content_type = None
    for name, value in headers:
        if name == ":method":
            method = value
        elif name == "content-type":
            content_type = value
    if method != "POST":
        return (UNIMPLEMENTED, "", 405 if method else 400)
    if content_type is None or not (content_type == "application/grpc"
                                    or content_type.startswith(("application/grpc+",
                                                                "application/grpc;"))):
        return (UNKNOWN, "", 415)
    if len(body) < _PAYLOAD_HEAD:
        return (INTERNAL, "the request has no message", 0)
    if body[0] != 0:
        return (UNIMPLEMENTED, "compressed messages are not accepted", 0)
    if int.from_bytes(body[1:5], "big") != len(body) - _PAYLOAD_HEAD:
        return (INTERNAL, "the request must be exactly one message", 0)
    return None


_HANDLERS: dict[int, Callable[[H2Connection, int, int, bytes], None]] = {
    f.DATA: H2Connection._data,
    f.HEADERS: H2Connection._headers,
    f.PRIORITY: H2Connection._priority,
    f.RST_STREAM: H2Connection._rst_stream,
    f.SETTINGS: H2Connection._settings,
    f.PUSH_PROMISE: H2Connection._push_promise,
    f.PING: H2Connection._ping,
    f.GOAWAY: H2Connection._goaway,
    f.WINDOW_UPDATE: H2Connection._window_update,
    f.CONTINUATION: H2Connection._continuation,
}
