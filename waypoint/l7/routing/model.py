"""Gateway API HTTPRoute / GRPCRoute as frozen values, after parsing and defaulting.

Field names follow the CRDs (kubernetes-sigs/gateway-api ``apis/v1/httproute_types.go``,
``grpcroute_types.go``, ``shared_types.go``) in snake case, so a reader can hold the spec text
next to this file. Everything here is already defaulted as the CRD defaults it (path match
``PathPrefix /``, weight 1, redirect status 302, ...), so the table never re-derives defaults.
Header names are lower case: HTTP header names are case-insensitive and the router's
``RequestView`` carries lower-case names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

GATEWAY_GROUP = "gateway.networking.k8s.io"
CORE_GROUPS = frozenset({"", "core"})  # a Service is group "" (some manifests write "core")


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: str  # "Exact" | "PathPrefix" | "RegularExpression"
    value: str
    regex: re.Pattern[str] | None = None  # compiled once at parse time for RegularExpression
    # PathPrefix: the value without its trailing "/" ("a trailing / is ignored"; "/" becomes ""),
    # worked out once rather than for every request matched against it
    prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.value.rstrip("/"))


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str  # lower case
    value: str
    type: str = "Exact"  # "Exact" | "RegularExpression"
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class QueryParamMatch:
    name: str  # case-sensitive, as the spec says
    value: str
    type: str = "Exact"
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    path: PathMatch = PathMatch("PathPrefix", "/")
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: str = "Exact"  # "Exact" | "RegularExpression"
    service: str | None = None
    method: str | None = None
    regex: re.Pattern[str] | None = None  # the whole ":path" pattern, for RegularExpression


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """HTTPHeaderFilter: names lower case, duplicates dropped (first entry wins, as the spec says)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # "ReplaceFullPath" | "ReplacePrefixMatch"
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class BackendObjectRef:
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None  # None = the route's namespace
    port: int | None = None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend: BackendObjectRef
    percent: float = 100.0  # from ``percent`` or ``fraction`` (numerator/denominator*100)


@dataclass(frozen=True, slots=True)
class Filter:
    """One HTTPRouteFilter/GRPCRouteFilter; exactly the field named by ``type`` is set."""

    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None
    extension_ref: str | None = None  # "group/kind/name": never resolvable here, so the rule answers 500


@dataclass(frozen=True, slots=True)
class BackendRef:
    ref: BackendObjectRef
    weight: int = 1
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeouts:
    request_s: float | None = None  # None or 0 = no timeout (Istio drops a zero duration)
    backend_request_s: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int | None = None  # None = implementation default (Istio: 2)
    codes: tuple[int, ...] = ()
    backoff_s: float | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[Filter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None
    timeouts: Timeouts | None = None
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = (GRPCRouteMatch(),)
    filters: tuple[Filter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None  # None = the route's namespace
    section_name: str | None = None
    port: int | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in CORE_GROUPS


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)
    created: datetime | None = None  # metadata.creationTimestamp; None sorts after every real one
    kind: str = "HTTPRoute"


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = (GRPCRouteRule(),)
    created: datetime | None = None
    kind: str = "GRPCRoute"


Route = HTTPRoute | GRPCRoute


@dataclass(frozen=True, slots=True)
class ReferenceGrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class ReferenceGrantTo:
    group: str
    kind: str
    name: str | None = None  # None = every object of that kind


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    """Lets routes in ``from_`` namespaces point at objects in this grant's namespace."""

    namespace: str
    name: str
    from_: tuple[ReferenceGrantFrom, ...]
    to: tuple[ReferenceGrantTo, ...]
