"""RequestAuthentication (security.istio.io/v1, v1beta1): validated values, and which apply at a waypoint.

The API is ``istio/api`` ``security/v1beta1/request_authentication.proto`` and ``jwt.proto``
(``JWTRule``); validation follows ``IS:pkg/config/validation/validation.go``
``ValidateRequestAuthentication`` / ``validateJwtRule``. At a waypoint only ``targetRefs`` attach, as for
AuthorizationPolicy (facts §3.1: RequestAuthentication is Beta with ``targetRefs``): a Gateway naming
the waypoint, the ``istio-waypoint`` GatewayClass from the root namespace, or the destination Service
(:mod:`waypoint.policy.authz.scope`). A selector policy is a sidecar's or ztunnel's concern and
never applies here.

What a request meets is the union of the rules that apply, sorted by issuer
(``IS:pilot/pkg/security/authn/policy_applier.go`` ``newPolicyApplier``), compiled into a
:class:`~waypoint.policy.jwt_authenticator.JwtAuthenticator`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.mesh.model import MeshSnapshot, Service, Waypoint
from waypoint.policy.authz.model import TargetRef
from waypoint.policy.authz.parse import parse_target_refs
from waypoint.policy.authz.scope import attaches_to_service, attaches_to_waypoint
from waypoint.policy.jwt import Jwks, JwksError, parse_jwks

log = logging.getLogger(__name__)

_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
_SPEC_KEYS = frozenset({"selector", "targetRef", "targetRefs", "jwtRules"})
_RULE_KEYS = frozenset(
    {
        "issuer", "audiences", "jwksUri", "jwks_uri", "jwks", "fromHeaders", "fromParams", "fromCookies",
        "outputPayloadToHeader", "outputClaimToHeaders", "forwardOriginalToken", "timeout", "spaceDelimitedClaims",
    }
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_TIMEOUT_S = 5.0  # JWTRule.timeout default (policy_applier.go: durationpb 5s)
DEFAULT_SPACE_DELIMITED = ("permission", "scope")  # policy_applier.go buildSpaceDelimitedClaims


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One ``jwtRules`` entry. ``from_headers`` is ``(lower-case name, prefix)``;
    ``output_claim_to_headers`` is ``(lower-case header, claim)``."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[tuple[str, str], ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()
    forward_original_token: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    space_delimited_claims: tuple[str, ...] = DEFAULT_SPACE_DELIMITED


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    namespace: str
    name: str
    jwt_rules: tuple[JwtRule, ...]
    selector: Mapping[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def validate_request_authentication(doc: Mapping[str, Any]) -> None:
    """For ``KindRegistry.register_kind("RequestAuthentication", validate_request_authentication)``."""
    md = f.mapping(doc.get("metadata"), "metadata")
    parse_request_authentication(doc, f.string(md.get("namespace"), "metadata.namespace") or "default")


def parse_request_authentication(doc: Mapping[str, Any], namespace: str) -> RequestAuthentication:
    api_version = f.string(doc.get("apiVersion"), "apiVersion", required=True)
    if api_version not in _API_VERSIONS:
        raise ManifestError("apiVersion", f"must be one of {', '.join(_API_VERSIONS)}, not {api_version!r}")
    md = f.mapping(doc.get("metadata"), "metadata", required=True)
    name = f.string(md.get("name"), "metadata.name", required=True)
    spec = f.mapping(doc.get("spec"), "spec")
    _no_unknown(spec, _SPEC_KEYS, "spec")
    selector = None
    if spec.get("selector") is not None:
        sel = f.mapping(spec["selector"], "spec.selector")
        _no_unknown(sel, frozenset({"matchLabels"}), "spec.selector")
        selector = MappingProxyType(f.string_map(sel.get("matchLabels"), "spec.selector.matchLabels"))
    target_refs = parse_target_refs(spec, namespace)
    if selector is not None and target_refs:
        raise ManifestError("spec", "only one of targetRefs or workloadSelector can be set")
    rules = tuple(
        _rule(raw, f"spec.jwtRules[{i}]") for i, raw in enumerate(f.sequence(spec.get("jwtRules"), "spec.jwtRules"))
    )
    return RequestAuthentication(namespace, name, rules, selector, target_refs)


def _no_unknown(obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in known:
            raise ManifestError(f.key_path(path, str(key)), "unknown field")


def _strings(raw: Any, path: str) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(f.sequence(raw, path)):
        text = f.string(value, f"{path}[{i}]")
        if not text:
            raise ManifestError(f"{path}[{i}]", "must be a non-empty string")
        out.append(text)
    return tuple(out)


def _rule(raw: Any, path: str) -> JwtRule:
    r = f.mapping(raw, path, required=True)
    _no_unknown(r, _RULE_KEYS, path)
    issuer = f.string(r.get("issuer"), f"{path}.issuer")
    jwks_uri = f.string(r.get("jwksUri", r.get("jwks_uri")), f"{path}.jwksUri")
    if not issuer and not jwks_uri:
        raise ManifestError(f"{path}.issuer", "issuer or jwksUri must be non-empty string")
    if jwks_uri:
        _check_jwks_uri(jwks_uri, f"{path}.jwksUri")
    jwks = f.string(r.get("jwks"), f"{path}.jwks")
    if jwks:
        try:
            parse_jwks(jwks)
        except JwksError as e:
            raise ManifestError(f"{path}.jwks", f"jwks parse error: {e}") from None
    return JwtRule(
        issuer=issuer,
        audiences=_strings(r.get("audiences"), f"{path}.audiences"),
        jwks_uri=jwks_uri,
        jwks=jwks,
        from_headers=_from_headers(r.get("fromHeaders"), f"{path}.fromHeaders"),
        from_params=_strings(r.get("fromParams"), f"{path}.fromParams"),
        from_cookies=_strings(r.get("fromCookies"), f"{path}.fromCookies"),
        output_payload_to_header=_header(r.get("outputPayloadToHeader"), f"{path}.outputPayloadToHeader"),
        output_claim_to_headers=_claim_headers(r.get("outputClaimToHeaders"), f"{path}.outputClaimToHeaders"),
        forward_original_token=_bool(r.get("forwardOriginalToken"), f"{path}.forwardOriginalToken"),
        timeout_s=_duration(r.get("timeout"), f"{path}.timeout"),
        space_delimited_claims=tuple(
            sorted({*_strings(r.get("spaceDelimitedClaims"), f"{path}.spaceDelimitedClaims"), *DEFAULT_SPACE_DELIMITED})
        ),
    )


def _check_jwks_uri(uri: str, path: str) -> None:
    """``IS:pkg/config/security`` ``ParseJwksURI``: http or https, with a host."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ManifestError(path, f"invalid jwksUri {uri!r}: must be an http or https URL with a host")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ManifestError(path, f"invalid jwksUri {uri!r}: bad port") from None


def _header(raw: Any, path: str) -> str:
    name = f.string(raw, path)
    if name and not _HEADER_NAME.match(name):
        raise ManifestError(path, f"invalid header name {name!r}")
    return name.lower()


def _from_headers(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(f.sequence(raw, path)):
        loc = f.mapping(item, f"{path}[{i}]", required=True)
        _no_unknown(loc, frozenset({"name", "prefix"}), f"{path}[{i}]")
        name = _header(loc.get("name"), f"{path}[{i}].name")
        if not name:
            raise ManifestError(f"{path}[{i}].name", "location header name must be non-empty string")
        out.append((name, f.string(loc.get("prefix"), f"{path}[{i}].prefix")))
    return tuple(out)


def _claim_headers(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(f.sequence(raw, path)):
        entry = f.mapping(item, f"{path}[{i}]", required=True)
        _no_unknown(entry, frozenset({"header", "claim"}), f"{path}[{i}]")
        header = _header(entry.get("header"), f"{path}[{i}].header")
        claim = f.string(entry.get("claim"), f"{path}[{i}].claim")
        if not header or not claim:
            raise ManifestError(f"{path}[{i}]", "outputClaimToHeaders header and claim value must be non-empty string")
        out.append((header, claim))
    return tuple(out)


def _bool(raw: Any, path: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise ManifestError(path, "must be true or false")
    return raw


def _duration(raw: Any, path: str) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT_S
    text = f.string(raw, path)
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) * _UNITS[m.group(2)] <= 0:
        raise ManifestError(path, f"invalid duration {text!r} (e.g. 5s, 500ms)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_request_authentications(snapshot: MeshSnapshot) -> list[RequestAuthentication]:
    """Every valid policy in source order; invalid ones are skipped with an error (as admission would refuse them)."""
    out = []
    for obj in snapshot.objects("RequestAuthentication"):
        try:
            out.append(parse_request_authentication(obj.body, obj.namespace))
        except ManifestError as e:
            log.error("RequestAuthentication %s/%s ignored: %s: %s", obj.namespace, obj.name, e.field, e.message)
    return out


KeySource = Callable[[JwtRule], "Jwks | None"]
"""The current keys of a rule: its inline ``jwks``, or what was fetched from ``jwksUri``; None while
there are none (a failed fetch), and a token of that issuer then fails (fail closed)."""


@dataclass(frozen=True, slots=True)
class WaypointRules:
    """The rules at one waypoint: Gateway-level ones, and per Service (gateway-level included), each
    sorted by issuer. A Service absent from ``by_service`` has just the gateway-level rules."""

    gateway: tuple[JwtRule, ...]
    by_service: Mapping[tuple[str, str], tuple[JwtRule, ...]]

    @property
    def empty(self) -> bool:
        return not self.gateway and not self.by_service

    def all_rules(self) -> Iterable[JwtRule]:
        yield from self.gateway
        for rules in self.by_service.values():
            yield from rules


def rules_for_waypoint(
    policies: Iterable[RequestAuthentication], waypoint: Waypoint, root_namespace: str
) -> WaypointRules:
    gateway: list[JwtRule] = []
    extra: dict[tuple[str, str], list[JwtRule]] = {}
    for p in policies:
        if attaches_to_waypoint(p, waypoint, root_namespace):
            gateway.extend(p.jwt_rules)
        for name in sorted({ref.name for ref in p.target_refs}):
            if attaches_to_service(p, p.namespace, name):
                extra.setdefault((p.namespace, name), []).extend(p.jwt_rules)

    def by_issuer(rules: Iterable[JwtRule]) -> tuple[JwtRule, ...]:
        return tuple(sorted(rules, key=lambda r: r.issuer))

    return WaypointRules(by_issuer(gateway), {k: by_issuer([*gateway, *v]) for k, v in extra.items()})


def service_key(service: Service) -> tuple[str, str]:
    return (service.namespace, service.name)
