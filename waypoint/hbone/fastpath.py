"""Splits the inbound HTTP/2 byte stream: DATA payloads go around h2, everything else to h2.

Why: every frame through h2 costs its receive-buffer copy and per-frame Python work; splitting
DATA frames by hand halved the terminating side's CPU per GB (envoy-peer.md, item 6). We parse
only the 9-byte frame header (RFC 9113 §4.1). DATA payloads are handed out as ``memoryview``
slices of the received ``bytes``, even before the whole frame has arrived (no reassembly).
Control frames are passed to h2 as they stream in (its FrameBuffer reassembles them), except
GOAWAY, which we read ourselves so that h2's connection state machine never closes while
streams drain (h2 4.4 moves to CLOSED on any GOAWAY and then refuses every frame).

Output is a flat list of segments, tuples tagged with the ``SEG_*`` kinds below.
"""

from __future__ import annotations

import struct

DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 5, 6, 7, 8, 9,
)
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

SEG_H2 = 0  # (SEG_H2, bytes): feed to h2
SEG_DATA_START = 1  # (kind, stream_id, flow-controlled length)
SEG_PAYLOAD = 2  # (kind, stream_id, memoryview)
SEG_DATA_END = 3  # (kind, stream_id, end_stream: bool, padding overhead incl. the length byte)
SEG_GOAWAY = 4  # (kind, last_stream_id, error code)
SEG_ERROR = 5  # (kind, error code): fatal framing error

_HEADER = struct.Struct(">BHBBL")  # length split as (hi byte, low 16 bits), type, flags, stream


def data_header(length: int, stream_id: int, flags: int = 0) -> bytes:
    """The 9-byte header of a DATA frame we frame ourselves."""
    return _HEADER.pack(length >> 16, length & 0xFFFF, DATA, flags, stream_id)


def window_update(stream_id: int, increment: int) -> bytes:
    return _HEADER.pack(0, 4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def goaway(last_stream_id: int, code: int) -> bytes:
    return _HEADER.pack(0, 8, GOAWAY, 0, 0) + struct.pack(">LL", last_stream_id, code)


def empty_data(stream_id: int, end_stream: bool) -> bytes:
    """A zero-length DATA frame: how h2 learns END_STREAM (or sees data on a dead stream)
    without ever touching the payload, so its windows never move."""
    return data_header(0, stream_id, FLAG_END_STREAM if end_stream else 0)


class FrameSplitter:
    """Incremental splitter; one per connection. ``feed`` never copies a DATA payload."""

    __slots__ = (
        "_ctrl", "_ctrl_left", "_end", "_head", "_in_block", "_left", "_max", "_mode", "_pad",
        "_pad_need", "_padded", "_preface", "_sid",
    )

    def __init__(self, server_side: bool, max_frame_size: int) -> None:
        self._preface = len(PREFACE) if server_side else 0
        self._max = max_frame_size
        self._head = bytearray()
        self._mode = 0  # 0 frame header, 1 control body to h2, 2 DATA payload, 3 GOAWAY body
        self._in_block = False  # inside a HEADERS..CONTINUATION block: everything to h2
        self._ctrl = bytearray()
        self._ctrl_left = 0
        self._sid = 0
        self._left = 0
        self._pad = 0
        self._pad_need = False
        self._padded = False
        self._end = False

    def feed(self, data: bytes | memoryview) -> list[tuple]:  # type: ignore[type-arg]
        out: list[tuple] = []  # type: ignore[type-arg]
        to_h2: list[bytes | memoryview] = []
        view = memoryview(data)
        pos, n = 0, len(data)
        if self._mode == 4:
            return out
        if self._preface:
            k = min(self._preface, n)
            to_h2.append(view[:k])
            self._preface -= k
            pos = k
        while pos < n:
            mode = self._mode
            if mode == 2:
                pos = self._payload(view, pos, n, out)
            elif mode == 1:
                k = min(self._ctrl_left, n - pos)
                to_h2.append(view[pos : pos + k])
                pos += k
                self._ctrl_left -= k
                if not self._ctrl_left:
                    self._mode = 0
            elif mode == 4:
                break
            elif mode == 3:
                k = min(self._ctrl_left, n - pos)
                self._ctrl += view[pos : pos + k]
                pos += k
                self._ctrl_left -= k
                if not self._ctrl_left:
                    self._mode = 0
                    self._flush(to_h2, out)
                    out.append(self._goaway())
            else:
                if self._head or n - pos < 9:
                    k = min(9 - len(self._head), n - pos)
                    self._head += view[pos : pos + k]
                    pos += k
                    if len(self._head) < 9:
                        break
                    head: bytes | memoryview = bytes(self._head)
                    self._head.clear()
                else:
                    head = view[pos : pos + 9]
                    pos += 9
                if not self._on_header(head, to_h2, out):
                    return out
        self._flush(to_h2, out)
        return out

    @staticmethod
    def _flush(to_h2: list[bytes | memoryview], out: list[tuple]) -> None:  # type: ignore[type-arg]
        if to_h2:
            out.append((SEG_H2, b"".join(to_h2)))
            to_h2.clear()

    def _on_header(self, head: bytes | memoryview, to_h2: list[bytes | memoryview], out: list[tuple]) -> bool:  # type: ignore[type-arg]
        length = head[0] << 16 | head[1] << 8 | head[2]
        ftype, flags = head[3], head[4]
        sid = (head[5] << 24 | head[6] << 16 | head[7] << 8 | head[8]) & 0x7FFFFFFF
        if length > self._max:
            self._flush(to_h2, out)
            out.append((SEG_ERROR, FRAME_SIZE_ERROR))
            self._mode = 4
            return False
        if ftype == DATA and sid and not self._in_block:
            self._flush(to_h2, out)
            out.append((SEG_DATA_START, sid, length))
            self._sid, self._left, self._end = sid, length, bool(flags & FLAG_END_STREAM)
            self._padded = self._pad_need = bool(flags & FLAG_PADDED)
            self._pad = 0
            if length:
                self._mode = 2
            else:
                out.append((SEG_DATA_END, sid, self._end, 0))
            return True
        if ftype == GOAWAY and not self._in_block:
            if sid or length < 8:
                self._flush(to_h2, out)
                out.append((SEG_ERROR, PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR))
                self._mode = 4
                return False
            self._ctrl.clear()
            self._ctrl_left, self._mode = length, 3
            return True
        if ftype in (HEADERS, PUSH_PROMISE):
            self._in_block = not flags & FLAG_END_HEADERS
        elif ftype == CONTINUATION and flags & FLAG_END_HEADERS:
            self._in_block = False
        to_h2.append(bytes(head))
        if length:
            self._ctrl_left, self._mode = length, 1
        return True

    def _payload(self, view: memoryview, pos: int, n: int, out: list[tuple]) -> int:  # type: ignore[type-arg]
        if self._pad_need:
            self._pad = view[pos]
            pos += 1
            self._left -= 1
            self._pad_need = False
            if self._pad > self._left:
                out.append((SEG_ERROR, PROTOCOL_ERROR))
                self._mode = 4  # dead: swallow the rest
                return n
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
            self._mode = 0
        return pos

    def _goaway(self) -> tuple:  # type: ignore[type-arg]
        last, code = struct.unpack_from(">LL", self._ctrl)
        return (SEG_GOAWAY, last & 0x7FFFFFFF, code)
