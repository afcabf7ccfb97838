"""The router: the terminal filter. It asks the route table what to do, then does it.

Plan, then act (ztunnel's ``build_request``): the :class:`RouteResolver` is pure and returns a
``RouteDecision``; this filter only executes it: answer a redirect or a local reply, or rewrite the
head, pick an endpoint of the chosen backend and hand the request to an :class:`UpstreamExchange`.
"""

from __future__ import annotations

from typing import Protocol

from waypoint.l7.endpoints import EndpointPicker
from waypoint.l7.exchange import NO_HEALTHY_UPSTREAM, UpstreamExchange
from waypoint.l7.filter import CONTINUE, Filter, LocalReply, RequestContext, Result
from waypoint.l7.message import DATA, TRAILERS, HeaderList, RequestHead, apply_mutation
from waypoint.l7.mirror import MirrorExchange
from waypoint.l7.pool import UpstreamPool
from waypoint.l7.response_flags import NO_HEALTHY_UPSTREAM as UH
from waypoint.l7.response_flags import NO_ROUTE_FOUND, add_flag
from waypoint.l7.routing.decision import DecisionKind, RequestView, RouteDecision, ServiceRef
from waypoint.l7.upstream import UpstreamTarget, following

_FORWARD = DecisionKind.FORWARD


class RouteResolver(Protocol):
    """The route table's face (``waypoint.l7.routing``): pure, no I/O."""

    def resolve(self, view: RequestView) -> RouteDecision: ...


class DialledServiceResolver:
    """Default routing with no routes attached: forward to the service the client dialled.

    A request to a pod address (no dialled service) is forwarded to its original destination.
    Decisions are cached per service: they are immutable values.
    """

    def __init__(self) -> None:
        self._cache: dict[ServiceRef | None, RouteDecision] = {}

    def resolve(self, view: RequestView) -> RouteDecision:
        decision = self._cache.get(view.dialled)
        if decision is None:
            decision = RouteDecision(DecisionKind.FORWARD, backend=view.dialled, route_name="default")
            self._cache[view.dialled] = decision
        return decision


class Router(Filter):
    """Terminal filter; shared by every request (its per-request state is ``ctx.upstream``)."""

    name = "router"

    def __init__(
        self,
        resolver: RouteResolver,
        picker: EndpointPicker,
        pool: UpstreamPool,
        *,
        replay_limit: int = 64 * 1024,
        pending_limit: int = 64 * 1024,
    ) -> None:
        self.resolver = resolver
        self.picker = picker
        self.pool = pool
        self.replay_limit = replay_limit  # request bytes kept for retries and mirrors
        self.pending_limit = pending_limit  # request bytes held while connecting before pausing the client

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        decision = self.resolver.resolve(ctx.view())
        ctx.route = decision
        if decision.kind is not _FORWARD:
            if decision.status == 404 and not decision.route_name:  # no rule matched: Envoy's NR
                add_flag(ctx, NO_ROUTE_FOUND)
            return self._answer(decision)
        if decision.new_path is not None or decision.new_authority is not None or decision.request_headers:
            self._rewrite(head, decision)
        target = self._pick(ctx, decision.backend)
        if target is None:
            add_flag(ctx, UH)
            return LocalReply(503, NO_HEALTHY_UPSTREAM, details="no_healthy_upstream")
        exchange = ctx.upstream = UpstreamExchange(self, ctx, head, end_stream, target, decision)
        if decision.mirrors:
            exchange.mirrors = self._mirrors(ctx, head, end_stream, decision)
        exchange.start()
        return CONTINUE

    @staticmethod
    def _answer(decision: RouteDecision) -> LocalReply:
        """A redirect or a route's direct response."""
        if decision.kind is DecisionKind.REDIRECT:
            location = (decision.location or "").encode("latin-1")
            return LocalReply(decision.status, headers=((b"location", location),), details="redirect")
        return LocalReply(decision.status, decision.body, details="route_local_reply")

    def _mirrors(
        self, ctx: RequestContext, head: RequestHead, end_stream: bool, decision: RouteDecision
    ) -> list[MirrorExchange]:
        mirrors = []
        for service in decision.mirrors:
            mirror_target = self.picker.pick(service)
            if mirror_target is not None:
                self.picker.done(mirror_target)
                mirror_target = following(mirror_target, ctx.info.http2)
                mirrors.append(MirrorExchange(self, head, end_stream, mirror_target))
        return mirrors

    def on_request_data(self, ctx: RequestContext, chunk: bytes, end_stream: bool) -> Result:
        exchange = ctx.upstream
        if exchange is not None:
            exchange.send(DATA, chunk, end_stream)
        return CONTINUE

    def on_request_trailers(self, ctx: RequestContext, trailers: HeaderList) -> Result:
        exchange = ctx.upstream
        if exchange is not None:
            exchange.send(TRAILERS, trailers, True)
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        exchange = ctx.upstream
        if exchange is not None and not exchange.finished:
            exchange.abort()

    def repick(self, exchange: UpstreamExchange) -> UpstreamTarget | None:
        """The endpoint for a retry (may differ from the last, as Envoy's retry host selection)."""
        self.picker.done(exchange.target)
        return self._pick(exchange.ctx, exchange.decision.backend)

    def _pick(self, ctx: RequestContext, backend: ServiceRef | None) -> UpstreamTarget | None:
        if backend is not None:
            target = self.picker.pick(backend)
            if target is None:
                return None
            resolved = target.resolved  # ``following`` written out: an AUTO target takes the downstream's
            return target if resolved is None else resolved[ctx.info.http2]
        dest = ctx.info.destination
        return UpstreamTarget(dest[0], dest[1]) if dest is not None else None

    @staticmethod
    def _rewrite(head: RequestHead, decision: RouteDecision) -> None:
        if decision.new_path is not None:
            head.path = decision.new_path
        if decision.new_authority is not None:
            head.authority = decision.new_authority
        for mutation in decision.request_headers:
            apply_mutation(head.headers, mutation)
