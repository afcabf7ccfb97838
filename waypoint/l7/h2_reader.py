"""Cuts the received HTTP/2 byte stream into frames (RFC 9113 §3.4, §4), without copying DATA.

Why not ``h2``'s reader: it copies every frame into its buffer and builds a hyperframe object per
frame; its receive path was ~28% of the waypoint's CPU in the h2c bench. Here a frame header is
one ``struct`` unpack, DATA payloads leave as ``memoryview`` slices of the received ``bytes`` as
they stream in (as ``waypoint.hbone.fastpath`` does for tunnels), and a header block is handed
out whole, HEADERS and its CONTINUATIONs joined, padding and priority stripped.

The reader enforces the rules that need no stream state, each a connection error: the client
preface and a first SETTINGS (§3.4), frame size (§4.2), CONTINUATION directly after an unfinished
block on the same stream (§6.10), DATA and HEADERS not on stream 0, padding inside the frame
(§6.1, §6.2), no PUSH_PROMISE (§8.4: we send ENABLE_PUSH 0; a server never receives one).

Output is a flat list of segments, tuples tagged with the ``SEG_*`` kinds below.
"""

from __future__ import annotations

import struct
from typing import Any

from waypoint.l7 import h2_fast as w

SEG_FRAME = 0  # (kind, type, flags, stream_id, payload bytes): any frame but DATA/HEADERS/CONTINUATION
SEG_DATA_START = 1  # (kind, stream_id, flow-controlled length, end_stream, body length without padding)
SEG_PAYLOAD = 2  # (kind, stream_id, memoryview)
SEG_DATA_END = 3  # (kind, stream_id, end_stream, padding overhead incl. the length byte)
SEG_HEADERS = 4  # (kind, stream_id, end_stream, header block bytes, depends on itself)
SEG_ERROR = 5  # (kind, error code, reason): a connection error; the reader is dead

_HEAD = struct.Struct(">BHBBL")
_HEAD_MODE, _BODY_MODE, _PAYLOAD_MODE, _DEAD_MODE = range(4)

Segment = tuple[Any, ...]


class FrameReader:
    """Incremental; one per connection. ``block_limit`` bounds a header block (CONTINUATION flood)."""

    __slots__ = (
        "_block", "_block_end", "_block_self", "_block_sid", "_body", "_end", "_first", "_flags",
        "_ftype", "_head", "_left", "_max", "_mode", "_pad", "_pad_need", "_padded", "_preface",
        "_sid", "_total", "block_limit",
    )  # fmt: skip

    def __init__(self, server_side: bool, max_frame_size: int, block_limit: int) -> None:
        self._preface = len(w.PREFACE) if server_side else 0
        self._first = True
        self._max = max_frame_size
        self.block_limit = block_limit
        self._mode = _HEAD_MODE
        self._head = bytearray()
        self._body = bytearray()
        self._ftype = self._flags = self._sid = self._left = self._total = 0
        self._end = self._padded = self._pad_need = False
        self._pad = 0
        self._block: list[bytes] = []
        self._block_sid = 0  # nonzero: a header block awaits CONTINUATION on this stream
        self._block_end = False
        self._block_self = False

    def feed(self, data: bytes) -> list[Segment]:
        out: list[Segment] = []
        pos, n = 0, len(data)
        if self._mode == _DEAD_MODE:
            return out
        if self._preface:
            pos = self._check_preface(data, out)
            if self._mode == _DEAD_MODE:
                return out
        while pos < n:
            mode = self._mode
            if mode == _PAYLOAD_MODE:
                pos = self._payload(memoryview(data), pos, n, out)
            elif mode == _BODY_MODE:
                k = min(self._left, n - pos)
                self._body += data[pos : pos + k]
                pos += k
                self._left -= k
                if not self._left:
                    self._mode = _HEAD_MODE
                    self._frame(self._ftype, self._flags, self._sid, bytes(self._body), out)
            elif mode == _HEAD_MODE:
                if self._head or n - pos < 9:
                    k = min(9 - len(self._head), n - pos)
                    self._head += data[pos : pos + k]
                    pos += k
                    if len(self._head) < 9:
                        break
                    hi, lo, ftype, flags, sid = _HEAD.unpack(self._head)
                    self._head.clear()
                else:
                    hi, lo, ftype, flags, sid = _HEAD.unpack_from(data, pos)
                    pos += 9
                length = hi << 16 | lo
                sid &= 0x7FFFFFFF
                if not self._header_ok(length, ftype, sid, out):
                    break
                if ftype == w.DATA:
                    self._data_start(length, flags, sid, out)
                elif pos + length <= n:
                    payload = data[pos : pos + length]
                    pos += length
                    self._frame(ftype, flags, sid, payload, out)
                else:
                    self._body = bytearray(data[pos:])
                    self._left = length - (n - pos)
                    pos = n
                    self._ftype, self._flags, self._sid, self._mode = ftype, flags, sid, _BODY_MODE
            else:
                break
        return out

    # ---- framing rules ----
    def _check_preface(self, data: bytes, out: list[Segment]) -> int:
        done = len(w.PREFACE) - self._preface
        k = min(self._preface, len(data))
        if data[:k] != w.PREFACE[done : done + k]:
            self._die(out, w.PROTOCOL_ERROR, "invalid connection preface")
            return len(data)
        self._preface -= k
        return k

    def _header_ok(self, length: int, ftype: int, sid: int, out: list[Segment]) -> bool:
        if length > self._max:
            return self._die(out, w.FRAME_SIZE_ERROR, f"frame of {length} octets")
        if self._first:
            if ftype != w.SETTINGS:
                return self._die(out, w.PROTOCOL_ERROR, "the first frame must be SETTINGS")
            self._first = False
        if self._block_sid:
            if ftype != w.CONTINUATION or sid != self._block_sid:
                return self._die(out, w.PROTOCOL_ERROR, "header block interrupted")
        elif ftype == w.CONTINUATION:
            return self._die(out, w.PROTOCOL_ERROR, "CONTINUATION without a header block")
        if ftype == w.PUSH_PROMISE:
            return self._die(out, w.PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")
        if not sid and ftype in (w.DATA, w.HEADERS):
            return self._die(out, w.PROTOCOL_ERROR, "DATA or HEADERS on stream 0")
        return True

    def _die(self, out: list[Segment], code: int, reason: str) -> bool:
        out.append((SEG_ERROR, code, reason))
        self._mode = _DEAD_MODE
        return False

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes, out: list[Segment]) -> None:
        if ftype == w.HEADERS:
            self._headers(flags, sid, payload, out)
        elif ftype == w.CONTINUATION:
            self._block.append(payload)
            if sum(map(len, self._block)) > self.block_limit:
                self._die(out, w.ENHANCE_YOUR_CALM, "header block too large")
            elif flags & w.END_HEADERS:
                out.append((SEG_HEADERS, sid, self._block_end, b"".join(self._block), self._block_self))
                self._block = []
                self._block_sid = 0
        else:
            out.append((SEG_FRAME, ftype, flags, sid, payload))

    def _headers(self, flags: int, sid: int, payload: bytes, out: list[Segment]) -> None:
        """§6.2: strip the pad length, padding and priority fields; note a self-dependency."""
        start, end = 0, len(payload)
        if flags & w.PADDED:
            if not payload:
                self._die(out, w.FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
                return
            start = 1
            end -= payload[0]
        self_dep = False
        if flags & w.PRIORITY_FLAG:
            if end - start >= 5:
                self_dep = int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF == sid
            start += 5
        if end < start:
            self._die(out, w.PROTOCOL_ERROR, "HEADERS padding exceeds the payload")
            return
        block = payload[start:end] if start or end != len(payload) else payload
        end_stream = bool(flags & w.END_STREAM)
        if flags & w.END_HEADERS:
            out.append((SEG_HEADERS, sid, end_stream, block, self_dep))
        elif len(block) > self.block_limit:
            self._die(out, w.ENHANCE_YOUR_CALM, "header block too large")
        else:
            self._block = [block]
            self._block_sid, self._block_end, self._block_self = sid, end_stream, self_dep

    # ---- DATA, streamed ----
    def _data_start(self, length: int, flags: int, sid: int, out: list[Segment]) -> None:
        """DATA_START leaves once the body length is known: at once, or after the pad length."""
        end = bool(flags & w.END_STREAM)
        padded = bool(flags & w.PADDED)
        if padded and not length:
            self._die(out, w.FRAME_SIZE_ERROR, "padded DATA without a pad length")
            return
        self._sid, self._left, self._end, self._total = sid, length, end, length
        self._padded = self._pad_need = padded
        self._pad = 0
        if not padded:
            out.append((SEG_DATA_START, sid, length, end, length))
        if length:
            self._mode = _PAYLOAD_MODE
        else:
            out.append((SEG_DATA_END, sid, end, 0))

    def _payload(self, view: memoryview, pos: int, n: int, out: list[Segment]) -> int:
        if self._pad_need:
            self._pad = view[pos]
            pos += 1
            self._left -= 1
            self._pad_need = False
            if self._pad > self._left:
                self._die(out, w.PROTOCOL_ERROR, "DATA padding exceeds the payload")
                return n
            out.append((SEG_DATA_START, self._sid, self._total, self._end, self._left - self._pad))
        body = self._left - self._pad
        if body:
            k = min(body, n - pos)
            out.append((SEG_PAYLOAD, self._sid, view[pos : pos + k]))
            pos += k
            self._left -= k
            if k < body:
                return pos
        k = min(self._left, n - pos)
        pos += k
        self._left -= k
        if not self._left:
            out.append((SEG_DATA_END, self._sid, self._end, self._pad + 1 if self._padded else 0))
            self._mode = _HEAD_MODE
        return pos
