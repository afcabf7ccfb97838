"""An ``envoyExtAuthzGrpc`` provider: ``envoy.service.auth.v3.Authorization/Check`` (OPA-Envoy's API).

The request (``source/extensions/filters/common/ext_authz/check_request_utils.cc``
``createHttpCheck``; ``envoy/service/auth/v3/attribute_context.proto``): ``source`` is the downstream
peer (address, and its certificate's URI SAN as ``principal``), ``destination`` the address the
client dialled with the proxy's own URI SAN, and ``request.http`` the method, path, host, scheme,
protocol and every header (pseudo-headers included, repeated names joined with ``,``), and with
``includeRequestBodyInCheck`` the buffered body as ``body`` (text) or ``raw_body`` (``packAsBytes``).

The answer (``ext_authz_grpc_impl.cc`` ``toAuthzResponse``): ``status.code == OK`` allows, with
``ok_response.headers`` set on (or, ``append: true``, appended to) the upstream request and
``ok_response.headers_to_remove`` removed, and ``ok_response.response_headers_to_add`` kept for the
response the client gets (``copyOkResponseMutations``: ``append`` true adds, false sets; without
``append``, ``append_action`` says: add, add if absent, overwrite if exists, or set); any other
code denies, with ``denied_response``'s status (``403`` when unset), headers and body; a failed
call (unreachable, deadline) is an error.

Messages are ``xds-protos``'s generated classes; the channel is grpcio's asyncio API (it runs on
uvloop; tests/waypoint/test_ext_authz.py exercises it there).
"""

from __future__ import annotations

import itertools
import time

import grpc
from envoy.config.core.v3 import address_pb2, base_pb2  # type: ignore[import-untyped]  # xds-protos: no stubs
from envoy.service.auth.v3 import (  # type: ignore[import-untyped]
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)

from waypoint.policy.extauthz import CheckInput, CheckResult, CheckStatus, HeaderAction, error
from waypoint.policy.meshconfig import ExtAuthzProvider

_OK = 0  # google.rpc.Code.OK
_DEFAULT_DENY_STATUS = 403  # DeniedHttpResponse.status: "If not set, Envoy sends 403 Forbidden"

AttributeContext = attribute_context_pb2.AttributeContext
_Append = base_pb2.HeaderValueOption.HeaderAppendAction
_BY_APPEND_ACTION = {  # HeaderValueOption.append_action -> the response header group it joins
    _Append.APPEND_IF_EXISTS_OR_ADD: HeaderAction.ADD,
    _Append.ADD_IF_ABSENT: HeaderAction.ADD_IF_ABSENT,
    _Append.OVERWRITE_IF_EXISTS_OR_ADD: HeaderAction.SET,
    _Append.OVERWRITE_IF_EXISTS: HeaderAction.OVERWRITE_IF_EXISTS,
}


def check_request(request: CheckInput, now_s: float) -> external_auth_pb2.CheckRequest:
    """The CheckRequest Envoy builds for ``request`` at time ``now_s``."""
    headers: dict[str, str] = {
        ":authority": request.authority, ":method": request.method, ":path": request.path, ":scheme": request.scheme,
    }
    for name, value in request.headers:
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    length = headers.get("content-length", "")
    http = AttributeContext.HttpRequest(
        id=request.request_id, method=request.method, headers=headers, path=request.path, host=request.authority,
        scheme=request.scheme, protocol=request.protocol, size=int(length) if length.isdigit() else -1,
    )
    if request.body is not None:  # includeRequestBodyInCheck (setHttpRequest): bytes, or UTF-8 text
        if request.pack_as_bytes:
            http.raw_body = request.body
        else:  # a proto3 string: bytes that are not UTF-8 cannot travel here (packAsBytes is for them)
            http.body = request.body.decode("utf-8", "replace")
    attrs = AttributeContext(
        source=_peer(request.source_address, request.source_principal),
        destination=_peer(request.destination_address, request.destination_principal),
        request=AttributeContext.Request(http=http),
    )
    attrs.request.time.FromNanoseconds(int(now_s * 1e9))
    return external_auth_pb2.CheckRequest(attributes=attrs)


def _peer(address: tuple[str, int], principal: str) -> attribute_context_pb2.AttributeContext.Peer:
    socket = address_pb2.SocketAddress(address=address[0], port_value=address[1])
    return AttributeContext.Peer(address=address_pb2.Address(socket_address=socket), principal=principal)


def check_result(response: external_auth_pb2.CheckResponse) -> CheckResult:
    if response.status.code == _OK:
        ok = response.ok_response
        to_set: list[tuple[str, str]] = []
        to_append: list[tuple[str, str]] = []
        for option in ok.headers:
            pair = (option.header.key.lower(), option.header.value)
            (to_append if _appends(option) else to_set).append(pair)
        downstream = tuple((o.header.key.lower(), o.header.value, _response_action(o))
                           for o in ok.response_headers_to_add)
        return CheckResult(CheckStatus.OK, 200, upstream_set=tuple(to_set), upstream_append=tuple(to_append),
                           upstream_remove=tuple(n.lower() for n in ok.headers_to_remove), downstream=downstream)
    denied = response.denied_response
    status = denied.status.code or _DEFAULT_DENY_STATUS
    headers = tuple((o.header.key.lower(), o.header.value) for o in denied.headers)
    return CheckResult(CheckStatus.DENIED, int(status), denied.body.encode(), client_headers=headers,
                       reason=response.status.message)


def _appends(option: base_pb2.HeaderValueOption) -> bool:
    """OkHttpResponse.headers: "the append field in HeaderValueOption defaults to false when used in
    this message" (external_auth.proto): only an explicit ``append: true`` appends."""
    return option.HasField("append") and bool(option.append.value)


def _response_action(option: base_pb2.HeaderValueOption) -> HeaderAction:
    """``ext_authz_grpc_impl.cc`` ``copyOkResponseMutations``: an explicit ``append`` wins (true adds,
    false sets); else ``append_action`` (its default, APPEND_IF_EXISTS_OR_ADD, adds)."""
    if option.HasField("append"):
        return HeaderAction.ADD if option.append.value else HeaderAction.SET
    return _BY_APPEND_ACTION.get(option.append_action, HeaderAction.ADD)


class GrpcProviderClient:
    """One channel per provider address (made on first use, inside the running loop), round-robin."""

    def __init__(self, provider: ExtAuthzProvider, targets: tuple[tuple[str, int], ...]) -> None:
        self.provider = provider
        self.targets = targets
        self._next = itertools.cycle(range(len(targets))) if targets else None
        self._channels: dict[int, tuple[grpc.aio.Channel, external_auth_pb2_grpc.AuthorizationStub]] = {}

    def _stub(self, index: int) -> external_auth_pb2_grpc.AuthorizationStub:
        hit = self._channels.get(index)
        if hit is None:
            ip, port = self.targets[index]
            host = f"[{ip}]" if ":" in ip else ip
            channel = grpc.aio.insecure_channel(f"{host}:{port}")
            hit = self._channels[index] = (channel, external_auth_pb2_grpc.AuthorizationStub(channel))
        return hit[1]

    async def check(self, request: CheckInput) -> CheckResult:
        if self._next is None:
            return error(f"no address for service {self.provider.service}")
        stub = self._stub(next(self._next))
        try:
            response = await stub.Check(check_request(request, time.time()), timeout=self.provider.timeout_s)
        except grpc.aio.AioRpcError as e:
            return error(f"gRPC {e.code().name}: {e.details()}")
        return check_result(response)

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel, _ in channels:
            await channel.close()
