"""The keys of Envoy's RBAC principals and permissions, one predicate class per attribute.

Split from :mod:`.envoy_rules` (which compiles a policy into lists of these) so that the compiler
reads as istiod's ``model.go`` and each attribute's matching rule (``IS:pilot/pkg/security/authz/
model/generator.go``: one generator per key) stands on its own here. A predicate is built once per
policy load and tested per request: no parsing on the hot path. ``http_only`` marks the keys that
``forTCP`` cannot generate (hosts, methods, paths, headers, JWT attributes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waypoint.policy.attributes import ConnectionFacts, RequestFacts
from waypoint.policy.authz.match import (
    IPNetwork,
    PathMatch,
    StringMatch,
    any_match,
    ip_blocks,
    ip_in,
    string_matches,
    url_path,
)
from waypoint.policy.jwt import claim_value


class Pred:
    """One key of a principal or permission. ``test`` sees the connection and, for HTTP, the request."""

    __slots__ = ()
    http_only = False

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        raise NotImplementedError


class IpPred(Pred):
    """``source.ip``/``ipBlocks``, ``remote.ip``/``remoteIpBlocks`` (as the peer IP: we trust no
    ``x-forwarded-for`` hop, Istio's default ``numTrustedProxies: 0``) and ``destination.ip``."""

    __slots__ = ("destination", "neg", "pos")

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...], *, destination: bool = False) -> None:
        self.pos: tuple[IPNetwork, ...] = ip_blocks(pos)
        self.neg: tuple[IPNetwork, ...] = ip_blocks(neg)
        self.destination = destination

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        ip = conn.destination_ip if self.destination else conn.source_ip
        if self.pos and not ip_in(self.pos, ip):
            return False
        return not (self.neg and ip_in(self.neg, ip))


class PortPred(Pred):
    __slots__ = ("neg", "pos")

    def __init__(self, pos: tuple[int, ...], neg: tuple[int, ...]) -> None:
        self.pos = frozenset(pos)
        self.neg = frozenset(neg)

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        port = conn.destination_port
        if self.pos and port not in self.pos:
            return False
        return port not in self.neg


class StringPred(Pred):
    """A string attribute with exact/prefix/suffix/presence values; absent matches no value."""

    __slots__ = ("neg", "pos")

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...], *, ignore_case: bool = False) -> None:
        self.pos = string_matches(pos, ignore_case=ignore_case)
        self.neg = string_matches(neg, ignore_case=ignore_case)

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        raise NotImplementedError

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        text = self.value(conn, req)
        if self.pos and not any_match(self.pos, text):
            return False
        return not (self.neg and any_match(self.neg, text))


class PrincipalPred(StringPred):
    """Peer identity without ``spiffe://`` (``generator.go`` ``StringMatcherWithPrefix``)."""

    __slots__ = ()

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        i = conn.source_identity
        return None if i is None else f"{i.trust_domain}/ns/{i.namespace}/sa/{i.service_account}"


class NamespacePred(StringPred):
    """The ``/ns/<x>/`` part of the peer identity (``srcNamespaceGenerator``)."""

    __slots__ = ()

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        i = conn.source_identity
        return None if i is None else i.namespace


class ServiceAccountPred(Pred):
    """``serviceAccounts``: ``ns/sa`` or ``sa`` in the policy's namespace (``serviceAccountRegex``)."""

    __slots__ = ("neg", "pos")

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...], namespace: str) -> None:
        self.pos = frozenset(_sa(v, namespace) for v in pos)
        self.neg = frozenset(_sa(v, namespace) for v in neg)

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        i = conn.source_identity
        sa = None if i is None else (i.namespace, i.service_account)
        if self.pos and sa not in self.pos:
            return False
        return not (sa is not None and sa in self.neg)


def _sa(value: str, namespace: str) -> tuple[str, str]:
    ns, sep, sa = value.partition("/")
    return (ns, sa) if sep else (namespace, value)


class AbsentPred(StringPred):
    """Attributes this data plane never has here: ``connection.sni`` (the waypoint sees the inner
    request, not a TLS hello). As in Envoy with no value: values never match, ``not`` values do."""

    __slots__ = ()

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        return None


def _sm(kind: str, value: str) -> StringMatch:
    m = StringMatch("")
    m.kind, m.value = kind, value
    return m


def _principal_matchers(value: str) -> tuple[StringMatch, StringMatch]:
    """(iss, sub) matchers for one ``requestPrincipals`` value, split at the last "/" (the issuer may
    be a URL): ``IS:pilot/pkg/security/authz/model/generator.go`` ``requestPrincipalGenerator``."""
    iss, found, sub = value.rpartition("/")
    if not found:
        iss, sub = value, ""
    anything = _sm("presence", "")
    if value == "*":
        return anything, anything
    if value.startswith("*"):
        if found:
            return (anything if iss == "*" else _sm("suffix", iss[1:])), _sm("exact", sub)
        return anything, _sm("suffix", value[1:])
    if value.endswith("*"):
        if found:
            return _sm("exact", iss), (anything if sub == "*" else _sm("prefix", sub[:-1]))
        return _sm("prefix", value[:-1]), anything
    return _sm("exact", iss), _sm("exact", sub)


class RequestPrincipalPred(Pred):
    """``requestPrincipals`` and ``when: request.auth.principal``: the verified token's ``iss`` and
    ``sub`` claims (RequestAuthentication, :mod:`waypoint.policy.request_authn`). No token: values
    never match, ``not`` values always do, as Envoy's metadata matchers with no metadata. HTTP only."""

    __slots__ = ("neg", "pos")
    http_only = True

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        self.pos = tuple(_principal_matchers(v) for v in pos)
        self.neg = tuple(_principal_matchers(v) for v in neg)

    @staticmethod
    def _any(pairs: tuple[tuple[StringMatch, StringMatch], ...], claims: Mapping[str, Any] | None) -> bool:
        if claims is None:
            return False
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str):
            return False
        return any(mi.matches(iss) and ms.matches(sub) for mi, ms in pairs)

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        claims = None if req is None else req.jwt_claims
        if self.pos and not self._any(self.pos, claims):
            return False
        return not (self.neg and self._any(self.neg, claims))


class ClaimPred(Pred):
    """``request.auth.claims[a][b]``, ``request.auth.audiences`` (``aud``), ``request.auth.presenter``
    (``azp``): a string claim, or a list of them with one element matching (``generator.go``
    ``MetadataListValueMatcherForJWTClaims`` with the string-or-list form). HTTP only."""

    __slots__ = ("neg", "path", "pos")
    http_only = True

    def __init__(self, path: tuple[str, ...], pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        self.path = path
        self.pos = string_matches(pos)
        self.neg = string_matches(neg)

    def _any(self, matchers: tuple[StringMatch, ...], value: Any) -> bool:
        if isinstance(value, str):
            return any_match(matchers, value)
        if isinstance(value, list):
            return any(isinstance(v, str) and any_match(matchers, v) for v in value)
        return False

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        claims = None if req is None else req.jwt_claims
        value = None if claims is None else claim_value(claims, self.path)
        if self.pos and not self._any(self.pos, value):
            return False
        return not (self.neg and self._any(self.neg, value))


def claim_path(key: str) -> tuple[str, ...]:
    """``[a][b]`` after ``request.auth.claims`` (``extractNameInNestedBrackets``)."""
    inner = key[len("request.auth.claims") :]
    names: list[str] = []
    begin = 0
    while begin < len(inner) and inner[begin] == "[":
        end = inner.find("]", begin)
        if end < 0:
            return (inner.strip("[]"),)
        names.append(inner[begin + 1 : end])
        begin = end + 1
    return tuple(names) or (inner.strip("[]"),)


class HostPred(StringPred):
    """``:authority`` as sent, case-insensitive (``HostMatcher``). No port variants are added:
    ``example.com`` does not match ``example.com:8080`` (istio/istio#44080)."""

    __slots__ = ()
    http_only = True

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        super().__init__(pos, neg, ignore_case=True)

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        return None if req is None else req.host.lower()


class MethodPred(StringPred):
    __slots__ = ()
    http_only = True

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        return None if req is None else req.method


class HeaderPred(StringPred):
    """``request.headers[name]``; repeated headers are joined with "," as Envoy's header matcher does."""

    __slots__ = ("name",)
    http_only = True

    def __init__(self, name: str, pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        super().__init__(pos, neg)
        self.name = name

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        if req is None:
            return None
        found: str | None = None
        for k, v in req.headers:
            if k == self.name:
                found = v if found is None else f"{found},{v}"
        return found


class PathPred(Pred):
    __slots__ = ("neg", "pos")
    http_only = True

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        self.pos = tuple(PathMatch(p) for p in pos)
        self.neg = tuple(PathMatch(p) for p in neg)

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        if req is None:
            return False
        path = url_path(req.path)
        if self.pos and not any(m.matches(path) for m in self.pos):
            return False
        return not any(m.matches(path) for m in self.neg)


__all__ = [
    "AbsentPred",
    "ClaimPred",
    "HeaderPred",
    "HostPred",
    "IpPred",
    "MethodPred",
    "NamespacePred",
    "PathPred",
    "PortPred",
    "Pred",
    "PrincipalPred",
    "RequestPrincipalPred",
    "ServiceAccountPred",
    "StringPred",
    "claim_path",
]
