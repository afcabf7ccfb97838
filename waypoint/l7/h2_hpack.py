"""HPACK decoding (RFC 7541) for received header blocks, with a cache of whole blocks.

Why our own: ``hpack.Decoder`` builds a ``HeaderTuple`` per field and walks its table in Python,
~7% of the waypoint's CPU in the h2c bench. A client that indexes its headers (nghttp2, Envoy,
grpc) sends the *same bytes* for the same request again and again: a block made only of
references and literals *without* indexing leaves the dynamic table untouched, so while the table
does not change, the same block decodes to the same fields. :meth:`Decoder.decode` keeps such
blocks (and whatever the caller derived from them, ``note``) until the table next changes; a hit
costs one dict lookup. Huffman strings are decoded by ``hpack``'s table-driven decoder.

Every malformed representation raises :class:`HpackError`, which the session turns into a
connection error COMPRESSION_ERROR (RFC 9113 §4.3).
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_NSTATIC = len(STATIC)
ENTRY_OVERHEAD = 32  # §4.1
CACHE_LIMIT = 256

Fields = list[tuple[bytes, bytes]]


class HpackError(Exception):
    """A block we cannot decode: the connection's compression state is lost."""


class Decoder:
    """One connection's decoder. ``limit`` is the SETTINGS_HEADER_TABLE_SIZE we advertised."""

    __slots__ = ("_cache", "_entries", "_max", "_size", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._max = limit
        self._size = 0
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is [0]
        self._cache: dict[bytes, tuple[Fields, object]] = {}

    def cached(self, block: bytes) -> tuple[Fields, object] | None:
        """The fields and the caller's note for a block seen since the table last changed."""
        return self._cache.get(block)

    def remember(self, block: bytes, fields: Fields, note: object) -> None:
        """Keep a block that :meth:`decode` reported as not touching the table."""
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[block] = (fields, note)

    def decode(self, block: bytes) -> tuple[Fields, bool]:
        """The fields of ``block``, and whether the dynamic table stayed as it was (cacheable)."""
        fields: Fields = []
        data = block
        n = len(data)
        pos = 0
        untouched = True
        while pos < n:
            b = data[pos]
            if b & 0x80:  # §6.1 indexed
                index, pos = _integer(data, pos, 7)
                fields.append(self._at(index))
            elif b & 0x40:  # §6.2.1 literal with incremental indexing
                name, value, pos = self._literal(data, pos, 6)
                fields.append((name, value))
                self._add(name, value)
                untouched = False
            elif b & 0x20:  # §6.3 dynamic table size update: only before the first field
                if fields:
                    raise HpackError("table size update after a field")
                size, pos = _integer(data, pos, 5)
                if size > self.limit:
                    raise HpackError("table size update above SETTINGS_HEADER_TABLE_SIZE")
                self._max = size
                self._evict(0)
                untouched = False
            else:  # §6.2.2 without indexing, §6.2.3 never indexed
                name, value, pos = self._literal(data, pos, 4)
                fields.append((name, value))
        if not untouched:
            self._cache.clear()
        return fields, untouched

    # ---- pieces ----
    def _at(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _NSTATIC:
            return STATIC[index - 1]
        k = index - _NSTATIC - 1
        if 0 <= k < len(self._entries):
            return self._entries[k]
        raise HpackError(f"index {index} out of range")

    def _literal(self, data: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(data, pos, prefix)
        if index:
            name = self._at(index)[0]
        else:
            name, pos = _string(data, pos)
        value, pos = _string(data, pos)
        return name, value, pos

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self._max:  # §4.4: an entry larger than the table empties it
            self._entries.clear()
            self._size = 0
            return
        self._evict(size)
        self._entries.appendleft((name, value))
        self._size += size

    def _evict(self, room: int) -> None:
        entries = self._entries
        while entries and self._size + room > self._max:
            name, value = entries.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """§5.1; values beyond 2^28 are refused (no real field needs them, and they bound the loop)."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    n = len(data)
    while True:
        if pos >= n:
            raise HpackError("truncated integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer too large")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """§5.2: a length-prefixed octet string, Huffman-coded when the H bit is set."""
    if pos >= len(data):
        raise HpackError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("string runs past the block")
    raw = data[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKDecodingError as exc:
            raise HpackError(str(exc)) from None
    return raw, end
