"""The form a waypoint evaluates: istiod's Envoy RBAC generation, for HTTP and for TCP.

``IS:pilot/pkg/security/authz/model/model.go`` ``New``/``Generate``: each rule becomes principals
(one per ``from`` entry, else one) and permissions (one per ``to`` entry, else one); every ``when``
condition is appended to each of them; a rule matches when one principal and one permission hold.
Inside one, each key is ANDed: its values ORed, its ``not`` values none-of.

For TCP (``forTCP``: an opaque tunnel at the waypoint, Envoy's network RBAC), HTTP-only keys
(hosts, methods, paths, request headers, JWT attributes) cannot be generated. ``checkError``
decides what that means: in ALLOW the whole rule is skipped (stricter); in DENY, AUDIT and CUSTOM
the key is left out (wider: "For a DENY rule, missing attributes are treated as matches", API
reference). Note: this differs from ztunnel, where a DENY match left empty never matches
(:mod:`.ztunnel_rules`), and that is what each of the two does.
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
from waypoint.policy.authz.model import Action, AuthorizationPolicy, Condition, Operation, Rule, Source
from waypoint.policy.jwt import claim_value


class Pred:
    """One key of a principal or permission. ``test`` sees the connection and, for HTTP, the request."""

    __slots__ = ()
    http_only = False

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        raise NotImplementedError


class _IpPred(Pred):
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


class _PortPred(Pred):
    __slots__ = ("neg", "pos")

    def __init__(self, pos: tuple[int, ...], neg: tuple[int, ...]) -> None:
        self.pos = frozenset(pos)
        self.neg = frozenset(neg)

    def test(self, conn: ConnectionFacts, req: RequestFacts | None) -> bool:
        port = conn.destination_port
        if self.pos and port not in self.pos:
            return False
        return port not in self.neg


class _StringPred(Pred):
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


class _PrincipalPred(_StringPred):
    """Peer identity without ``spiffe://`` (``generator.go`` ``StringMatcherWithPrefix``)."""

    __slots__ = ()

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        i = conn.source_identity
        return None if i is None else f"{i.trust_domain}/ns/{i.namespace}/sa/{i.service_account}"


class _NamespacePred(_StringPred):
    """The ``/ns/<x>/`` part of the peer identity (``srcNamespaceGenerator``)."""

    __slots__ = ()

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        i = conn.source_identity
        return None if i is None else i.namespace


class _ServiceAccountPred(Pred):
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


class _AbsentPred(_StringPred):
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


class _RequestPrincipalPred(Pred):
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


class _ClaimPred(Pred):
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


def _claim_path(key: str) -> tuple[str, ...]:
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


class _HostPred(_StringPred):
    """``:authority`` as sent, case-insensitive (``HostMatcher``). No port variants are added:
    ``example.com`` does not match ``example.com:8080`` (istio/istio#44080)."""

    __slots__ = ()
    http_only = True

    def __init__(self, pos: tuple[str, ...], neg: tuple[str, ...]) -> None:
        super().__init__(pos, neg, ignore_case=True)

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        return None if req is None else req.host.lower()


class _MethodPred(_StringPred):
    __slots__ = ()
    http_only = True

    def value(self, conn: ConnectionFacts, req: RequestFacts | None) -> str | None:
        return None if req is None else req.method


class _HeaderPred(_StringPred):
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


class _PathPred(Pred):
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


AndList = tuple[Pred, ...]


CompiledRule = tuple[tuple[AndList, ...], tuple[AndList, ...]]  # (principals, permissions), each ORed lists of ANDs


class EnvoyPolicy:
    """One policy compiled for HTTP or for TCP; ``matches`` is Envoy's ``Policy`` evaluation."""

    __slots__ = ("policy", "rules")

    def __init__(self, policy: AuthorizationPolicy, rules: tuple[tuple[int, CompiledRule], ...]) -> None:
        self.policy = policy
        self.rules = rules  # (index in the policy's rules, the rule): istiod names rule i "ns[..]-policy[..]-rule[i]"

    def match_rule(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> int:
        """The index of the first rule that matches, or -1."""
        for index, (principals, permissions) in self.rules:
            if any(all(p.test(conn, req) for p in ands) for ands in principals) and any(
                all(p.test(conn, req) for p in ands) for ands in permissions
            ):
                return index
        return -1

    def matches(self, conn: ConnectionFacts, req: RequestFacts | None = None) -> bool:
        return self.match_rule(conn, req) >= 0


def compile_envoy(policy: AuthorizationPolicy, *, for_tcp: bool) -> EnvoyPolicy:
    rules: list[tuple[int, CompiledRule]] = []
    for index, rule in enumerate(policy.rules):
        compiled = _rule(rule, policy.namespace, for_tcp=for_tcp, allow=policy.action is Action.ALLOW)
        if compiled is not None:
            rules.append((index, compiled))
    return EnvoyPolicy(policy, tuple(rules))


def _rule(
    rule: Rule, namespace: str, *, for_tcp: bool, allow: bool
) -> tuple[tuple[AndList, ...], tuple[AndList, ...]] | None:
    base_principal: list[Pred] = []
    base_permission: list[Pred] = []
    for cond in rule.conditions:
        pred = _condition(cond)
        (
            base_permission if cond.key in ("destination.ip", "destination.port", "connection.sni") else base_principal
        ).append(pred)
    principals = [base_principal + _source(s, namespace) for s in rule.sources] or [base_principal]
    permissions = [base_permission + _operation(o) for o in rule.operations] or [base_permission]
    if for_tcp:
        if allow and any(p.http_only for ands in principals + permissions for p in ands):
            return None  # checkError: the whole rule is skipped in ALLOW
        principals = [[p for p in ands if not p.http_only] for ands in principals]
        permissions = [[p for p in ands if not p.http_only] for ands in permissions]
    return tuple(tuple(a) for a in principals), tuple(tuple(a) for a in permissions)


def _source(s: Source, namespace: str) -> list[Pred]:
    preds: list[Pred] = []
    if s.ip_blocks or s.not_ip_blocks:
        preds.append(_IpPred(s.ip_blocks, s.not_ip_blocks))
    if s.remote_ip_blocks or s.not_remote_ip_blocks:
        preds.append(_IpPred(s.remote_ip_blocks, s.not_remote_ip_blocks))
    if s.namespaces or s.not_namespaces:
        preds.append(_NamespacePred(s.namespaces, s.not_namespaces))
    if s.request_principals or s.not_request_principals:
        preds.append(_RequestPrincipalPred(s.request_principals, s.not_request_principals))
    if s.principals or s.not_principals:
        preds.append(_PrincipalPred(s.principals, s.not_principals))
    if s.service_accounts or s.not_service_accounts:
        preds.append(_ServiceAccountPred(s.service_accounts, s.not_service_accounts, namespace))
    return preds


def _operation(o: Operation) -> list[Pred]:
    preds: list[Pred] = []
    if o.ports or o.not_ports:
        preds.append(_PortPred(o.ports, o.not_ports))
    if o.paths or o.not_paths:
        preds.append(_PathPred(o.paths, o.not_paths))
    if o.methods or o.not_methods:
        preds.append(_MethodPred(o.methods, o.not_methods))
    if o.hosts or o.not_hosts:
        preds.append(_HostPred(o.hosts, o.not_hosts))
    return preds


def _condition(c: Condition) -> Pred:
    v, nv, key = c.values, c.not_values, c.key
    if key in ("source.ip", "remote.ip"):
        return _IpPred(v, nv)
    if key == "destination.ip":
        return _IpPred(v, nv, destination=True)
    if key == "destination.port":
        return _PortPred(tuple(int(p) for p in v), tuple(int(p) for p in nv))
    if key == "source.namespace":
        return _NamespacePred(v, nv)
    if key == "source.principal":
        return _PrincipalPred(v, nv)
    if key.startswith("request.headers"):
        return _HeaderPred(c.header, v, nv)
    if key == "request.auth.principal":
        return _RequestPrincipalPred(v, nv)
    if key == "request.auth.audiences":
        return _ClaimPred(("aud",), v, nv)
    if key == "request.auth.presenter":
        return _ClaimPred(("azp",), v, nv)
    if key.startswith("request.auth.claims"):
        return _ClaimPred(_claim_path(key), v, nv)
    return _AbsentPred(v, nv)  # connection.sni: not HTTP only, but never known here


__all__ = ["EnvoyPolicy", "Pred", "StringMatch", "compile_envoy"]
