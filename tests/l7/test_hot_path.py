"""Pieces reworked for speed keep their behaviour: request ids, header mutations, HTTP/1.1 heads,
and an upstream pool that keeps as many idle connections as were needed at once."""

from __future__ import annotations

import asyncio
import uuid

import httptools

from waypoint.l7.filters.request_id import Uuid4Source, format_uuid4, uuid4
from waypoint.l7.h1_client import encode_request_head
from waypoint.l7.message import RequestHead, apply_mutation, header_lines, set_header
from waypoint.l7.pool import UpstreamPool
from waypoint.l7.routing.decision import HeaderMutation
from waypoint.l7.upstream import TcpConnector, UpstreamTarget


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
