"""URL rewrite, redirect Location and header-modifier conversion: pure string work.

ReplacePrefixMatch follows the table in ``httproute_types.go`` (HTTPPathModifier): the matched
prefix, compared without its trailing "/", is swapped for the replacement without its trailing
"/", and an empty result becomes "/" (so ``/strip-prefix`` with replacement ``/`` gives ``/``, and
``/strip-prefix/three`` gives ``/three``, as the MeshHTTPRouteRewritePath cases expect; Istio
trims the same way in ``conversion.go`` createRewriteFilter). The query string is kept.

Redirect port (Istio ``conversion.go`` createRedirectFilter): an explicit port wins; else a
scheme set on the filter derives the scheme's default port; else the request's port is kept.
The port is left out of ``Location`` when it is the scheme's default (spec: SHOULD NOT add 80
for http or 443 for https).
"""

from __future__ import annotations

from waypoint.l7.routing.decision import HeaderMutation
from waypoint.l7.routing.model import HeaderModifier, PathModifier, RequestRedirect

_DEFAULT_PORT = {"http": 80, "https": 443}


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """``path`` (no query) starts with ``prefix`` element-wise; both may carry trailing "/"."""
    prefix = prefix.rstrip("/")
    rest = path[len(prefix) :] if path.startswith(prefix) else path
    new = replacement.rstrip("/") + rest
    return new if new.startswith("/") else "/" + new


def modify_path(path: str, query: str, modifier: PathModifier, prefix: str) -> str:
    """The new request target (query kept) after a URLRewrite or redirect path modifier."""
    if modifier.type == "ReplaceFullPath":
        new = modifier.value or "/"
    else:
        new = replace_prefix(path, prefix, modifier.value)
    return f"{new}?{query}" if query else new


def split_authority(authority: str) -> tuple[str, int | None]:
    """'host', 'host:8080', '[::1]:80' -> (host, port). An IPv6 host keeps its brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[: end + 1], authority[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return authority, None


def redirect_location(
    redirect: RequestRedirect,
    authority: str,
    path: str,
    query: str,
    prefix: str,
    request_scheme: str = "http",
) -> str:
    scheme = redirect.scheme or request_scheme
    req_host, req_port = split_authority(authority)
    host = redirect.hostname or req_host
    if redirect.port is not None:
        port: int | None = redirect.port
    elif redirect.scheme is not None:
        port = None  # FROM_PROTOCOL_DEFAULT
    else:
        port = req_port  # FROM_REQUEST_PORT
    target = (
        modify_path(path, query, redirect.path, prefix)
        if redirect.path
        else (f"{path}?{query}" if query else path)
    )
    if port is None or port == _DEFAULT_PORT.get(scheme):
        return f"{scheme}://{host}{target}"
    return f"{scheme}://{host}:{port}{target}"


def mutation(modifier: HeaderModifier) -> HeaderMutation:
    return HeaderMutation(set=modifier.set, add=modifier.add, remove=modifier.remove)


def apply_mutations(
    headers: list[tuple[str, str]], mutations: tuple[HeaderMutation, ...]
) -> list[tuple[str, str]]:
    """Reference semantics of HeaderMutation (lower-case names): remove, then set, then add.

    Set replaces every value of the name; add appends one more value (the backend sees the
    values joined with ","). The router filter may apply mutations its own way; tests use this
    to state what a backend must see.
    """
    out = list(headers)
    for m in mutations:
        drop = set(m.remove) | {k for k, _ in m.set}
        out = [(k, v) for k, v in out if k.lower() not in drop]
        out.extend(m.set)
        out.extend(m.add)
    return out
