"""The sans-I/O HTTP/2 session in memory: two sessions shuttle bytes; assertions on events and frames."""

from __future__ import annotations

import pytest

from waypoint.l7 import h2_session as hs
from waypoint.l7.h2_server import request_head


def pair(settings: hs.H2Settings | None = None) -> tuple[hs.H2Session, hs.H2Session]:
    client, server = hs.H2Session(True, settings), hs.H2Session(False, settings)
    shuttle(client, server)
    return client, server


def shuttle(a: hs.H2Session, b: hs.H2Session) -> tuple[list[hs.H2Event], list[hs.H2Event]]:
    """Exchange bytes until both are quiet; return (events at a, events at b)."""
    at_a: list[hs.H2Event] = []
    at_b: list[hs.H2Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return at_a, at_b
        at_b += b.receive_data(to_b) if to_b else []
        at_a += a.receive_data(to_a) if to_a else []


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.b"), (b":path", b"/x")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.b"), (b":path", b"/u")]


def test_request_response_with_trailers_round_trip() -> None:
    client, server = pair()
    sid = client.open_stream([*POST, (b"content-length", b"5")], end_stream=False)
    client.send_data(sid, b"hello")
    client.end_stream(sid)
    _, at_server = shuttle(client, server)
    assert [type(e) for e in at_server] == [hs.HeadersReceived, hs.DataReceived, hs.StreamEnded]
    assert bytes(at_server[1].data) == b"hello"  # type: ignore[union-attr]
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    server.send_data(sid, b"body")
    server.send_headers(sid, [(b"grpc-status", b"0")], True)
    at_client, _ = shuttle(client, server)
    kinds = [type(e) for e in at_client]
    assert kinds == [hs.HeadersReceived, hs.DataReceived, hs.TrailersReceived, hs.StreamEnded]
    assert at_client[2].headers == [(b"grpc-status", b"0")]  # type: ignore[union-attr]


def test_window_is_granted_back_only_when_consumed() -> None:
    settings = hs.H2Settings(stream_window=64 * 1024, connection_window=1024 * 1024)
    client, server = pair(settings)
    sid = client.open_stream(POST, end_stream=False)
    assert client.send_data(sid, b"x" * 100_000) == 64 * 1024  # the stream window, no more
    shuttle(client, server)
    assert client.send_window(sid) == 0  # nothing consumed: no WINDOW_UPDATE
    server.consumed(sid, 40 * 1024)  # past half a window: granted back
    at_client, _ = shuttle(client, server)
    assert any(isinstance(e, hs.WindowOpened) and e.stream_id == sid for e in at_client)
    assert client.send_window(sid) == 40 * 1024


def test_malformed_request_resets_its_stream_not_the_connection() -> None:
    """RFC 9113 §8.1.1: malformed is a stream error; the consumer never sees the request."""
    client, server = pair()
    sid = client.open_stream([(b":method", b"GET"), (b":path", b"/no-scheme")], end_stream=True)
    at_client, at_server = shuttle(client, server)
    assert at_server == []
    assert at_client == [hs.StreamReset(sid, 1)]
    assert not server.dead and not client.closing
    sid2 = client.open_stream(GET, end_stream=True)  # the connection still serves
    _, at_server = shuttle(client, server)
    assert at_server[0] == hs.HeadersReceived(sid2, GET, True)


def test_goaway_refuses_streams_above_last_and_marks_closing() -> None:
    client, server = pair()
    first = client.open_stream(GET, end_stream=True)
    shuttle(client, server)
    second = client.open_stream(GET, end_stream=True)
    server.close(0)  # announces last = first (second not yet seen)
    at_client, _ = shuttle(client, server)
    assert hs.ConnectionClosed(0, first) in at_client
    assert hs.StreamReset(second, 7) in at_client  # REFUSED_STREAM: safe to retry elsewhere
    assert client.closing


def test_connection_error_goaways() -> None:
    _, server = pair()
    events = server.receive_data(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE 0
    assert server.dead and isinstance(events[-1], hs.ConnectionClosed)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        (GET, True),
        ([*GET, (b"connection", b"keep-alive"), (b"te", b"trailers")], True),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], True),  # no authority
        ([(b":method", b"CONNECT"), (b":authority", b"a:1")], False),
        ([*GET, (b":path", b"/again")], False),
        ([(b"x", b"1"), *GET], False),  # pseudo-header after a regular one
        ([*GET, (b":protocol", b"websocket")], False),
    ],
)
def test_request_head_validation(headers: hs.RawHeaders, ok: bool) -> None:
    head = request_head(headers)
    assert (head is not None) is ok
    if head is not None:
        assert all(n not in (b"connection", b"te") for n, _ in head.headers)


def test_cookie_crumbs_are_joined_and_host_is_authority_fallback() -> None:
    head = request_head([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h:1"),
                         (b"cookie", b"a=1"), (b"cookie", b"b=2")])  # fmt: skip
    assert head is not None and head.authority == "h:1"
    assert (b"cookie", b"a=1; b=2") in head.headers


def test_body_shorter_than_content_length_resets_the_stream() -> None:
    client, server = pair()
    sid = client.open_stream([*POST, (b"content-length", b"10")], end_stream=False)
    client.send_data(sid, b"12345")
    client.end_stream(sid)  # 5 bytes of 10
    at_client, at_server = shuttle(client, server)
    assert [type(e) for e in at_server] == [hs.HeadersReceived, hs.DataReceived, hs.StreamReset]
    assert at_client == [hs.StreamReset(sid, 1)] and not server.dead
