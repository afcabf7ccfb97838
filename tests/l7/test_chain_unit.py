"""The chain runner in memory: no sockets, a recording sink, a scripted terminal filter."""

from __future__ import annotations

import random
from typing import Any

from waypoint.l7.chain import FilterChain, Stream, render_local_reply
from waypoint.l7.endpoints import LeastRequestPicker, RoundRobinPicker
from waypoint.l7.filter import CONTINUE, STOP, DownstreamInfo, Filter, LocalReply, RequestContext, Result
from waypoint.l7.flow import CorkedWriter, RelayPeer
from waypoint.l7.message import HeaderList, RequestHead, ResponseHead
from waypoint.l7.mirror import shadow_host
from waypoint.l7.routing.decision import ServiceRef
from waypoint.l7.upstream import UpstreamTarget


class Sink:
    def __init__(self) -> None:
        self.out: list[tuple[Any, ...]] = []
        self.paused = 0

    def send_informational(self, head: ResponseHead) -> None:
        self.out.append(("1xx", head.status))

    def send_response_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self.out.append(("headers", head.status, end_stream))

    def send_response_data(self, chunk: bytes, end_stream: bool) -> None:
        self.out.append(("data", chunk, end_stream))

    def send_response_trailers(self, trailers: HeaderList) -> None:
        self.out.append(("trailers", trailers))

    def reset(self) -> None:
        self.out.append(("reset",))

    def pause_request_body(self, reason: int) -> None:
        self.paused |= reason

    def resume_request_body(self, reason: int) -> None:
        self.paused &= ~reason

    def flush_later(self, writer: CorkedWriter) -> None:
        pass

    def start_relay(self, upstream: RelayPeer) -> RelayPeer:
        return upstream


class Terminal(Filter):
    """Records what reached the router position."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        self.got.append(("headers", head.path))
        return CONTINUE

    def on_request_data(self, ctx: RequestContext, chunk: bytes, end_stream: bool) -> Result:
        self.got.append(("data", chunk))
        return CONTINUE


class Stopper(Filter):
    def __init__(self, request: bool = True, response: bool = False) -> None:
        self.request, self.response = request, response

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        return STOP if self.request else CONTINUE

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        return STOP if self.response else CONTINUE


class ReplaceResponse(Filter):
    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        return LocalReply(502, b"bad gateway") if head.status == 500 else CONTINUE


def make(filters: list[Filter], headers: HeaderList | None = None) -> tuple[Stream, Sink, Terminal]:
    term = Terminal()
    sink = Sink()
    ctx = RequestContext(DownstreamInfo(), RequestHead("POST", "/p", "a", headers or []), 0.0)
    return FilterChain(filters, term).new_stream(ctx, sink), sink, term


def test_stop_holds_later_events_in_order_until_resume() -> None:
    stream, sink, term = make([Stopper()])
    stream.decode_headers(stream.ctx.request, False)
    stream.decode_data(b"a", False)
    stream.decode_data(b"b", True)
    assert term.got == [] and sink.paused  # held, and the client is paused
    stream.ctx.resume()
    assert term.got == [("headers", "/p"), ("data", b"a"), ("data", b"b")]
    assert not sink.paused


def test_response_stop_then_resume() -> None:
    stream, sink, _ = make([Stopper(request=False, response=True)])
    stream.decode_headers(stream.ctx.request, True)
    stream.encode_headers(ResponseHead(200, []), False)
    stream.encode_data(b"x", True)
    assert sink.out == []
    stream.resume()
    assert sink.out == [("headers", 200, False), ("data", b"x", True)]


def test_local_reply_after_stop_skips_the_rest() -> None:
    stream, sink, term = make([Stopper()])
    stream.decode_headers(stream.ctx.request, False)
    stream.ctx.send_local_reply(LocalReply(403, b"no"))
    stream.decode_data(b"late", True)
    assert term.got == []
    assert sink.out == [("headers", 403, False), ("data", b"no", True)]


def test_response_filter_can_replace_a_response_before_it_starts() -> None:
    stream, sink, _ = make([ReplaceResponse()])
    stream.decode_headers(stream.ctx.request, True)
    stream.encode_headers(ResponseHead(500, []), False)
    stream.encode_data(b"ignored", True)  # the upstream's body is dropped
    assert sink.out == [("headers", 502, False), ("data", b"bad gateway", True)]


def test_local_reply_after_response_started_resets() -> None:
    stream, sink, _ = make([])
    stream.decode_headers(stream.ctx.request, True)
    stream.encode_headers(ResponseHead(200, []), False)
    stream.reply_from_router(LocalReply(504, b"upstream request timeout"))
    assert sink.out[-1] == ("reset",) and stream.done


def test_grpc_local_reply_is_trailers_only() -> None:
    head, body = render_local_reply(LocalReply(503, b"no healthy upstream"), grpc=True)
    assert (head.status, body) == (200, b"")
    assert (b"grpc-status", b"14") in head.headers and (b"grpc-message", b"no healthy upstream") in head.headers


def test_pickers() -> None:
    svc = ServiceRef("ns", "s", 80)
    eps = [UpstreamTarget("10.0.0.1", 80), UpstreamTarget("10.0.0.2", 80)]
    rr = RoundRobinPicker(lambda s: eps)
    assert [rr.pick(svc) for _ in range(3)] == [eps[0], eps[1], eps[0]]
    lr = LeastRequestPicker(lambda s: eps, random.Random(1))
    first = lr.pick(svc)
    second = lr.pick(svc)
    assert first is not None and second is not None and first != second  # the busy one loses
    lr.done(first)
    assert lr.active(first) == 0 and lr.active(second) == 1
    assert RoundRobinPicker(lambda s: []).pick(svc) is None


def test_shadow_host() -> None:
    assert shadow_host("foo.ns:8080") == "foo.ns-shadow:8080"
    assert shadow_host("foo") == "foo-shadow"
    assert shadow_host("[::1]:80") == "[::1]-shadow:80"
