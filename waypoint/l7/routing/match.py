"""Request matching and the precedence order of matches, for HTTPRoute and GRPCRoute.

Precedence (HTTPRoute, ``httproute_types.go`` HTTPRouteRule.Matches) across all rules of all
routes on one parent: Exact path > longest PathPrefix > method > most header matches > most
query matches; then oldest route, then "ns/name", then rule order. Regular-expression paths
rank below prefixes, ordered by pattern length, as Istio does (``conversion.go``
``sortHTTPRoutes``/``getURIRank``: Exact 3 > Prefix 2 > Regex 1). GRPCRoute
(``grpcroute_types.go`` GRPCRouteRule): most characters in the matching service, then method,
then most header matches, with the same tie breaks.
"""

from __future__ import annotations

from urllib.parse import unquote

from waypoint.l7.routing.decision import RequestView
from waypoint.l7.routing.model import GRPCRouteMatch, HeaderMatch, HTTPRouteMatch, PathMatch

_PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}


class RequestParts:
    """What matching reads from one request, each piece computed at most once."""

    __slots__ = ("_headers", "_params", "path", "query", "view")

    def __init__(self, view: RequestView, path: str, query: str) -> None:
        self.view = view
        self.path = path  # without the query
        self.query = query
        self._headers: dict[str, str | None] | None = None
        self._params: dict[str, str] | None = None

    @classmethod
    def of(cls, view: RequestView) -> RequestParts:
        path, _, query = view.path.partition("?")
        return cls(view, path or "/", query)

    def header(self, name: str) -> str | None:
        """Repeated headers are seen joined with "," as Envoy's header matcher sees them. Only the
        names the table asks for are looked up (and remembered, as several matches may ask)."""
        seen = self._headers
        if seen is None:
            seen = self._headers = {}
        elif name in seen:
            return seen[name]
        value = seen[name] = self.view.header(name)
        return value

    def param(self, name: str) -> str | None:
        """First value of a query parameter, percent-decoded."""
        if self._params is None:
            params: dict[str, str] = {}
            for pair in self.query.split("&"):
                if not pair:
                    continue
                k, _, v = pair.partition("=")
                params.setdefault(unquote(k), unquote(v))
            self._params = params
        return self._params.get(name)


def path_matches(m: PathMatch, path: str) -> bool:
    if m.type == "Exact":
        return path == m.value
    if m.type == "PathPrefix":
        prefix = m.prefix  # "a trailing / is ignored"; "/" itself becomes ""
        if not prefix:
            return True
        # element-wise: "/abc" matches "/abc", "/abc/", "/abc/def" but not "/abcd"
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")
    assert m.regex is not None
    return m.regex.fullmatch(path) is not None


def _headers_match(matches: tuple[HeaderMatch, ...], parts: RequestParts) -> bool:
    for h in matches:
        got = parts.header(h.name)
        if got is None:
            return False
        if h.regex is not None:
            if h.regex.fullmatch(got) is None:
                return False
        elif got != h.value:
            return False
    return True


def http_match(m: HTTPRouteMatch, parts: RequestParts) -> bool:
    if m.method is not None and parts.view.method != m.method:
        return False
    if not path_matches(m.path, parts.path):
        return False
    for q in m.query_params:
        got = parts.param(q.name)
        if got is None or (q.regex.fullmatch(got) is None if q.regex is not None else got != q.value):
            return False
    return _headers_match(m.headers, parts)


def grpc_match(m: GRPCRouteMatch, parts: RequestParts) -> bool:
    mm = m.method
    if mm is not None:
        if mm.regex is not None:
            if mm.regex.fullmatch(parts.path) is None:
                return False
        else:
            _, service, method = parts.path.split("/", 2) if parts.path.count("/") == 2 else ("", "", "")
            if mm.service is not None and service != mm.service:
                return False
            if mm.method is not None and method != mm.method:
                return False
            if not service or not method:
                return False
    return _headers_match(m.headers, parts)


def http_precedence(m: HTTPRouteMatch) -> tuple[int, ...]:
    """Sort key, smallest first: the more specific match comes first."""
    return (
        -_PATH_RANK[m.path.type],
        -len(m.path.value),
        0 if m.method is not None else 1,
        -len(m.headers),
        -len(m.query_params),
    )


def grpc_precedence(m: GRPCRouteMatch) -> tuple[int, ...]:
    service = m.method.service if m.method is not None and m.method.service else ""
    method = m.method.method if m.method is not None and m.method.method else ""
    return (-len(service), -len(method), -len(m.headers))


def matched_prefix(m: PathMatch, path: str) -> str:
    """The part of ``path`` a ReplacePrefixMatch replaces: the prefix value without its trailing "/"."""
    if m.type == "PathPrefix":
        return m.prefix
    if m.type == "Exact":
        return path.rstrip("/")
    return ""
