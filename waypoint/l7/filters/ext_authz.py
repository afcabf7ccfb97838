"""The waypoint's ext_authz filter: ``CUSTOM`` AuthorizationPolicy, asked of an external provider.

Istio puts it first among the waypoint's auth filters (facts §3.1, ``buildWaypointHTTPFilters``:
ext_authz, then jwt_authn, then RBAC), enabled per request only when a CUSTOM policy's rules match
(a shadow RBAC filter marks the request; ``IS:pilot/pkg/security/authz/builder/extauthz.go``
``generateFilterMatcher``). Here the engine says which providers to ask
(:meth:`WaypointAuthorizer.custom_check`, sans-I/O); a request matching none costs that one check,
and a request to a service without CUSTOM policies one set lookup.

When providers are to be asked the filter returns ``STOP`` (the chain holds the request, and its
body waits at the entrance), asks them in order on a task, then:

- every one allows: their header mutations are applied to the request and it resumes
  (Envoy ``ext_authz.cc`` ``onComplete`` OK: headers set/appended/removed, ``continueDecoding``);
- one denies: the client gets the provider's status, body and headers (``sendLocalReply``, details
  ``ext_authz_denied``; a gRPC client gets Envoy's gRPC local reply, e.g. 401 -> UNAUTHENTICATED);
- one fails (unreachable, timeout, 5xx): ``failOpen`` lets the request on, else ``statusOnError``
  with no body (details ``ext_authz_error``). Denials and errors set the ``UAEX`` response flag.

The request then meets RBAC as usual: a CUSTOM allow still goes through DENY and ALLOW.

Headers for the client on allow (``headersToDownstreamOnAllow``, gRPC ``response_headers_to_add``;
Envoy ``ext_authz.cc`` ``onComplete`` OK saves ``response_headers_to_add_``/``_set_``/..., and
``encodeHeaders`` applies them to whatever response passes back, the upstream's or a later filter's
local reply): kept on the request context (``ctx.state``) until :meth:`on_response_headers`. A
counter of contexts carrying some keeps the response path of every other request to one test.

A client that goes away while its check is pending (reset, connection lost) cancels the check
(Envoy ``onDestroy``: ``client_->cancel()`` while ``Calling``): :meth:`on_stream_complete` cancels
its task, which closes the provider's request (httpx drops the connection, gRPC sends RST_STREAM),
so a slow provider does not gather abandoned checks.

``includeRequestBodyInCheck`` (Envoy ``with_request_body``, ``ext_authz.cc`` ``decodeHeaders``/
``decodeData``): when a provider to ask wants the body, the filter stops on the headers and reads the
body on (:meth:`Stream.feed_request_body`) until its end, or until ``maxRequestBytes`` are in with
``allowPartialMessage``; more than ``maxRequestBytes`` without it is a 413 (the decoder buffer limit
Envoy sets: ``Payload Too Large``, details ``request_payload_too_large``). Requests without a body,
upgrades, and providers that want none are asked at once, with no buffering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

from waypoint.l7.filter import CONTINUE, STOP, DownstreamInfo, Filter, LocalReply, RequestContext, Result
from waypoint.l7.filters.rbac import ServiceScope, dialled_service, request_facts
from waypoint.l7.message import HOP_BY_HOP, HeaderList, RequestHead, ResponseHead, get_header
from waypoint.mesh.model import Service
from waypoint.policy.authz import WaypointAuthorizer
from waypoint.policy.extauthz import (
    CheckInput,
    CheckResult,
    CheckStatus,
    DownstreamHeaders,
    ExtAuthzClients,
    HeaderAction,
    error,
    with_body,
)
from waypoint.policy.meshconfig import BodySettings, ExtAuthzProvider

log = logging.getLogger(__name__)

UAEX = "UAEX"  # Envoy's UnauthorizedExternalService response flag
_PROTECTED = frozenset({b"host", b":authority", b":path", b":method", b":scheme"})
# never added to a response: the codec frames it and strips hop-by-hop names (message.py)
_NOT_TO_CLIENT = HOP_BY_HOP | {b"content-length"}
_DOWNSTREAM = "ext_authz.downstream"  # ctx.state key: the allowed checks' headers for the response

_ToClient = tuple[tuple[bytes, bytes, HeaderAction], ...]


class ExtAuthzFilter(Filter):
    """CUSTOM policies at the waypoint. :meth:`swap` installs the next snapshot's authorizer; the
    provider clients (``clients``) follow the mesh config on their own."""

    name = "ext_authz"

    def __init__(self, clients: ExtAuthzClients, own_principal: str = "") -> None:
        self.clients = clients
        self.own_principal = own_principal  # the waypoint's SPIFFE URI: CheckRequest's destination principal
        # Envoy's ext_authz stats: ok, denied, error, failure_mode_allowed
        self.ok = self.denied = self.errors = self.failure_mode_allowed = 0
        self.cancelled = 0  # checks dropped because their client went away
        self._pending: dict[RequestContext, asyncio.Task[None]] = {}  # checks in flight, by request
        self._carrying = 0  # requests whose ctx.state holds headers for their response
        self.swap(None)

    def swap(self, authorizer: WaypointAuthorizer | None, services: Iterable[Service] = ()) -> None:
        """Learn once which services have CUSTOM policies with a configured provider."""
        self.scope = ServiceScope(
            authorizer is not None and authorizer.has_custom(None),
            (s for s in services if authorizer is not None and authorizer.has_custom(s)),
        )
        self.authorizer = None if self.scope.empty else authorizer

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        authz = self.authorizer
        if authz is None:
            return CONTINUE
        info = ctx.info
        service = dialled_service(info)
        if not self.scope.wants(service):
            return CONTINUE
        facts = request_facts(info, head)
        headers = tuple(facts.headers)  # already a tuple: no copy
        providers = authz.custom_check(service, facts)
        if not providers:
            return CONTINUE
        request = self._input(info, head, headers)
        settings = None if end_stream or _upgrade(head) else self._body_settings(providers)
        stream = ctx.stream
        if settings is not None and stream is not None:
            stream.feed_request_body(_BodyBuffer(self, ctx, head, providers, request, settings).on_data)
        else:
            self.start(ctx, head, providers, request)
        return STOP

    def start(self, ctx: RequestContext, head: RequestHead, providers: tuple[str, ...], request: CheckInput) -> None:
        """Ask the providers on a task (the request stays stopped until it resumes or answers)."""
        task = asyncio.get_running_loop().create_task(self._ask(ctx, head, providers, request))
        self._pending[ctx] = task
        task.add_done_callback(lambda _: self._pending.pop(ctx, None))

    @property
    def pending(self) -> int:
        """Checks in flight (tests, config dump)."""
        return len(self._pending)

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        """Envoy ``encodeHeaders``: the allowed checks' headers join the response (a request that
        carries none costs the counter test)."""
        if self._carrying and (headers := ctx.state.pop(_DOWNSTREAM, None)) is not None:
            self._carrying -= 1
            _to_client(head.headers, headers)
        return CONTINUE

    def on_stream_complete(self, ctx: RequestContext) -> None:
        """Envoy ``onDestroy``: a check still pending is cancelled (its answer has no one to go to)."""
        if self._pending:
            task = self._pending.pop(ctx, None)
            if task is not None and not task.done():
                task.cancel()
                self.cancelled += 1
        if self._carrying and ctx.state.pop(_DOWNSTREAM, None) is not None:
            self._carrying -= 1

    def _body_settings(self, providers: tuple[str, ...]) -> BodySettings | None:
        """What buffering the providers to ask need together: None when none wants the body. Istio
        lets one provider apply per workload; should several here, the body is cut per provider
        later, and a partial body is accepted only if every one accepts it."""
        wanted = [c.provider.body for name in providers
                  if (c := self.clients.get(name)) is not None and c.provider.body is not None]
        if not wanted:
            return None
        if len(wanted) == 1:
            return wanted[0]
        return BodySettings(max(s.max_request_bytes for s in wanted), all(s.allow_partial_message for s in wanted))

    def _input(self, info: DownstreamInfo, head: RequestHead, headers: tuple[tuple[str, str], ...]) -> CheckInput:
        rid = get_header(head.headers, b"x-request-id")
        return CheckInput(
            head.method, head.path, head.authority, head.scheme, headers,
            protocol="HTTP/2" if info.http2 else "HTTP/1.1",
            source_address=info.peer_address or ("", 0),
            source_principal=info.peer_identity or "",
            destination_address=info.destination or ("", 0),
            destination_principal=self.own_principal,
            request_id=rid.decode("latin-1") if rid is not None else "",
        )

    async def _ask(
        self, ctx: RequestContext, head: RequestHead, providers: tuple[str, ...], request: CheckInput
    ) -> None:
        """Ask each provider in turn; resume, or answer for the first that says no. Cancelled
        (CancelledError passes through) when the client goes away first."""
        downstream: list[DownstreamHeaders] = []
        try:
            for name in providers:
                result = await self._check(name, request)
                reply = self._outcome(ctx, head, name, result)
                if reply is not None:
                    self._pending.pop(ctx, None)  # answered: a completion from here on cancels nothing
                    ctx.send_local_reply(reply)
                    return
                if result.downstream:
                    downstream.append(result.downstream)
        except Exception:  # a bug here must not leave the request hanging: fail closed
            log.exception("ext_authz: check failed")
            self._pending.pop(ctx, None)
            ctx.response_flags = UAEX
            ctx.send_local_reply(LocalReply(403, details="ext_authz_error"))
            return
        self._pending.pop(ctx, None)
        if downstream:
            self._carry(ctx, downstream)
        ctx.resume()

    def _carry(self, ctx: RequestContext, results: list[DownstreamHeaders]) -> None:
        """Keep the allowed checks' response headers on the request, encoded once, in the order
        ``encodeHeaders`` applies them (adds, sets, adds if absent, overwrites if present)."""
        headers = sorted(
            ((k.encode("latin-1"), v.encode("latin-1"), action) for result in results for k, v, action in result),
            key=lambda h: h[2],
        )
        kept: _ToClient = tuple(h for h in headers if h[0] not in _NOT_TO_CLIENT and not h[0].startswith(b":"))
        if kept:
            ctx.state[_DOWNSTREAM] = kept
            self._carrying += 1

    async def _check(self, name: str, request: CheckInput) -> CheckResult:
        client = self.clients.get(name)
        if client is None:  # the mesh config lost it since this snapshot's policies were built
            return error(f"provider {name} not configured")
        if request.body is not None:
            request = with_body(request, client.provider.body)
        try:
            async with asyncio.timeout(client.provider.timeout_s):
                return await client.check(request)
        except TimeoutError:
            return error(f"no answer within {client.provider.timeout_s}s")

    def _outcome(self, ctx: RequestContext, head: RequestHead, name: str, result: CheckResult) -> LocalReply | None:
        """What one provider's answer does: None lets the request on (after its header mutations)."""
        if result.status is CheckStatus.OK:
            self.ok += 1
            _mutate(head, result)
            return None
        client = self.clients.get(name)
        if result.status is CheckStatus.DENIED:
            self.denied += 1
            ctx.response_flags = UAEX
            log.debug("ext_authz %s denied %s %s: %d", name, head.method, head.path, result.http_status)
            headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in result.client_headers)
            return LocalReply(result.http_status, result.body, headers, details="ext_authz_denied")
        self.errors += 1
        provider: ExtAuthzProvider | None = client.provider if client is not None else None
        log.info("ext_authz %s: %s", name, result.reason)
        if provider is not None and provider.fail_open:
            self.failure_mode_allowed += 1
            return None
        ctx.response_flags = UAEX
        status = provider.status_on_error if provider is not None else 403
        return LocalReply(status, details="ext_authz_error")


class _BodyBuffer:
    """One request's body on its way into the check (made only when a provider wants it)."""

    __slots__ = ("chunks", "ctx", "filter", "head", "providers", "request", "settings", "size")

    def __init__(self, owner: ExtAuthzFilter, ctx: RequestContext, head: RequestHead, providers: tuple[str, ...],
                 request: CheckInput, settings: BodySettings) -> None:
        self.filter, self.ctx, self.head, self.providers, self.request = owner, ctx, head, providers, request
        self.settings = settings
        self.chunks: list[bytes] = []
        self.size = 0

    def on_data(self, chunk: bytes, end_stream: bool) -> Result:
        """Envoy ``decodeData`` with ``buffer_data_``: buffer; ask at the end of the body, or once
        ``isBufferFull`` (``allowPartialMessage`` and ``maxRequestBytes`` in); 413 past the limit."""
        self.chunks.append(chunk)
        self.size += len(chunk)
        settings = self.settings
        full = settings.allow_partial_message and self.size >= settings.max_request_bytes
        if not settings.allow_partial_message and self.size > settings.max_request_bytes:
            return LocalReply(413, b"Payload Too Large", details="request_payload_too_large")
        if end_stream or full:
            stream = self.ctx.stream
            if stream is not None:
                stream.feed_request_body(None)  # the rest waits at the entrance, the client paused
            body, self.chunks = b"".join(self.chunks), []
            self.filter.start(self.ctx, self.head, self.providers, replace(self.request, body=body))
        return STOP


def _upgrade(head: RequestHead) -> bool:
    """Envoy buffers no body for WebSocket or HTTP/2 extended-CONNECT upgrades (``decodeHeaders``)."""
    return head.method == "CONNECT" or get_header(head.headers, b"upgrade") is not None


def _to_client(out: HeaderList, headers: _ToClient) -> None:
    """Apply an allowed check's headers to the response head (``encodeHeaders``: ``addCopy``,
    ``setCopy``, add if absent, set if present)."""
    for name, value, action in headers:
        if action is HeaderAction.ADD:
            out.append((name, value))
            continue
        present = get_header(out, name) is not None
        if action is HeaderAction.ADD_IF_ABSENT:
            if not present:
                out.append((name, value))
        elif present or action is HeaderAction.SET:
            if present:
                out[:] = [h for h in out if h[0] != name]
            out.append((name, value))


def _mutate(head: RequestHead, result: CheckResult) -> None:
    """The provider's upstream header changes: remove, set (replace), append (Envoy's order)."""
    if not (result.upstream_remove or result.upstream_set or result.upstream_append):
        return
    drop = {n.encode("latin-1") for n in result.upstream_remove} - _PROTECTED
    replace = {k.encode("latin-1") for k, _ in result.upstream_set}
    if drop or replace:
        head.headers[:] = [(k, v) for k, v in head.headers if k not in drop and k not in replace]
    for k, v in (*result.upstream_set, *result.upstream_append):
        head.headers.append((k.encode("latin-1"), v.encode("latin-1")))
