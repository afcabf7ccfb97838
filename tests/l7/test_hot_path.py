"""Pieces reworked for speed keep their behaviour: request ids, header mutations, HTTP/1.1 heads,
an upstream pool that keeps as many idle connections as were needed at once, the chain's
precomputed callback lists, resolved AUTO targets, and upstream bodies whose last piece ends
the response."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import httptools
import pytest

from tests.support.wait import wait_for
from waypoint.l7.chain import FilterChain
from waypoint.l7.filter import CONTINUE, STOP, DownstreamInfo, Filter, RequestContext, Result
from waypoint.l7.filters import request_id
from waypoint.l7.filters.forwarded import Forwarded
from waypoint.l7.filters.request_id import Uuid4Source, format_uuid4, uuid4
from waypoint.l7.flow import RelayPeer
from waypoint.l7.h1_client import Http1Connection, encode_request_head
from waypoint.l7.message import (
    DATA,
    HEADERS,
    HeaderList,
    RequestHead,
    ResponseHead,
    apply_mutation,
    header_lines,
    set_header,
)
from waypoint.l7.pool import UpstreamPool
from waypoint.l7.routing.decision import HeaderMutation
from waypoint.l7.upstream import TcpConnector, UpstreamProtocol, UpstreamTarget, following


def test_request_ids_are_distinct_version_4_uuids_across_batches() -> None:
    source = Uuid4Source()
    ids = [source() for _ in range(600)] + [uuid4()]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
    assert format_uuid4(bytes(16)) == "00000000-0000-4000-8000-000000000000"


def test_mutations_apply_in_gateway_api_order_and_repeat_identically() -> None:
    mutation = HeaderMutation(set=(("X-Route", "a"),), add=(("X-Add", "1"),), remove=("X-Gone",))
    for _ in range(2):  # the second run uses the memoised encoding
        headers = [(b"x-route", b"old"), (b"x-gone", b"1"), (b"x-route", b"dup"), (b"keep", b"k")]
        apply_mutation(headers, mutation)
        assert headers == [(b"x-route", b"a"), (b"keep", b"k"), (b"x-add", b"1")]


def test_set_header_appends_when_absent_and_keeps_other_fields() -> None:
    headers = [(b"a", b"1")]
    set_header(headers, b"b", b"2")
    set_header(headers, b"a", b"3")
    assert headers == [(b"a", b"3"), (b"b", b"2")]


def test_http1_request_head_parses_back() -> None:
    head = RequestHead("POST", "/p?q=1", "svc:80", [(b"x-a", b"1"), (b"x-b", b"2")])
    seen: list[tuple[bytes, bytes]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name, value))

    for chunked, tail in ((True, (b"transfer-encoding", b"chunked")), (False, None)):
        seen.clear()
        raw = encode_request_head(head, chunked)
        assert raw.startswith(b"POST /p?q=1 HTTP/1.1\r\nhost: svc:80\r\n") and raw.endswith(b"\r\n\r\n")
        httptools.HttpRequestParser(Sink()).feed_data(raw + (b"0\r\n\r\n" if chunked else b""))
        assert seen == [(b"host", b"svc:80"), (b"x-a", b"1"), (b"x-b", b"2")] + ([tail] if tail else [])
    assert header_lines([]) == b""


async def test_pool_keeps_every_connection_a_burst_needed() -> None:
    """100 requests in flight at once (h2c downstream, 10 x 10) need 100 HTTP/1.1 upstream
    connections; all stay idle for the next burst instead of being closed and reopened (Envoy's
    HTTP/1 pool has no idle cap below its 1024-connection circuit breaker)."""
    accepted = 0

    def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(TcpConnector())
    target = UpstreamTarget("127.0.0.1", port)
    try:
        conns = await asyncio.gather(*(pool.connect(target) for _ in range(100)))
        for conn in conns:
            pool.release(conn)
        assert pool.idle_count(target) == 100
        again = [pool.take_idle(target) for _ in range(100)]
        assert all(c is not None and not c.closed for c in again) and pool.opened == 100
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


# ---- the chain calls only callbacks that do something, in Envoy's order ----
class _Log(Filter):
    """Records the callbacks it overrides; ``stop`` holds request headers until resumed."""

    def __init__(self, name: str, log: list[str], stop: bool = False) -> None:
        self.tag, self.log, self.stop = name, log, stop

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        self.log.append(f"{self.tag}:req")
        if self.stop:
            self.stop = False
            return STOP
        return CONTINUE


class _RespOnly(Filter):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        self.log.append("resp")
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        self.log.append("complete")


class _Sink:
    def __init__(self) -> None:
        self.out: list[object] = []

    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self.out.append((head.status, end_stream))

    def send_response_data(self, chunk: bytes, end_stream: bool) -> None:
        self.out.append((chunk, end_stream))

    def pause_request_body(self, reason: int) -> None:
        pass

    def resume_request_body(self, reason: int) -> None:
        pass


def test_chain_skips_pass_through_callbacks_and_keeps_order_across_a_stop() -> None:
    log: list[str] = []
    a, held, b = _Log("a", log), _Log("held", log, stop=True), _Log("b", log)
    router = _Log("router", log)
    chain = FilterChain([a, Filter(), held, _RespOnly(log), b], router)
    assert [i for i, _ in chain.decoders[HEADERS]] == [0, 2, 4, 5]  # the plain Filter (1) is skipped
    assert [i for i, _ in chain.encoders[HEADERS]] == [3]
    assert chain.decoders[DATA] == () and len(chain.completers) == 1
    sink = _Sink()
    ctx = RequestContext(DownstreamInfo(), RequestHead("GET", "/", "svc", []), 0.0)
    stream = chain.new_stream(ctx, sink)  # type: ignore[arg-type]
    stream.decode_headers(ctx.request, True)
    assert log == ["a:req", "held:req"]
    ctx.resume()  # continues after the filter that stopped, not from the start
    assert log == ["a:req", "held:req", "b:req", "router:req"]
    stream.encode_headers(ResponseHead(200, []), False)
    stream.encode_data(b"x", True)
    stream.complete()
    assert log[4:] == ["resp", "complete"] and sink.out == [(200, False), (b"x", True)]


def test_request_ids_are_the_text_format_uuid4_gives_for_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[bytes] = []

    def urandom(n: int) -> bytes:
        drawn.append(bytes(random.getrandbits(8) for _ in range(n)))
        return drawn[-1]

    monkeypatch.setattr(request_id, "os", SimpleNamespace(urandom=urandom))
    source = Uuid4Source()
    ids = [source() for _ in range(300)]  # crosses a batch boundary
    raw = b"".join(drawn)
    assert ids == [format_uuid4(raw[16 * i : 16 * i + 16]) for i in range(300)]


def test_auto_targets_resolve_to_one_object_per_protocol_and_keep_their_key() -> None:
    auto = UpstreamTarget("10.0.0.1", 80, None, UpstreamProtocol.AUTO, "spiffe://td/ns/a/sa/b")
    h2, h1 = following(auto, True), following(auto, False)
    assert h2 is following(auto, True) and h1 is following(auto, False)
    assert (h2.protocol, h1.protocol) == (UpstreamProtocol.HTTP2, UpstreamProtocol.HTTP1)
    assert h2.key == ("10.0.0.1", 80, UpstreamProtocol.HTTP2) and h2.identity == auto.identity
    plain = UpstreamTarget("10.0.0.1", 80)
    assert following(plain, True) is plain and plain == UpstreamTarget("10.0.0.1", 80)


def test_forwarded_for_uses_the_connection_peer_encoded_once() -> None:
    info = DownstreamInfo(peer_address=("10.1.2.3", 5))
    assert info.peer_ip == b"10.1.2.3" and DownstreamInfo().peer_ip is None
    assert replace(DownstreamInfo(), peer_address=("::1", 1)).peer_ip == b"::1"
    head = RequestHead("GET", "/", "svc", [(b"x-forwarded-for", b"1.1.1.1")])
    Forwarded().on_request_headers(RequestContext(info, head, 0.0), head, True)
    assert head.headers == [(b"x-forwarded-for", b"1.1.1.1,10.1.2.3"), (b"x-forwarded-proto", b"http")]


# ---- an upstream body's last piece carries the end of the response ----
class _Handler:
    """Records what an upstream connection hands the exchange."""

    downstream_writer = None

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_informational(self, head: ResponseHead) -> None:
        self.events.append(("1xx", head.status))

    def on_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self.events.append(("headers", head.status, end_stream))

    def on_response_data(self, chunk: bytes, end_stream: bool) -> None:
        self.events.append(("data", chunk, end_stream))

    def on_response_trailers(self, trailers: HeaderList) -> None:
        self.events.append(("trailers", trailers))

    def on_upgraded(self, head: ResponseHead, upstream: RelayPeer, rest: bytes) -> None:
        self.events.append(("upgraded",))

    def on_upstream_reset(self, before_headers: bool, reason: str) -> None:
        self.events.append(("reset", before_headers))

    def on_upstream_writable(self, writable: bool) -> None:
        pass


def _more_than(events: list[tuple[object, ...]], n: int) -> bool:
    return len(events) > n


async def _exchange(responses: list[bytes]) -> list[tuple[object, ...]]:
    """One GET to a loopback server that answers with ``responses`` as separate writes."""
    handler = _Handler()
    go = asyncio.Event()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i, piece in enumerate(responses):
            writer.write(piece)
            await writer.drain()
            if i < len(responses) - 1:
                await wait_for(partial(_more_than, handler.events, i + 1), what="the piece to be handed on")
        await go.wait()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.4.9", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: Http1Connection(("127.0.4.9", port)), "127.0.4.9", port
        )
        conn.send_request_head(handler, RequestHead("GET", "/", "svc", []), True)
        await wait_for(lambda: any(len(e) > 2 and e[2] is True for e in handler.events) or (
            handler.events and handler.events[-1][0] == "trailers"), what="the end of the response")
        assert conn.reusable
        conn.close()
    finally:
        go.set()
        server.close()
        await server.wait_closed()
    return handler.events


async def test_a_body_read_whole_is_one_event_that_ends_the_response() -> None:
    events = await _exchange([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"])
    assert events == [("headers", 200, False), ("data", b"hello", True)]


async def test_a_body_in_pieces_passes_each_on_at_once_and_ends_with_the_last() -> None:
    events = await _exchange([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo"])
    assert events == [("headers", 200, False), ("data", b"hel", False), ("data", b"lo", True)]


async def test_a_chunked_body_with_trailers_ends_with_the_trailers() -> None:
    events = await _exchange(
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n"]
    )
    assert events == [
        ("headers", 200, False), ("data", b"abc", False), ("data", b"de", False), ("trailers", [(b"x-t", b"1")])
    ]


def test_request_head_bytes_round_trip_through_latin_1() -> None:
    """A raw byte >= 0x80 in the target (decoded as latin-1 by both codecs) reaches upstream unchanged."""
    from waypoint.l7.h1_client import encode_request_head
    from waypoint.l7.message import RequestHead

    raw_path = b"/caf\xe9?q=\xff"
    head = RequestHead("GET", raw_path.decode("latin-1"), "echo:80", [])
    encoded = encode_request_head(head, chunked=False)
    assert encoded.startswith(b"GET /caf\xe9?q=\xff HTTP/1.1\r\nhost: echo:80\r\n")
