"""HEADERS and END_STREAM framed by hand, with ``h2``'s state machines told what we sent.

Why: per request our HTTP/2 codecs send a head and an END_STREAM on a stream that already exists
(the response on the server side, trailers either side). ``h2`` builds hyperframe objects (flag
sets, padding and priority mixins), validation flags and a ``HeaderTuple`` per field for each,
then serialises them: with its HPACK encoder that was ~20% of the waypoint's CPU in the h2c
bench. We keep what ``h2`` is for here (its connection and stream state machines decide what is
legal and when a stream is closed) and frame the bytes ourselves (RFC 9113 §6.2, §6.10, §6.1).
The header block comes from the connection's encoder (``waypoint.l7.hpack_encode.StaticEncoder``).

Reaches into h2 4.4.1: ``H2Connection.streams``, ``.state_machine``, ``.encoder``,
``.max_outbound_frame_size``, ``H2Stream.state_machine`` (``process_input``, ``client``,
``trailers_sent``), ``ConnectionInputs`` and ``StreamInputs``. Contract test:
``tests/l7h2/test_fast_frames.py``. A stream h2 does not know falls back to h2's own call, which
raises the error it would have raised.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from h2.connection import ConnectionInputs, H2Connection
from h2.exceptions import ProtocolError
from h2.stream import StreamInputs

H2_VERSIONS_READ = ("4.4.",)
_FRAME = struct.Struct(">BHBBL")  # length (hi byte, low 16 bits), type, flags, stream id
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame_header_block(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (+ CONTINUATION as needed); END_STREAM on HEADERS, END_HEADERS on the last frame."""
    flags = END_STREAM if end_stream else 0
    n = len(block)
    if n <= max_frame:
        return _FRAME.pack(n >> 16, n & 0xFFFF, HEADERS, flags | END_HEADERS, stream_id) + block
    out = []
    kind = HEADERS
    for off in range(0, n, max_frame):
        piece = block[off : off + max_frame]
        last = off + max_frame >= n
        k = len(piece)
        out.append(_FRAME.pack(k >> 16, k & 0xFFFF, kind, flags | (END_HEADERS if last else 0), stream_id))
        out.append(piece)
        kind, flags = CONTINUATION, 0
    return b"".join(out)


def send_headers(conn: H2Connection, stream_id: int, headers: Sequence[tuple[bytes, bytes]], end_stream: bool) -> bytes:
    """A head or trailers on an existing stream; the frames' bytes. Raises ``ProtocolError`` as
    ``H2Connection.send_headers`` would (closed stream, END_STREAM on a 1xx, trailers without it)."""
    stream = conn.streams.get(stream_id)
    if stream is None:  # not ours to shortcut: h2 raises the precise error (or opens the stream)
        conn.send_headers(stream_id, headers, end_stream=end_stream)
        return b""
    conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
    sm = stream.state_machine
    first = headers[0] if headers else (b"", b"")
    informational = not sm.client and first[0] == b":status" and first[1][:1] == b"1"
    if informational:
        if end_stream:
            raise ProtocolError("Cannot set END_STREAM on informational responses.")
        sm.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
    else:
        sm.process_input(StreamInputs.SEND_HEADERS)
    block = conn.encoder.encode(headers)
    if end_stream:
        sm.process_input(StreamInputs.SEND_END_STREAM)
    elif sm.trailers_sent:
        raise ProtocolError("Trailers must have END_STREAM set.")
    return frame_header_block(stream_id, block, end_stream, conn.max_outbound_frame_size)


def end_stream(conn: H2Connection, stream_id: int) -> bytes:
    """An empty DATA frame with END_STREAM, after the state machines accepted it."""
    stream = conn.streams.get(stream_id)
    if stream is None:
        conn.end_stream(stream_id)  # raises NoSuchStreamError / StreamClosedError
        return b""
    conn.state_machine.process_input(ConnectionInputs.SEND_DATA)
    stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
    return _FRAME.pack(0, 0, DATA, END_STREAM, stream_id)
