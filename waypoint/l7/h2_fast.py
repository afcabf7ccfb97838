"""HTTP/2 frames built by hand (RFC 9113 §4.1, §6): the codes and the few byte layouts we send.

Why by hand: ``h2`` built hyperframe objects (flag sets, padding and priority mixins) and
serialised them for every HEADERS, END_STREAM and WINDOW_UPDATE; with its HPACK encoder that was
~20% of the waypoint's CPU in the h2c bench. A frame is a 9-byte header and a payload, so we pack
the header with one ``struct`` call. ``waypoint.l7.h2_session`` decides *when* a frame is legal;
this module only lays bytes out. DATA headers, WINDOW_UPDATE and GOAWAY come from
``waypoint.hbone.fastpath`` (same layout, one definition).
"""

from __future__ import annotations

import struct

from waypoint.hbone.fastpath import data_header, goaway, window_update

__all__ = ["data_header", "goaway", "window_update"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = struct.Struct(">BHBBL")  # length (hi byte, low 16 bits), type, flags, stream id

# frame types (§6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes (§7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED = range(6)
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = range(6, 12)
# settings (§6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = range(1, 6)
MAX_HEADER_LIST_SIZE, ENABLE_CONNECT_PROTOCOL = 6, 8

MAX_WINDOW = (1 << 31) - 1  # §6.9.1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_FRAME_LIMIT = (1 << 24) - 1
MAX_STREAM_ID = (1 << 31) - 1


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in values.items()))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def ping_ack(opaque: bytes) -> bytes:
    return frame(PING, ACK, 0, opaque)


def rst_stream(stream_id: int, code: int) -> bytes:
    return FRAME.pack(0, 4, RST_STREAM, 0, stream_id) + code.to_bytes(4, "big")


def end_stream(stream_id: int) -> bytes:
    """An empty DATA frame with END_STREAM (how h2 and most peers end a body)."""
    return FRAME.pack(0, 0, DATA, END_STREAM, stream_id)


def frame_header_block(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (+ CONTINUATION as needed); END_STREAM on HEADERS, END_HEADERS on the last frame."""
    flags = END_STREAM if end_stream else 0
    n = len(block)
    if n <= max_frame:
        return FRAME.pack(n >> 16, n & 0xFFFF, HEADERS, flags | END_HEADERS, stream_id) + block
    out = []
    kind = HEADERS
    for off in range(0, n, max_frame):
        piece = block[off : off + max_frame]
        last = off + max_frame >= n
        k = len(piece)
        out.append(FRAME.pack(k >> 16, k & 0xFFFF, kind, flags | (END_HEADERS if last else 0), stream_id))
        out.append(piece)
        kind, flags = CONTINUATION, 0
    return b"".join(out)
