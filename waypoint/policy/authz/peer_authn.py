"""PeerAuthentication (security.istio.io/v1, v1beta1): validated values, as istiod admits them.

In ambient mode ztunnel never receives a PeerAuthentication; istiod turns the ones that apply to a
workload into L4 ``Authorization`` DENY policies (``IS:architecture/ambient/peer-authentication.md``;
facts §3.2). That conversion is :mod:`.peer_authn_l4`; this module only reads the manifests.

Validation follows ``IS:pkg/config/validation/validation.go`` ``ValidatePeerAuthentication``:
``portLevelMtls`` needs a workload selector, ports are 1..65535, each mode is one of
UNSET/DISABLE/PERMISSIVE/STRICT. Unknown fields are rejected (the CRD's structural schema), so a
typo such as ``mtl:`` never silently leaves a namespace PERMISSIVE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh import fields as f

_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
_SPEC_KEYS = frozenset({"selector", "mtls", "portLevelMtls"})


class Mode(Enum):
    """``PeerAuthentication.MutualTLS.Mode``. In ambient, HBONE between proxies is always mutual
    TLS whatever the mode says; the mode only decides whether plaintext into the pod (15006) is
    accepted. DISABLE cannot turn mTLS off there (API reference: "DISABLE mode is not supported").
    """

    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"

    @property
    def lenient(self) -> bool:
        """PERMISSIVE or DISABLE: plaintext accepted (istiod's ``isMtlsModePermissive || isMtlsModeDisable``)."""
        return self is Mode.PERMISSIVE or self is Mode.DISABLE


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """One accepted policy. ``port_level`` is sorted by port (istiod walks ``maps.SeqStable``).
    ``created`` is ``metadata.creationTimestamp`` as written ("" when absent, which sorts first,
    like Go's zero time): of several policies at one level, the oldest wins."""

    namespace: str
    name: str
    mode: Mode = Mode.UNSET
    selector: Mapping[str, str] | None = None  # matchLabels; None = no selector
    port_level: tuple[tuple[int, Mode], ...] = ()
    created: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_selector(self) -> bool:
        """istiod treats ``selector: {}`` like no selector (``len(MatchLabels) == 0``)."""
        return bool(self.selector)

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in (self.selector or {}).items())

    @property
    def age(self) -> tuple[str, str]:
        """Sort key: oldest first; the name breaks ties so the choice never depends on file order."""
        return (self.created, self.name)


def validate_peer_authentication(doc: Mapping[str, Any]) -> None:
    """For ``KindRegistry.register_kind("PeerAuthentication", validate_peer_authentication)``."""
    md = f.mapping(doc.get("metadata"), "metadata")
    namespace = f.string(md.get("namespace"), "metadata.namespace") or "default"
    parse_peer_authentication(doc, namespace)


def parse_peer_authentication(doc: Mapping[str, Any], namespace: str, created: str = "") -> PeerAuthentication:
    """The policy in ``doc`` (its namespace resolved by the loader; ``created`` is the object's
    ``creation_timestamp``, normalised by the loader, which YAML may have turned into a datetime)."""
    api_version = f.string(doc.get("apiVersion"), "apiVersion", required=True)
    if api_version not in _API_VERSIONS:
        raise ManifestError("apiVersion", f"must be one of {', '.join(_API_VERSIONS)}, not {api_version!r}")
    md = f.mapping(doc.get("metadata"), "metadata", required=True)
    name = f.string(md.get("name"), "metadata.name", required=True)
    spec = f.mapping(doc.get("spec"), "spec")
    _no_unknown(spec, _SPEC_KEYS, "spec")
    selector = _selector(spec.get("selector"))
    mode = _mtls(spec.get("mtls"), "spec.mtls")
    port_level = _port_level(spec.get("portLevelMtls"))
    if port_level and selector is None:
        raise ManifestError("spec.portLevelMtls", "portLevelMtls requires a workload selector")
    if port_level and not selector:
        raise ManifestError("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS")
    return PeerAuthentication(namespace, name, mode, selector, port_level, created)


def _no_unknown(obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in known:
            raise ManifestError(f.key_path(path, str(key)), "unknown field")


def _selector(raw: Any) -> Mapping[str, str] | None:
    if raw is None:
        return None
    sel = f.mapping(raw, "spec.selector")
    _no_unknown(sel, frozenset({"matchLabels"}), "spec.selector")
    return MappingProxyType(f.string_map(sel.get("matchLabels"), "spec.selector.matchLabels"))


def _mtls(raw: Any, path: str) -> Mode:
    if raw is None:
        return Mode.UNSET
    mtls = f.mapping(raw, path, required=True)
    _no_unknown(mtls, frozenset({"mode"}), path)
    text = f.string(mtls.get("mode"), f"{path}.mode", default="UNSET")
    try:
        return Mode(text)
    except ValueError:
        modes = ", ".join(m.value for m in Mode)
        raise ManifestError(f"{path}.mode", f"must be one of {modes}, not {text!r}") from None


def _port_level(raw: Any) -> tuple[tuple[int, Mode], ...]:
    if raw is None:
        return ()
    ports = f.mapping(raw, "spec.portLevelMtls")
    if not ports:
        raise ManifestError("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")
    out: dict[int, Mode] = {}
    for key, value in ports.items():
        port = _port(key)
        path = f"spec.portLevelMtls[{port}]"
        if value is None:
            raise ManifestError(path, "must not be null")
        out[port] = _mtls(value, path)
    return tuple(sorted(out.items()))


def _port(key: Any) -> int:
    """Keys are numbers in YAML (``9090:``) or strings in JSON (``"9090":``)."""
    text = str(key)
    if isinstance(key, bool) or not text.isdigit() or not 0 < int(text) <= 65535:
        raise ManifestError(f"spec.portLevelMtls[{text}]", "port must be in range 1..65535")
    return int(text)
