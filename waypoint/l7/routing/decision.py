"""What routing decides for one request: the value the router filter acts on.

The route table (``waypoint.l7.routing``) is pure: it takes a :class:`RequestView` and
returns a :class:`RouteDecision`. The router filter (``waypoint.l7``) executes it. This
file is the contract between the two; both sides import it and nothing else of each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Kubernetes Service port: where a request is sent (or was dialled)."""

    namespace: str
    name: str
    port: int


class RequestView:
    """The parts of a request that routing reads. Header names are lower case.

    Built for every request, so it holds the codec's header list as it came (bytes) and decodes
    only what matching asks for: ``header(name)`` scans for one name, ``headers`` decodes them all
    on first use. Building the decoded view was ~4% of the waypoint's CPU in the L7 bench (py-spy),
    for route tables that read one header or none. Treat it as immutable (it has no setters).
    """

    __slots__ = ("_headers", "_raw", "authority", "dialled", "grpc", "method", "path", "source_namespace")

    def __init__(
        self,
        method: str,
        path: str,  # request target as sent, query included: "/a/b?x=1"
        authority: str,  # Host or :authority, as sent
        headers: tuple[tuple[str, str], ...],
        dialled: ServiceRef | None,  # the service the client dialled (GAMMA parent); None if a pod was dialled
        grpc: bool = False,  # content-type application/grpc*
        source_namespace: str | None = None,  # client workload's namespace (GAMMA consumer routes); None = unknown
        *,
        raw_headers: Sequence[tuple[bytes, bytes]] | None = None,  # wire form; replaces ``headers`` when given
    ) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.dialled = dialled
        self.grpc = grpc
        self.source_namespace = source_namespace
        self._raw = raw_headers
        self._headers = headers if raw_headers is None else None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        found = self._headers
        if found is None:
            raw = self._raw or ()
            found = self._headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
        return found

    def header(self, name: str) -> str | None:
        """Every value of ``name`` (lower case) joined with ",", as Envoy's header matcher sees a
        repeated header; None when absent."""
        raw = self._raw
        if raw is None:
            value: str | None = None
            for n, v in self.headers:
                if n == name:
                    value = v if value is None else f"{value},{v}"
            return value
        key = name.encode("latin-1")
        found: bytes | None = None
        for raw_name, raw_value in raw:
            if raw_name == key:
                found = raw_value if found is None else found + b"," + raw_value
        return None if found is None else found.decode("latin-1")

    def __repr__(self) -> str:
        return f"RequestView({self.method} {self.authority}{self.path}, dialled={self.dialled})"


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
