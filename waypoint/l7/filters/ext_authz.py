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
from waypoint.l7.message import RequestHead, get_header
from waypoint.mesh.model import Service
from waypoint.policy.authz import WaypointAuthorizer
from waypoint.policy.extauthz import CheckInput, CheckResult, CheckStatus, ExtAuthzClients, error, with_body
from waypoint.policy.meshconfig import BodySettings, ExtAuthzProvider

log = logging.getLogger(__name__)

UAEX = "UAEX"  # Envoy's UnauthorizedExternalService response flag
_PROTECTED = frozenset({b"host", b":authority", b":path", b":method", b":scheme"})


class ExtAuthzFilter(Filter):
    """CUSTOM policies at the waypoint. :meth:`swap` installs the next snapshot's authorizer; the
    provider clients (``clients``) follow the mesh config on their own."""

    name = "ext_authz"

    def __init__(self, clients: ExtAuthzClients, own_principal: str = "") -> None:
        self.clients = clients
        self.own_principal = own_principal  # the waypoint's SPIFFE URI: CheckRequest's destination principal
        # Envoy's ext_authz stats: ok, denied, error, failure_mode_allowed
        self.ok = self.denied = self.errors = self.failure_mode_allowed = 0
        self._tasks: set[asyncio.Task[None]] = set()
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
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        """Ask each provider in turn; resume, or answer for the first that says no."""
        try:
            for name in providers:
                reply = self._outcome(ctx, head, name, await self._check(name, request))
                if reply is not None:
                    ctx.send_local_reply(reply)
                    return
        except Exception:  # a bug here must not leave the request hanging: fail closed
            log.exception("ext_authz: check failed")
            ctx.response_flags = UAEX
            ctx.send_local_reply(LocalReply(403, details="ext_authz_error"))
            return
        ctx.resume()

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
