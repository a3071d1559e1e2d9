"""HTTP/2 frames (RFC 9113 section 4 and 6) as the built-in gRPC server reads and writes them.

Only what a gRPC server needs: the frame header, the frame and error code numbers, the SETTINGS
identifiers, and builders of the few frames the server sends. Every builder returns the whole
frame as ``bytes`` so that one answer (HEADERS, DATA, trailing HEADERS) is one ``write``.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_PREFACE",
    "FRAME_HEADER_SIZE",
    "MAX_WINDOW",
    "frame",
    "goaway",
    "ping_ack",
    "rst_stream",
    "settings",
    "settings_ack",
    "window_update",
]

#: what every HTTP/2 client sends first (section 3.4)
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9
#: the largest flow-control window (section 6.9.1)
MAX_WINDOW = 2**31 - 1
#: SETTINGS_MAX_FRAME_SIZE's initial value, and the largest frame this server accepts
DEFAULT_MAX_FRAME_SIZE = 16_384
DEFAULT_WINDOW = 65_535

# frame types (section 6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers (section 6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# error codes (section 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header and ``payload``."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream_id.to_bytes(4, "big") + payload)


def settings(values: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying ``values`` (identifier -> value)."""
    return frame(SETTINGS, 0, 0, b"".join(
        ident.to_bytes(2, "big") + value.to_bytes(4, "big") for ident, value in values.items()))


def settings_ack() -> bytes:
    """The acknowledgement of the peer's SETTINGS."""
    return frame(SETTINGS, ACK, 0)


def ping_ack(opaque: bytes) -> bytes:
    """The answer to a PING: the same 8 bytes with ACK."""
    return frame(PING, ACK, 0, opaque)


def window_update(stream_id: int, increment: int) -> bytes:
    """Grant the peer ``increment`` more bytes on ``stream_id`` (0: the connection)."""
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    """End ``stream_id`` abnormally with error ``code``."""
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """No stream after ``last_stream_id`` will be processed; ``code`` says why."""
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)
