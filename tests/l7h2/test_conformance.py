"""RFC 9113 conformance of our HTTP/2 session: which protocol errors are stream errors (RST_STREAM,
the connection goes on) and which are connection errors (GOAWAY, the session is dead).

Frames are written byte by byte here (``raw``), header blocks by the independent ``hpack``
encoder, and what the session answers is parsed by hyperframe. Section numbers are RFC 9113's
unless marked RFC 7541 (HPACK).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import hpack
import pytest
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from waypoint.l7 import h2_session as hs

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
ES, EH, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
OK = [(b":status", b"200")]


def raw(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, ftype, flags, sid) + payload


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hpack.Encoder().encode(fields))


def headers(sid: int, fields: list[tuple[bytes, bytes]], flags: int = ES | EH) -> bytes:
    return raw(HEADERS, flags, sid, block(fields))


def setting(key: int, value: int) -> bytes:
    return raw(SETTINGS, 0, 0, struct.pack(">HL", key, value))


def frames(data: bytes) -> list[Frame]:
    out, pos = [], 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        out.append(frame)
        pos += 9 + length
    return out


def server(settings: hs.H2Settings | None = None) -> hs.H2Session:
    """A server session past the handshake: the client's preface and empty SETTINGS fed."""
    s = hs.H2Session(False, settings)
    assert s.receive_data(PREFACE + raw(SETTINGS, 0, 0)) == []
    s.data_to_send()
    return s


def client() -> hs.H2Session:
    c = hs.H2Session(True)
    c.receive_data(raw(SETTINGS, 0, 0))
    c.data_to_send()
    return c


@dataclass
class Outcome:
    events: list[hs.H2Event]
    sent: list[Frame]

    def resets(self) -> list[tuple[int, int]]:
        return [(f.stream_id, f.error_code) for f in self.sent if isinstance(f, RstStreamFrame)]

    def goaway(self) -> int | None:
        codes = [f.error_code for f in self.sent if isinstance(f, GoAwayFrame)]
        return codes[0] if codes else None


def feed(session: hs.H2Session, data: bytes) -> Outcome:
    events = session.receive_data(data)
    return Outcome(events, frames(session.data_to_send()))


# ---- the table: (why, bytes after the handshake, ("stream", sid, code) or ("connection", code)) ----
PROTOCOL_ERROR, FLOW, STREAM_CLOSED, FRAME_SIZE, REFUSED, COMPRESSION, CALM = 1, 3, 5, 6, 7, 9, 11
SERVER_CASES: list[tuple[str, bytes, tuple[object, ...]]] = [
    # malformed requests (§8.1.1): stream errors
    ("8.2.1 upper-case field name", headers(1, [*GET, (b"X-Up", b"1")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.1 space in a field name", headers(1, [*GET, (b"x y", b"1")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.1 colon in a regular name", headers(1, [*GET, (b"x:y", b"1")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.1 CR LF in a value", headers(1, [*GET, (b"x", b"a\r\nb: c")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.1 NUL in a value", headers(1, [*GET, (b"x", b"a\x00")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.1 whitespace around a value", headers(1, [*GET, (b"x", b" a")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.2 connection header", headers(1, [*GET, (b"connection", b"close")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.2 transfer-encoding", headers(1, [*GET, (b"transfer-encoding", b"chunked")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.2.2 te other than trailers", headers(1, [*GET, (b"te", b"gzip")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3 pseudo after regular", headers(1, [(b"x", b"1"), *GET]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3 repeated pseudo", headers(1, [*GET, (b":path", b"/2")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3 unknown pseudo", headers(1, [*GET, (b":foo", b"1")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3 response pseudo in a request", headers(1, [*GET, (b":status", b"200")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3.1 no :path", headers(1, GET[:3]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.3.1 empty :path", headers(1, [*GET[:3], (b":path", b"")]), ("stream", 1, PROTOCOL_ERROR)),
    ("RFC 8441 :protocol not advertised", headers(1, [*GET, (b":protocol", b"ws")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.1.1 content-length on an empty request", headers(1, [*POST, (b"content-length", b"3")]),
     ("stream", 1, PROTOCOL_ERROR)),
    ("8.1.1 bad content-length", headers(1, [*POST, (b"content-length", b"1x")]), ("stream", 1, PROTOCOL_ERROR)),
    ("8.1.1 body longer than content-length",
     headers(1, [*POST, (b"content-length", b"2")], EH) + raw(DATA, ES, 1, b"hello"), ("stream", 1, PROTOCOL_ERROR)),
    ("8.1 trailers without END_STREAM", headers(1, POST, EH) + headers(1, [(b"x", b"1")], EH),
     ("stream", 1, PROTOCOL_ERROR)),
    ("8.1 pseudo-header in trailers", headers(1, POST, EH) + headers(1, [(b":path", b"/")]),
     ("stream", 1, PROTOCOL_ERROR)),
    ("5.3.1 HEADERS depends on itself", raw(HEADERS, ES | EH | PRIO, 1, b"\x00\x00\x00\x01\x10" + block(GET)),
     ("stream", 1, PROTOCOL_ERROR)),
    ("6.3 PRIORITY depends on itself", headers(3, POST, EH) + raw(PRIORITY, 0, 3, b"\x00\x00\x00\x03\x10"),
     ("stream", 3, PROTOCOL_ERROR)),
    ("6.3 PRIORITY of 4 octets", headers(3, POST, EH) + raw(PRIORITY, 0, 3, b"\x00\x00\x00\x01"),
     ("stream", 3, FRAME_SIZE)),
    ("5.1 DATA after END_STREAM", headers(1, POST, EH) + raw(DATA, ES, 1, b"a") + raw(DATA, 0, 1, b"b"),
     ("stream", 1, STREAM_CLOSED)),
    ("6.9 WINDOW_UPDATE of 0 on a stream", headers(1, POST, EH) + raw(WINDOW, 0, 1, b"\x00" * 4),
     ("stream", 1, PROTOCOL_ERROR)),
    ("6.9.1 stream window overflow", headers(1, POST, EH) + raw(WINDOW, 0, 1, struct.pack(">L", 0x7FFFFFFF)),
     ("stream", 1, FLOW)),
    # connection errors (§5.4.1)
    ("5.1 DATA on an idle stream", raw(DATA, 0, 3, b"x"), ("connection", PROTOCOL_ERROR)),
    ("6.1 DATA on stream 0", raw(DATA, 0, 0, b"x"), ("connection", PROTOCOL_ERROR)),
    ("5.1.1 HEADERS on a server stream id", headers(2, GET), ("connection", PROTOCOL_ERROR)),
    ("5.1 HEADERS on a half-closed (remote) stream", headers(1, GET) + headers(1, GET), ("stream", 1, STREAM_CLOSED)),
    ("5.1 RST_STREAM on an idle stream", raw(RST, 0, 5, b"\x00" * 4), ("connection", PROTOCOL_ERROR)),
    ("5.1 WINDOW_UPDATE on an idle stream", raw(WINDOW, 0, 5, b"\x00\x00\x00\x01"), ("connection", PROTOCOL_ERROR)),
    ("6.2 padding beyond HEADERS", raw(HEADERS, EH | PADDED, 1, b"\x40" + block(GET)), ("connection", PROTOCOL_ERROR)),
    ("6.1 padding beyond DATA", headers(1, POST, EH) + raw(DATA, PADDED, 1, b"\x05abc"),
     ("connection", PROTOCOL_ERROR)),
    ("6.10 CONTINUATION without HEADERS", raw(CONT, EH, 1, block(GET)), ("connection", PROTOCOL_ERROR)),
    ("6.10 block interrupted by DATA", raw(HEADERS, 0, 1, block(POST)) + raw(DATA, 0, 1, b"x"),
     ("connection", PROTOCOL_ERROR)),
    ("6.10 CONTINUATION on another stream", raw(HEADERS, 0, 1, block(GET)) + raw(CONT, EH, 3, b""),
     ("connection", PROTOCOL_ERROR)),
    ("10.5 CONTINUATION flood", raw(HEADERS, 0, 1, block(GET)) + raw(CONT, 0, 1, b"\x00" * 40000) * 3,
     ("connection", CALM)),
    ("8.4 PUSH_PROMISE to a server", raw(PUSH, EH, 1, b"\x00\x00\x00\x02"), ("connection", PROTOCOL_ERROR)),
    ("4.2 frame above MAX_FRAME_SIZE", raw(0xFA, 0, 0, b"\x00" * (64 * 1024 + 1)), ("connection", FRAME_SIZE)),
    ("6.9 WINDOW_UPDATE of 0 on the connection", raw(WINDOW, 0, 0, b"\x00" * 4), ("connection", PROTOCOL_ERROR)),
    ("6.9.1 connection window overflow", raw(WINDOW, 0, 0, struct.pack(">L", 0x7FFFFFFF)), ("connection", FLOW)),
    ("6.9 WINDOW_UPDATE of 3 octets", raw(WINDOW, 0, 0, b"\x00\x00\x01"), ("connection", FRAME_SIZE)),
    ("6.5 SETTINGS on a stream", raw(SETTINGS, 0, 1), ("connection", PROTOCOL_ERROR)),
    ("6.5 SETTINGS of 5 octets", raw(SETTINGS, 0, 0, b"\x00" * 5), ("connection", FRAME_SIZE)),
    ("6.5 SETTINGS ACK with a payload", raw(SETTINGS, 1, 0, b"\x00" * 6), ("connection", FRAME_SIZE)),
    ("6.5.2 INITIAL_WINDOW_SIZE above 2^31-1", setting(4, 1 << 31), ("connection", FLOW)),
    ("6.5.2 MAX_FRAME_SIZE below 16384", setting(5, 100), ("connection", PROTOCOL_ERROR)),
    ("6.5.2 ENABLE_PUSH of 2", setting(2, 2), ("connection", PROTOCOL_ERROR)),
    ("6.7 PING on a stream", raw(PING, 0, 1, b"\x00" * 8), ("connection", PROTOCOL_ERROR)),
    ("6.7 PING of 7 octets", raw(PING, 0, 0, b"\x00" * 7), ("connection", FRAME_SIZE)),
    ("6.4 RST_STREAM on stream 0", raw(RST, 0, 0, b"\x00" * 4), ("connection", PROTOCOL_ERROR)),
    ("6.4 RST_STREAM of 3 octets", headers(1, POST, EH) + raw(RST, 0, 1, b"\x00" * 3), ("connection", FRAME_SIZE)),
    ("6.8 GOAWAY on a stream", raw(GOAWAY, 0, 1, b"\x00" * 8), ("connection", PROTOCOL_ERROR)),
    ("6.4 invalid PRIORITY on an idle stream", raw(PRIORITY, 0, 3, b"\x00\x00\x00\x01"), ("connection", FRAME_SIZE)),
    ("5.1 PRIORITY on an idle stream is fine, then HEADERS", raw(PRIORITY, 0, 7, b"\x00\x00\x00\x01\x10")
     + headers(7, [(b"x", b"1"), *GET]), ("stream", 7, PROTOCOL_ERROR)),
    ("6.3 PRIORITY on stream 0", raw(PRIORITY, 0, 0, b"\x00" * 5), ("connection", PROTOCOL_ERROR)),
    ("RFC 7541 2.3.3 index out of range", raw(HEADERS, ES | EH, 1, b"\xff\x10"), ("connection", COMPRESSION)),
    ("RFC 7541 6.3 table size above our limit", raw(HEADERS, ES | EH, 1, b"\x3f\xe1\x3f" + block(GET)),
     ("connection", COMPRESSION)),
    ("RFC 7541 4.2 size update after a field", raw(HEADERS, ES | EH, 1, b"\x82\x20"), ("connection", COMPRESSION)),
    ("RFC 7541 5.2 string past the block", raw(HEADERS, ES | EH, 1, b"\x00\x05ab"), ("connection", COMPRESSION)),
]  # fmt: skip


@pytest.mark.parametrize(("why", "data", "expect"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_side_errors(why: str, data: bytes, expect: tuple[object, ...]) -> None:
    s = server()
    out = feed(s, data)
    if expect[0] == "stream":
        _, sid, code = expect
        assert out.resets() == [(sid, code)] and out.goaway() is None and not s.dead, out.sent
        after = feed(s, headers(101, GET))  # the connection still serves
        assert after.events[0] == hs.HeadersReceived(101, GET, True)
    else:
        assert out.goaway() == expect[1] and s.dead, out.sent
        assert isinstance(out.events[-1], hs.ConnectionClosed) and out.events[-1].code == expect[1]
        assert s.receive_data(headers(101, GET)) == []


def test_malformed_requests_never_reach_the_consumer() -> None:
    for why, data, _ in SERVER_CASES:
        if why.startswith(("8.2", "8.3", "RFC 8441")):
            assert not any(isinstance(e, hs.HeadersReceived) for e in server().receive_data(data)), why


def test_body_longer_than_content_length_is_not_delivered() -> None:
    """A body past content-length would smuggle a second request onto an HTTP/1.1 upstream."""
    s = server()
    out = feed(s, headers(1, [*POST, (b"content-length", b"2")], EH) + raw(DATA, ES, 1, b"hello"))
    assert [type(e) for e in out.events] == [hs.HeadersReceived, hs.StreamReset]


# ---- client side: responses ----
def open_request(c: hs.H2Session, head: list[tuple[bytes, bytes]] = GET) -> int:
    sid = c.open_stream(head, end_stream=True)
    c.data_to_send()
    return sid


CLIENT_CASES: list[tuple[str, Callable[[int], bytes], tuple[object, ...]]] = [
    ("8.3.2 no :status", lambda sid: headers(sid, [(b"x", b"1")]), ("stream", PROTOCOL_ERROR)),
    ("8.3.2 :status not 3 digits", lambda sid: headers(sid, [(b":status", b"20")]), ("stream", PROTOCOL_ERROR)),
    ("8.6 101 is not HTTP/2", lambda sid: headers(sid, [(b":status", b"101")]), ("stream", PROTOCOL_ERROR)),
    ("8.1 1xx with END_STREAM", lambda sid: headers(sid, [(b":status", b"103")]), ("stream", PROTOCOL_ERROR)),
    ("8.3 request pseudo in a response", lambda sid: headers(sid, [*OK, (b":path", b"/")]), ("stream", PROTOCOL_ERROR)),
    ("8.1 DATA before the response head", lambda sid: raw(DATA, ES, sid, b"x"), ("stream", PROTOCOL_ERROR)),
    ("8.1.1 short body", lambda sid: headers(sid, [*OK, (b"content-length", b"9")], EH) + raw(DATA, ES, sid, b"x"),
     ("stream", PROTOCOL_ERROR)),
    ("8.4 HEADERS on a server stream id", lambda sid: headers(2, OK), ("connection", PROTOCOL_ERROR)),
    ("8.4 PUSH_PROMISE", lambda sid: raw(PUSH, EH, sid, b"\x00\x00\x00\x02" + block(GET)),
     ("connection", PROTOCOL_ERROR)),
    ("6.5.2 ENABLE_PUSH 1 from a server", lambda sid: setting(2, 1), ("connection", PROTOCOL_ERROR)),
    ("5.1 HEADERS on a stream never opened", lambda sid: headers(sid + 2, OK), ("connection", PROTOCOL_ERROR)),
]  # fmt: skip


@pytest.mark.parametrize(("why", "make", "expect"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_side_errors(why: str, make: Callable[[int], bytes], expect: tuple[object, ...]) -> None:
    c = client()
    sid = open_request(c)
    out = feed(c, make(sid))
    if expect[0] == "stream":
        assert out.resets() == [(sid, expect[1])] and not c.dead, out.sent
        assert hs.StreamReset(sid, int(expect[1])) in out.events  # type: ignore[call-overload]
        if "body" not in why:  # a short body shows only at its end, after the head and data went up
            assert not any(isinstance(e, (hs.HeadersReceived, hs.DataReceived)) for e in out.events)
    else:
        assert out.goaway() == expect[1] and c.dead, out.sent


def test_head_response_and_304_carry_content_length_without_a_body() -> None:
    c = client()
    sid = open_request(c, [(b":method", b"HEAD"), *GET[1:]])
    assert feed(c, headers(sid, [*OK, (b"content-length", b"10")])).events[-1] == hs.StreamEnded(sid)
    sid = open_request(c)
    out = feed(c, headers(sid, [(b":status", b"304"), (b"content-length", b"10")]))
    assert out.events[-1] == hs.StreamEnded(sid) and not out.resets()


def test_informational_then_final_response() -> None:
    c = client()
    sid = open_request(c)
    out = feed(c, headers(sid, [(b":status", b"100")], EH) + headers(sid, OK))
    assert [type(e) for e in out.events] == [hs.InformationalReceived, hs.HeadersReceived, hs.StreamEnded]


# ---- state and flow control that is not an error ----
def test_settings_are_acknowledged_and_ping_answered() -> None:
    s = server()
    out = feed(
        s, raw(SETTINGS, 0, 0, struct.pack(">HL", 3, 7)) + raw(PING, 0, 0, b"12345678") + raw(PING, 1, 0, b"x" * 8)
    )
    assert out.events == [hs.PeerSettings(7)]
    assert isinstance(out.sent[0], SettingsFrame) and "ACK" in out.sent[0].flags and not out.sent[0].settings
    assert isinstance(out.sent[1], PingFrame) and "ACK" in out.sent[1].flags and out.sent[1].opaque_data == b"12345678"
    assert len(out.sent) == 2  # a PING ACK is not answered


def test_initial_window_change_moves_open_streams_windows_even_below_zero() -> None:
    """§6.9.2: the delta applies to every open stream; a window may go negative."""
    s = server()
    feed(s, headers(1, POST, EH))
    assert s.send_window(1) == 65535
    s.send_headers(1, OK, False)
    assert s.send_data(1, b"x" * 1000) == 1000
    out = feed(s, setting(4, 100))
    assert s.send_window(1) == 100 - 1000 < 0 and not out.events  # shrunk: nothing opened
    assert s.send_data(1, b"y") == 0
    out = feed(s, setting(4, 5000))
    assert out.events == [hs.WindowOpened(0)] and s.send_window(1) == 4000


def test_peer_max_concurrent_streams_limits_open_stream() -> None:
    c = client()
    feed(c, setting(3, 1))
    open_request(c)
    with pytest.raises(hs.H2ProtocolError):
        c.open_stream(GET, end_stream=True)


def test_our_max_concurrent_streams_refuses_the_next_stream() -> None:
    s = server(hs.H2Settings(max_concurrent_streams=2))
    out = feed(s, headers(1, POST, EH) + headers(3, POST, EH) + headers(5, POST, EH))
    assert out.resets() == [(5, REFUSED)]  # §5.1.2: the client may retry it
    assert [e.stream_id for e in out.events if isinstance(e, hs.HeadersReceived)] == [1, 3]


def test_after_our_goaway_new_streams_are_refused() -> None:
    s = server()
    feed(s, headers(1, GET))
    s.close(0)
    assert frames(s.data_to_send())[0].last_stream_id == 1  # type: ignore[attr-defined]
    out = feed(s, headers(3, GET))
    assert out.resets() == [(3, REFUSED)] and not out.events


def test_frames_in_flight_after_our_reset_are_dropped_quietly() -> None:
    s = server()
    feed(s, headers(1, POST, EH))
    s.reset(1, 8)
    assert [(f.stream_id, f.error_code) for f in frames(s.data_to_send())] == [(1, 8)]  # type: ignore[attr-defined]
    out = feed(
        s, raw(DATA, 0, 1, b"x" * 100) + headers(1, [(b"grpc-status", b"0")]) + raw(WINDOW, 0, 1, b"\x00\x00\x00\x01")
    )
    assert out.events == [] and out.sent == [] and not s.dead


def test_peer_reset_is_reported_and_the_stream_forgotten() -> None:
    s = server()
    feed(s, headers(1, POST, EH))
    out = feed(s, raw(RST, 0, 1, struct.pack(">L", 8)))
    assert out.events == [hs.StreamReset(1, 8)] and s.open_streams == 0
    assert feed(s, raw(RST, 0, 1, struct.pack(">L", 8))).sent == []  # closed: ignored, no reply (§5.4.2)


def test_unknown_frame_types_are_ignored() -> None:
    s = server()
    out = feed(s, raw(0xFA, 0xFF, 1, b"whatever") + headers(1, GET))
    assert out.events[0] == hs.HeadersReceived(1, GET, True) and not out.sent


def test_data_beyond_the_stream_window_is_a_stream_error_and_its_octets_are_credited() -> None:
    s = server(hs.H2Settings(stream_window=16384, connection_window=65535))
    out = feed(s, headers(1, POST, EH) + raw(DATA, 0, 1, b"x" * 16385))
    assert out.resets() == [(1, FLOW)] and not s.dead
    feed(s, headers(3, POST, EH) + raw(DATA, 0, 3, b"y" * 16384))
    s.consumed(3, 16384)  # with the reset stream's 16385: past half the connection window
    updates = [(f.stream_id, f.window_increment) for f in frames(s.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert (0, 16385 + 16384) in updates


def test_headers_on_a_stream_closed_both_ways_is_a_connection_error() -> None:
    """§5.1 "closed": frames after END_STREAM was received and sent."""
    s = server()
    feed(s, headers(1, GET))
    s.send_headers(1, OK, True)
    s.data_to_send()
    assert feed(s, headers(1, GET)).goaway() == STREAM_CLOSED and s.dead


def test_data_beyond_the_connection_window_is_a_connection_error() -> None:
    s = server(hs.H2Settings(stream_window=65535, connection_window=65535))
    assert feed(s, headers(1, POST, EH) + raw(DATA, 0, 1, b"x" * 40000)).sent == []
    assert feed(s, headers(3, POST, EH) + raw(DATA, 0, 3, b"x" * 40000)).goaway() == FLOW


def test_padding_is_stripped_and_credited() -> None:
    s = server()
    out = feed(s, raw(HEADERS, EH | PADDED, 1, b"\x03" + block(POST) + b"\x00" * 3)
               + raw(DATA, ES | PADDED, 1, b"\x04abc" + b"\x00" * 4))  # fmt: skip
    assert [type(e) for e in out.events] == [hs.HeadersReceived, hs.DataReceived, hs.StreamEnded]
    assert bytes(out.events[1].data) == b"abc"  # type: ignore[union-attr]


def test_preface_and_first_settings_are_required() -> None:
    s = hs.H2Session(False)
    s.data_to_send()
    assert feed(s, b"GET / HTTP/1.1\r\n\r\n").goaway() == PROTOCOL_ERROR and s.dead
    s = hs.H2Session(False)
    assert s.receive_data(PREFACE[:10]) == [] and not s.dead  # split preface is fine
    s.data_to_send()
    assert feed(s, PREFACE[10:] + raw(PING, 0, 0, b"\x00" * 8)).goaway() == PROTOCOL_ERROR


def test_repeated_blocks_hit_the_cache_and_table_changes_invalidate_it() -> None:
    """An indexing encoder sends the same bytes for the same head; a changed table means new bytes."""
    s = server()
    enc = hpack.Encoder()
    first = bytes(enc.encode([*GET, (b"x-a", b"1")]))  # inserts into the dynamic table
    again = bytes(enc.encode([*GET, (b"x-a", b"1")]))  # references only
    assert first != again
    out = feed(s, raw(HEADERS, ES | EH, 1, first) + raw(HEADERS, ES | EH, 3, again) + raw(HEADERS, ES | EH, 5, again))
    heads = [e for e in out.events if isinstance(e, hs.HeadersReceived)]
    assert [h.headers for h in heads] == [[*GET, (b"x-a", b"1")]] * 3
    third = bytes(enc.encode([*GET, (b"x-a", b"2")]))  # new entry: the old bytes' indexes move
    out = feed(s, raw(HEADERS, ES | EH, 7, third) + raw(HEADERS, ES | EH, 9, again))
    heads = [e for e in out.events if isinstance(e, hs.HeadersReceived)]
    assert [h.headers for h in heads] == [[*GET, (b"x-a", b"2")]]
    # decoded afresh, the old bytes now put x-a before :path: malformed. A stale cache hit would pass.
    assert out.resets() == [(9, PROTOCOL_ERROR)]


def test_mutated_input_never_raises_and_errors_are_goaways_or_resets() -> None:
    """Any byte string is either served, answered with RST_STREAM, or ends in GOAWAY: no exception."""
    import random

    rng = random.Random(9113)
    valid = (
        headers(1, [*POST, (b"content-length", b"3")], EH)
        + raw(DATA, PADDED, 1, b"\x01ab\x00")
        + raw(WINDOW, 0, 1, b"\x00\x00\x00\x05")
        + raw(DATA, ES, 1, b"c")
        + raw(HEADERS, 0, 3, block(GET)[:3])
        + raw(CONT, EH | ES, 3, block(GET)[3:])
        + setting(4, 1000)
        + raw(PING, 0, 0, b"p" * 8)
        + raw(RST, 0, 3, b"\x00\x00\x00\x08")
    )
    for _ in range(400):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        s = server()
        cut = rng.randrange(len(data))
        events = s.receive_data(bytes(data[:cut])) + s.receive_data(bytes(data[cut:]))
        sent = frames(s.data_to_send())
        if s.dead:
            assert isinstance(events[-1], hs.ConnectionClosed)
            assert isinstance(sent[-1], GoAwayFrame)


def test_random_frames_never_raise_on_either_side() -> None:
    import random

    rng = random.Random(7541)
    for _ in range(300):
        data = b"".join(
            raw(
                rng.randrange(11),
                rng.randrange(256),
                rng.choice((0, 1, 2, 3)),
                rng.randbytes(rng.choice((0, 4, 5, 8, 9))),
            )
            for _ in range(rng.randint(1, 6))
        )
        c = client()
        open_request(c)
        for session in (server(), c):
            events = session.receive_data(data)
            assert not session.dead or isinstance(events[-1], hs.ConnectionClosed)
            frames(session.data_to_send())  # what it sends parses
