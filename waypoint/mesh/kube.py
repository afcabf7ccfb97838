"""Kubernetes objects in, validated objects out: the kind registry and the object parser.

The folder source and (later) an API watcher both call :func:`parse_object`, so an object is
accepted or rejected the same way whatever feeds it. Kinds the data plane models (Namespace,
Pod, Service, EndpointSlice, waypoint Gateway) become model values; other known kinds are
kept as :class:`~waypoint.mesh.model.KubeObject` for their consumers, which can add a
validator with :meth:`KindRegistry.register_kind` (the L7 routing helper registers HTTPRoute and
GRPCRoute). Unknown kinds (Deployment, ConfigMap, ...) are skipped, not rejected.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f
from waypoint.mesh.kinds import ModelValue, ParseContext, core_parsers
from waypoint.mesh.model import KubeObject

log = logging.getLogger(__name__)

Validator = Callable[[Mapping[str, Any]], None]
"""Checks a whole object (a dict as loaded); raises ``ManifestError(field, message)``."""

# Kinds kept for later consumers even before anyone registers a validator for them.
_RAW_KINDS: dict[str, bool] = {  # kind -> cluster scoped
    "HTTPRoute": False,
    "GRPCRoute": False,
    "TCPRoute": False,
    "TLSRoute": False,
    "ReferenceGrant": False,
    "GatewayClass": True,
    "AuthorizationPolicy": False,
    "PeerAuthentication": False,
    "RequestAuthentication": False,
    "ServiceEntry": False,
    "WorkloadEntry": False,
    "DestinationRule": False,
    "ConfigMap": False,  # only the ``istio`` mesh config is read (waypoint/policy/meshconfig.py)
}


@dataclass(frozen=True, slots=True)
class ParsedObject:
    """An accepted object: its raw form, and its model value for modelled kinds."""

    obj: KubeObject
    model: ModelValue | None


class KindRegistry:
    """Which kinds a source accepts and how each is validated. One per source; never global."""

    def __init__(self) -> None:
        self._parsers = core_parsers()
        self._validators: dict[str, list[Validator]] = {}
        self._cluster_scoped: set[str] = {"Namespace"}
        for kind, cluster_scoped in _RAW_KINDS.items():
            self.register_kind(kind, cluster_scoped=cluster_scoped)

    def register_kind(
        self, kind: str, validator: Validator | None = None, *, cluster_scoped: bool = False
    ) -> None:
        """Accept ``kind``; run ``validator`` on each object of it (after the core checks)."""
        self._validators.setdefault(kind, [])
        if validator is not None:
            self._validators[kind].append(validator)
        if cluster_scoped:
            self._cluster_scoped.add(kind)

    def knows(self, kind: str) -> bool:
        return kind in self._parsers or kind in self._validators

    def cluster_scoped(self, kind: str) -> bool:
        return kind in self._cluster_scoped

    def identity(self, doc: Any, default_namespace: str = "default") -> tuple[str, str, str]:
        """Best-effort (kind, namespace, name) of a possibly invalid object: the key a problem
        report names, and under which the last good version of the object is kept."""
        if not isinstance(doc, Mapping):
            return ("", "", "")
        md_value = doc.get("metadata")
        md: Mapping[str, Any] = md_value if isinstance(md_value, Mapping) else {}
        kind = _text(doc.get("kind"))
        ns = "" if self.cluster_scoped(kind) else (_text(md.get("namespace")) or default_namespace)
        return (kind, ns, _text(md.get("name")))

    def parse(self, doc: Any, ctx: ParseContext, source: str = "") -> ParsedObject | None:
        """Validate one object; ``None`` for a kind nobody asked for. Raises ``ManifestError``."""
        kind = f.string(f.mapping(doc, "(document)", required=True).get("kind"), "kind", required=True)
        if not self.knows(kind):
            log.debug("ignored %s: kind %s is not used by the data plane", source or "object", kind)
            return None
        f.string(doc.get("apiVersion"), "apiVersion", required=True)
        obj = _kube_object(doc, kind, self.cluster_scoped(kind), ctx.default_namespace, source)
        parser = self._parsers.get(kind)
        model = parser(obj, ctx) if parser is not None else None
        for validator in self._validators.get(kind, ()):
            validator(doc)
        return ParsedObject(obj, model)


def default_registry() -> KindRegistry:
    return KindRegistry()


def _kube_object(
    doc: Mapping[str, Any], kind: str, cluster_scoped: bool, default_ns: str, source: str
) -> KubeObject:
    md = f.mapping(doc.get("metadata"), "metadata", required=True)
    name = f.dns_subdomain(f.string(md.get("name"), "metadata.name", required=True), "metadata.name")
    if cluster_scoped:
        namespace = ""
    else:
        namespace = f.string(md.get("namespace"), "metadata.namespace", default=default_ns) or default_ns
        f.dns_label(namespace, "metadata.namespace")
    return KubeObject(
        kind=kind,
        namespace=namespace,
        name=name,
        labels=MappingProxyType(f.string_map(md.get("labels"), "metadata.labels")),
        annotations=MappingProxyType(f.string_map(md.get("annotations"), "metadata.annotations")),
        creation_timestamp=_timestamp(md.get("creationTimestamp")),
        body=doc,
        source=source,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _timestamp(value: Any) -> str | None:
    """YAML turns unquoted RFC 3339 times into datetimes; keep the text form consumers compare."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        moment: datetime.datetime = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        return str(value)
    raise ManifestError("metadata.creationTimestamp", f"must be an RFC 3339 time, not {value!r}")


__all__ = [
    "KindRegistry",
    "ManifestError",
    "ParseContext",
    "ParsedObject",
    "Validator",
    "default_registry",
]
