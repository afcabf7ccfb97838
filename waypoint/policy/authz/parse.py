"""AuthorizationPolicy manifests -> :class:`~.model.AuthorizationPolicy`, rejecting what istiod would.

The checks follow istiod's admission validation (``IS:pkg/config/validation/validation.go``
``ValidateAuthorizationPolicy`` and ``IS:pkg/config/security/security.go`` ``ValidateAttribute``,
``ValidateIPs``, ``ValidatePorts``, ``CheckValidPathTemplate``): DENY or CUSTOM without ``rules``,
both ``selector`` and ``targetRefs``, empty ``from``/``to``/``source``/``operation``, empty values,
bad CIDRs and ports, unknown ``when`` keys. Each error is a ``ManifestError`` naming the dotted
field path, like the route validator (:mod:`waypoint.l7.routing.parse`). Unknown fields are
rejected too (the CRD's structural schema), so a typo such as ``rule:`` never silently widens access.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.policy.authz.model import (
    DRY_RUN_ANNOTATION,
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
    TargetRef,
)

log = logging.getLogger(__name__)

_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
_SPEC_KEYS = frozenset({"selector", "targetRef", "targetRefs", "action", "provider", "rules"})
_RULE_KEYS = frozenset({"from", "to", "when"})
_SOURCE_FIELDS = {  # API name -> Source attribute
    "principals": "principals",
    "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals",
    "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks",
    "notRemoteIpBlocks": "not_remote_ip_blocks",
}
_OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
# Target kinds istiod accepts (validation.go ``validatePolicyTargetReference``); group "" = core.
_TARGET_KINDS = {
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
    ("", "Service"),
    ("networking.istio.io", "ServiceEntry"),
}
# Istio keys we accept and can evaluate (security.go ``ValidateAttribute``).
_WHEN_EXACT = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
_WHEN_MAP_PREFIXES = ("request.headers", "request.auth.claims")
_WHEN_REPLACED = {
    "destination.namespace": "is replaced by the metadata.namespace",
    "destination.name": "is a deprecated attribute: only supported in v1alpha1",
    "destination.user": "is a deprecated attribute: only supported in v1alpha1",
}
# security.go ``unsupportedPathTempRegex``: named variables, "{}", and bare "*"/"**" segments.
_BAD_TEMPLATE = re.compile(r"/{\w+=\*[*]?}|{\w*}|/\*[*]?|\*[*]?/")
T = TypeVar("T")
_PORT = re.compile(r"^[0-9]{1,5}$")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def validate_authorization_policy(doc: Mapping[str, Any]) -> None:
    """For ``KindRegistry.register_kind("AuthorizationPolicy", validate_authorization_policy)``."""
    md = f.mapping(doc.get("metadata"), "metadata")
    namespace = f.string(md.get("namespace"), "metadata.namespace") or "default"
    parse_authorization_policy(doc, namespace)


def parse_authorization_policy(doc: Mapping[str, Any], namespace: str) -> AuthorizationPolicy:
    """The policy in ``doc`` (its ``metadata.namespace`` resolved to ``namespace`` by the loader)."""
    api_version = f.string(doc.get("apiVersion"), "apiVersion", required=True)
    if api_version not in _API_VERSIONS:
        raise ManifestError("apiVersion", f"must be one of {', '.join(_API_VERSIONS)}, not {api_version!r}")
    md = f.mapping(doc.get("metadata"), "metadata", required=True)
    name = f.string(md.get("name"), "metadata.name", required=True)
    annotations = f.string_map(md.get("annotations"), "metadata.annotations")
    spec = f.mapping(doc.get("spec"), "spec")
    _no_unknown(spec, _SPEC_KEYS, "spec")
    action = _action(spec.get("action"))
    selector = _selector(spec.get("selector"))
    target_refs = parse_target_refs(spec, namespace)
    if selector is not None and target_refs:
        raise ManifestError("spec", "only one of targetRefs or selector can be set")
    provider = _provider(spec.get("provider"), action)
    raw_rules = spec.get("rules")
    rules = tuple(_rule(r, f"spec.rules[{i}]", action) for i, r in enumerate(f.sequence(raw_rules, "spec.rules")))
    if action in (Action.DENY, Action.CUSTOM) and not rules:
        raise ManifestError(
            "spec.rules",
            f"{action.value} action without rules is meaningless as it will never be triggered; "
            "add an empty rule {} to trigger it for every request",
        )
    return AuthorizationPolicy(
        namespace=namespace,
        name=name,
        action=action,
        rules=rules,
        selector=selector,
        target_refs=target_refs,
        provider=provider,
        dry_run=_dry_run(annotations.get(DRY_RUN_ANNOTATION), namespace, name),
    )


def _no_unknown(obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in known:
            raise ManifestError(f.key_path(path, str(key)), "unknown field")


def _action(raw: Any) -> Action:
    text = f.string(raw, "spec.action", default="ALLOW")
    try:
        return Action(text)
    except ValueError:
        raise ManifestError("spec.action", f"must be one of ALLOW, DENY, AUDIT, CUSTOM, not {text!r}") from None


def _selector(raw: Any) -> Mapping[str, str] | None:
    if raw is None:
        return None
    sel = f.mapping(raw, "spec.selector")
    _no_unknown(sel, frozenset({"matchLabels"}), "spec.selector")
    return MappingProxyType(f.string_map(sel.get("matchLabels"), "spec.selector.matchLabels"))


def parse_target_refs(spec: Mapping[str, Any], namespace: str) -> tuple[TargetRef, ...]:
    refs: list[TargetRef] = []
    if spec.get("targetRef") is not None:  # deprecated singular form, still served
        refs.append(_target_ref(spec["targetRef"], "spec.targetRef", namespace))
    if spec.get("targetRef") is not None and spec.get("targetRefs"):
        raise ManifestError("spec", "only one of targetRef or targetRefs can be set")
    for i, raw in enumerate(f.sequence(spec.get("targetRefs"), "spec.targetRefs")):
        refs.append(_target_ref(raw, f"spec.targetRefs[{i}]", namespace))
    return tuple(refs)


def _target_ref(raw: Any, path: str, namespace: str) -> TargetRef:
    ref = f.mapping(raw, path, required=True)
    _no_unknown(ref, frozenset({"group", "kind", "name", "namespace"}), path)
    group = f.string(ref.get("group"), f"{path}.group")
    kind = f.string(ref.get("kind"), f"{path}.kind", required=True)
    name = f.string(ref.get("name"), f"{path}.name", required=True)
    ref_ns = f.string(ref.get("namespace"), f"{path}.namespace")
    if group == "core":
        group = ""
    if (group, kind) not in _TARGET_KINDS:
        allowed = ", ".join(sorted(f"{k} ({g or 'core'})" for g, k in _TARGET_KINDS))
        raise ManifestError(path, f"group {group!r} kind {kind!r} is not supported; use one of {allowed}")
    if ref_ns and ref_ns != namespace:
        raise ManifestError(f"{path}.namespace", "cross namespace referencing is not supported")
    return TargetRef(group=group, kind=kind, name=name, namespace=ref_ns)


def _provider(raw: Any, action: Action) -> str:
    if raw is None:
        return ""
    if action is not Action.CUSTOM:
        raise ManifestError("spec.provider", f"must not be set with action {action.value}")
    prov = f.mapping(raw, "spec.provider")
    _no_unknown(prov, frozenset({"name"}), "spec.provider")
    return f.string(prov.get("name"), "spec.provider.name", required=True)


def _dry_run(raw: str | None, namespace: str, name: str) -> bool:
    """istiod parses the annotation with Go's ParseBool and enforces the policy when it cannot
    (``IS:.../ambient/authorization.go`` ``convertAuthorizationPolicy``): never fail open."""
    if raw is None or raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    log.warning(
        "AuthorizationPolicy %s/%s: %s=%r is not a boolean; enforcing it", namespace, name, DRY_RUN_ANNOTATION, raw
    )
    return False


def _rule(raw: Any, path: str, action: Action) -> Rule:
    if raw is None:
        raise ManifestError(path, "a rule must not be null (use {} to match everything)")
    rule = f.mapping(raw, path)
    _no_unknown(rule, _RULE_KEYS, path)
    sources = _entries(rule, "from", "source", path, _source)
    operations = _entries(rule, "to", "operation", path, _operation)
    conditions = tuple(
        _condition(c, f"{path}.when[{i}]") for i, c in enumerate(f.sequence(rule.get("when"), f"{path}.when"))
    )
    if action is Action.CUSTOM:
        _custom_limits(sources, conditions, path)
    return Rule(sources=sources, operations=operations, conditions=conditions)


def _entries(
    rule: Mapping[str, Any], key: str, inner: str, path: str, parse: Callable[[Mapping[str, Any], str], T]
) -> tuple[T, ...]:
    """``from``/``to``: present means non-empty, and each entry needs its non-empty body."""
    if key not in rule:
        return ()
    items = f.sequence(rule[key], f"{path}.{key}")
    if not items:
        raise ManifestError(f"{path}.{key}", "must not be empty")
    out: list[T] = []
    for i, item in enumerate(items):
        entry_path = f"{path}.{key}[{i}]"
        entry = f.mapping(item, entry_path, required=True)
        _no_unknown(entry, frozenset({inner}), entry_path)
        body = f.mapping(entry.get(inner), f"{entry_path}.{inner}", required=True)
        if not body:
            raise ManifestError(f"{entry_path}.{inner}", "must not be empty")
        out.append(parse(body, f"{entry_path}.{inner}"))
    return tuple(out)


def _values(raw: Any, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(f.sequence(raw, path)):
        text = f.string(v, f"{path}[{i}]", required=True)
        out.append(text)
    return tuple(out)


def _source(body: Mapping[str, Any], path: str) -> Source:
    _no_unknown(body, frozenset(_SOURCE_FIELDS), path)
    values = {attr: _values(body.get(name), f"{path}.{name}") for name, attr in _SOURCE_FIELDS.items()}
    if not any(values.values()):
        raise ManifestError(path, "must not be empty")
    identity = values["principals"] or values["not_principals"] or values["namespaces"] or values["not_namespaces"]
    if identity and (values["service_accounts"] or values["not_service_accounts"]):
        raise ManifestError(path, "cannot set serviceAccounts with namespaces or principals")
    for name in ("serviceAccounts", "notServiceAccounts"):
        for i, sa in enumerate(values[_SOURCE_FIELDS[name]]):
            parts = sa.split("/")
            if len(parts) > 2 or not all(parts):
                raise ManifestError(
                    f"{path}.{name}[{i}]", f"{sa!r} must be <serviceaccount> or <namespace>/<serviceaccount>"
                )
    for name in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
        for i, block in enumerate(values[_SOURCE_FIELDS[name]]):
            check_ip_block(block, f"{path}.{name}[{i}]")
    return Source(**values)


def _operation(body: Mapping[str, Any], path: str) -> Operation:
    _no_unknown(body, frozenset(_OPERATION_FIELDS), path)
    texts = {name: _values(body.get(name), f"{path}.{name}") for name in _OPERATION_FIELDS}
    if not any(texts.values()):
        raise ManifestError(path, "must not be empty")
    for name in ("paths", "notPaths"):
        for i, p in enumerate(texts[name]):
            if ("{*}" in p or "{**}" in p) and _BAD_TEMPLATE.search(p):
                raise ManifestError(f"{path}.{name}[{i}]", f"invalid or unsupported path template {p!r}")
    return Operation(
        hosts=texts["hosts"],
        not_hosts=texts["notHosts"],
        ports=tuple(check_port(p, f"{path}.ports[{i}]") for i, p in enumerate(texts["ports"])),
        not_ports=tuple(check_port(p, f"{path}.notPorts[{i}]") for i, p in enumerate(texts["notPorts"])),
        methods=texts["methods"],
        not_methods=texts["notMethods"],
        paths=texts["paths"],
        not_paths=texts["notPaths"],
    )


def _condition(raw: Any, path: str) -> Condition:
    cond = f.mapping(raw, path, required=True)
    _no_unknown(cond, frozenset({"key", "values", "notValues"}), path)
    key = f.string(cond.get("key"), f"{path}.key", required=True)
    values = _values(cond.get("values"), f"{path}.values")
    not_values = _values(cond.get("notValues"), f"{path}.notValues")
    if not values and not not_values:
        raise ManifestError(path, f"at least one of values or notValues must be set for key {key}")
    header = _when_key(key, f"{path}.key")
    for name, vals in (("values", values), ("notValues", not_values)):
        for i, v in enumerate(vals):
            where = f"{path}.{name}[{i}]"
            if key in ("source.ip", "remote.ip", "destination.ip"):
                check_ip_block(v, where)
            elif key == "destination.port":
                check_port(v, where)
    return Condition(key=key, values=values, not_values=not_values, header=header)


def _when_key(key: str, path: str) -> str:
    """Checks the key; returns the lower-cased header name for ``request.headers[name]``."""
    if key in _WHEN_EXACT:
        return ""
    if key in _WHEN_REPLACED:
        raise ManifestError(path, f"attribute {key} {_WHEN_REPLACED[key]}")
    if key.startswith("destination.labels"):
        raise ManifestError(path, f"attribute {key} is replaced by the workload selector")
    if key.startswith("experimental.envoy.filters."):
        raise ManifestError(path, f"attribute {key} reads Envoy filter metadata, which this data plane does not have")
    for prefix in _WHEN_MAP_PREFIXES:
        if key.startswith(prefix):
            inner = key[len(prefix) :]
            if len(inner) < 3 or inner[0] != "[" or inner[-1] != "]":
                raise ManifestError(path, f"bad key ({key}): should have format {prefix}[name]")
            return inner[1:-1].lower() if prefix == "request.headers" else ""
    raise ManifestError(path, f"unknown attribute: {key}")


def _custom_limits(sources: tuple[Source, ...], conditions: tuple[Condition, ...], path: str) -> None:
    """validation.go: CUSTOM cannot use identity fields (the provider decides on those)."""
    for i, s in enumerate(sources):
        for name in (
            "principals",
            "notPrincipals",
            "namespaces",
            "notNamespaces",
            "serviceAccounts",
            "notServiceAccounts",
            "requestPrincipals",
            "notRequestPrincipals",
        ):
            if getattr(s, _SOURCE_FIELDS[name]):
                raise ManifestError(f"{path}.from[{i}].source.{name}", "is not supported with CUSTOM action")
    for i, c in enumerate(conditions):
        if c.key in ("source.namespace", "source.principal") or c.key.startswith("request.auth."):
            raise ManifestError(f"{path}.when[{i}].key", f"{c.key} is not supported with CUSTOM action")


def check_ip_block(text: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A single IP or a CIDR (security.go ``ValidateIPs``: Go's netip, so host bits may be set)."""
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        kind = "CIDR range" if "/" in text else "IP address"
        raise ManifestError(path, f"bad {kind} ({text})") from None


def check_port(text: str, path: str) -> int:
    """security.go ``ValidatePorts``: a decimal number 0..65535, written as a string."""
    if not _PORT.match(text) or int(text) > 65535:
        raise ManifestError(path, f"bad port ({text}): must be a number 0..65535")
    return int(text)
