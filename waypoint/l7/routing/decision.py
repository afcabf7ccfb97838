"""What routing decides for one request: the value the router filter acts on.

The route table (``waypoint.l7.routing``) is pure: it takes a :class:`RequestView` and
returns a :class:`RouteDecision`. The router filter (``waypoint.l7``) executes it. This
file is the contract between the two; both sides import it and nothing else of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Kubernetes Service port: where a request is sent (or was dialled)."""

    namespace: str
    name: str
    port: int


@dataclass(frozen=True, slots=True)
class RequestView:
    """The parts of a request that routing reads. Header names are lower case."""

    method: str
    path: str  # request target as sent, query included: "/a/b?x=1"
    authority: str  # Host or :authority, as sent
    headers: tuple[tuple[str, str], ...]
    dialled: ServiceRef | None  # the service the client dialled (GAMMA parent); None if a pod was dialled
    grpc: bool = False  # content-type application/grpc*
    source_namespace: str | None = None  # client workload's namespace (GAMMA consumer routes); None = unknown


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    """Gateway API HTTPHeaderFilter: set replaces, add appends, remove deletes (names lower case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries as Istio applies them to an HTTPRoute rule (``retry`` field)."""

    attempts: int
    codes: tuple[int, ...]
    backoff_s: float | None


ISTIO_DEFAULT_RETRY = RetryPolicy(attempts=2, codes=(503,), backoff_s=None)
"""What Istio applies to a route with no retry stanza (``IS:pilot/pkg/networking/core/route/retry/retry.go``
``DefaultPolicy``: 2 retries on connect-failure, refused-stream, unavailable, cancelled and 503)."""


class DecisionKind(Enum):
    FORWARD = "forward"  # send to ``backend``
    REDIRECT = "redirect"  # answer ``status`` with ``location``
    LOCAL = "local"  # answer ``status`` with ``body`` (e.g. 500 for invalid backends, 404 no route)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    kind: DecisionKind
    backend: ServiceRef | None = None  # FORWARD: the (weighted) pick
    status: int = 200  # REDIRECT / LOCAL
    location: str | None = None  # REDIRECT
    body: bytes = b""  # LOCAL
    new_path: str | None = None  # URLRewrite result (query kept), None = unchanged
    new_authority: str | None = None  # URLRewrite hostname, None = unchanged
    request_headers: tuple[HeaderMutation, ...] = ()  # applied in order (rule, then backendRef filters)
    response_headers: tuple[HeaderMutation, ...] = ()
    mirrors: tuple[ServiceRef, ...] = ()  # RequestMirror targets picked for this request
    request_timeout_s: float | None = None  # timeouts.request
    backend_timeout_s: float | None = None  # timeouts.backendRequest
    retry: RetryPolicy | None = ISTIO_DEFAULT_RETRY  # None: no retries (a stanza with attempts 0)
    route_name: str = ""  # "kind/ns/name" (+ "#rule") for telemetry and logs
    extra: dict[str, str] = field(default_factory=dict)
