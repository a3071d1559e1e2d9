"""Header blocks: decoding what the client sends (HPACK, RFC 7541) and the few the server sends.

Decoding uses the ``hpack`` library (python-hyper): Huffman code, the dynamic table, integer and
size bounds are exactly what should not be hand-written. It is pure Python and costs ~20 us per
block, so :class:`BlockDecoder` remembers the headers of a block that left the dynamic table as
it was: Envoy's gRPC client sends the same few headers on every call, and after its first calls
each block is a handful of indexed references, byte for byte the same. Such a block decodes to the
same headers for as long as the dynamic table does not change, so the memo is emptied whenever a
block changes the table. A client cannot make the memo answer wrongly; at worst it makes every
block miss (and pay the library's cost), and the memo holds at most :data:`MEMO_ENTRIES` blocks.

Encoding needs no table: the server's header blocks are constants (``:status``,
``content-type``) and literals without indexing (``grpc-status``, ``grpc-message``), so they
never touch the peer's dynamic table.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import quote

import hpack
from hpack.exceptions import HPACKError

__all__ = ["MEMO_ENTRIES", "BlockDecoder", "HeaderError", "response_head", "trailers"]

#: blocks remembered (Envoy's calls need one or two: the memo is for the steady state)
MEMO_ENTRIES = 64
#: the longest grpc-message sent (the status text is ours, short; bounded all the same)
_MAX_MESSAGE = 1024


class HeaderError(Exception):
    """A header block that cannot be decoded (a connection error: COMPRESSION_ERROR)."""


class BlockDecoder:
    """Decodes one connection's header blocks (the dynamic table is per connection)."""

    __slots__ = ("_decoder", "_memo", "_table")

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._table = self._decoder.header_table
        self._memo: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The (name, value) pairs of ``block``; raises :class:`HeaderError`."""
        memo = self._memo
        headers = memo.get(block)
        if headers is not None:
            return headers
        table = self._table
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        size, maxsize = table._current_size, table.maxsize
        try:
            headers = cast("list[tuple[str, str]]", self._decoder.decode(block, raw=False))
        except (HPACKError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise HeaderError(type(exc).__name__) from None
        unchanged = ((entries[0] if entries else None) is first
                     and table._current_size == size and table.maxsize == maxsize)
        if not unchanged:  # this block changed the table: every remembered block may now differ
            memo.clear()
        elif len(memo) < MEMO_ENTRIES:
            memo[bytes(block)] = headers
        return headers


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with ``first``'s high bits set."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, with a literal name (section 6.2.2)."""
    return (b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value)


#: ``:status: 200`` (static table entry 8) and ``content-type: application/grpc`` (a literal
#: without indexing whose name is static entry 31)
_STATUS_200 = b"\x88"
_CONTENT_TYPE = _integer(31, 4, 0x00) + _integer(16, 7, 0) + b"application/grpc"
_STATUS_BLOCKS = {code: bytes(_integer({200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13,
                                        500: 14}[code], 7, 0x80))
                  for code in (200, 400, 404, 500)}


def response_head() -> bytes:
    """The header block that starts every gRPC answer."""
    return _STATUS_200 + _CONTENT_TYPE


def http_status_block(status: int) -> bytes:
    """A bare ``:status`` block (a request that is no gRPC call: section 'Protocol' of gRPC's
    HTTP/2 spec answers it with an HTTP status); 415 is a literal."""
    block = _STATUS_BLOCKS.get(status)
    if block is not None:
        return block
    return _integer(8, 4, 0x00) + _integer(3, 7, 0) + str(status).encode("ascii")


def trailers(status: int, message: str = "", *, with_head: bool = False) -> bytes:
    """The trailing header block: ``grpc-status`` and, if any, ``grpc-message``
    (percent-encoded as gRPC requires). ``with_head``: a trailers-only answer, which carries
    ``:status`` and ``content-type`` too."""
    if status == 0 and not message and not with_head:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", str(status).encode("ascii"))
    if message:
        encoded = quote(message[:_MAX_MESSAGE], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        block += _literal(b"grpc-message", encoded.encode("ascii"))
    return response_head() + block if with_head else block


_OK_TRAILERS = trailers(0, "", with_head=True)[len(response_head()):]
