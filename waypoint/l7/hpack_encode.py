"""A header-block encoder for the blocks our L7 HTTP/2 codecs send: no dynamic table, no Huffman.

Why: ``hpack.Encoder`` searched its dynamic table linearly and Huffman-coded every string; in the
h2c bench that was ~10% of the waypoint's CPU. RFC 7541 lets an encoder never index: each field is
a static-table match (§6.1), or a literal *without indexing* (§6.2.2), its name taken from the static
table when it is there. ``authorization``/``cookie`` fields are *never indexed* literals (§7.1.3),
so an intermediary downstream keeps them out of its tables too. The first block starts with a
dynamic table size update to 0 (§6.3), and so does the first block after the peer changes
SETTINGS_HEADER_TABLE_SIZE, so what we send never depends on the decoder's table. Encoded fields are
cached per connection by ``(name, value)``: a proxy sends the same few headers again and again.

It has the face ``h2`` expects of ``H2Connection.encoder`` (``encode``, ``header_table_size``).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
FULL = {field: i + 1 for i, field in reversed(list(enumerate(_STATIC)))}  # first index wins
NAME = {name: i + 1 for i, (name, _) in reversed(list(enumerate(_STATIC)))}
SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
CACHE_LIMIT = 512
# Values new on every message: caching them only churns the cache (and clears it every 512 requests).
UNCACHED = frozenset({b"x-request-id", b"traceparent", b"tracestate", b"x-b3-traceid", b"x-b3-spanid"})
TABLE_SIZE_ZERO = b"\x20"  # §6.3: 001 prefix, size 0


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """§5.1: ``first`` carries the pattern bits above the prefix."""
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


def encode_string(data: bytes) -> bytes:
    """§5.2 with H=0 (raw octets)."""
    return encode_integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: indexed if the static table has it whole, else a literal that is not indexed."""
    index = FULL.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)
    pattern = 0x10 if name in SENSITIVE else 0x00  # never indexed / without indexing
    name_index = NAME.get(name)
    if name_index is not None:
        return encode_integer(name_index, 4, pattern) + encode_string(value)
    return bytes((pattern,)) + encode_string(name) + encode_string(value)


class StaticEncoder:
    """Stands in for ``hpack.Encoder`` on one connection (``H2Connection.encoder``)."""

    __slots__ = ("_cache", "_size_update")

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        self._size_update = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer changed SETTINGS_HEADER_TABLE_SIZE (h2 sets this): say 0 again in the next block."""
        self._size_update = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """One block; each field is a cache lookup keyed by the field tuple itself."""
        get = self._cache.get
        parts = [get(field) or self._miss(field) for field in headers]
        if self._size_update:
            self._size_update = False
            parts.insert(0, TABLE_SIZE_ZERO)
        return b"".join(parts)

    def _miss(self, field: tuple[bytes, bytes]) -> bytes:
        cache = self._cache
        encoded = encode_field(field[0], field[1])
        if field[0] in UNCACHED:
            return encoded
        if len(cache) >= CACHE_LIMIT:
            cache.clear()  # per-request values (x-request-id) must not grow it without bound
        cache[(field[0], field[1])] = encoded
        return encoded
