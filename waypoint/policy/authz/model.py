"""An AuthorizationPolicy as validated values (security.istio.io/v1 and v1beta1).

These mirror the API's messages (``istio/api`` ``security/v1beta1/authorization_policy.proto``):
:class:`Source`, :class:`Operation`, :class:`Condition`, :class:`Rule`. Value lists keep the text
as written; the two compilers (:mod:`.ztunnel_rules` for the L4 form ztunnel evaluates,
:mod:`.envoy_rules` for the Envoy-RBAC form a waypoint evaluates) turn them into matchers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

DRY_RUN_ANNOTATION = "istio.io/dry-run"  # IS:pilot/pkg/security/authz/builder (annotation.IoIstioDryRun)


class Action(Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Source:
    """``from.source``: fields ANDed, values in a field ORed, ``not*`` fields negated."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()  # "sa" (policy's namespace) or "ns/sa"
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()

    @property
    def http_fields(self) -> tuple[str, ...]:
        """Fields ztunnel cannot evaluate (IS:.../ambient/authorization.go ``httpSources``)."""
        names = (
            ("remoteIpBlocks", self.remote_ip_blocks),
            ("notRemoteIpBlocks", self.not_remote_ip_blocks),
            ("requestPrincipals", self.request_principals),
            ("notRequestPrincipals", self.not_request_principals),
        )
        return tuple(name for name, values in names if values)


@dataclass(frozen=True, slots=True)
class Operation:
    """``to.operation``: ports are kept as validated numbers."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    @property
    def http_fields(self) -> tuple[str, ...]:
        """Fields ztunnel cannot evaluate (IS:.../ambient/authorization.go ``httpOperations``)."""
        names = (
            ("hosts", self.hosts),
            ("notHosts", self.not_hosts),
            ("methods", self.methods),
            ("notMethods", self.not_methods),
            ("paths", self.paths),
            ("notPaths", self.not_paths),
        )
        return tuple(name for name, values in names if values)


# `when` keys ztunnel evaluates (IS:.../ambient/authorization.go ``l4WhenAttributes``).
L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``when`` entry. ``header`` is the lower-cased name for ``request.headers[...]``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()
    header: str = ""

    @property
    def is_l4(self) -> bool:
        return self.key in L4_WHEN_KEYS


@dataclass(frozen=True, slots=True)
class Rule:
    """``from`` entries ORed, ``to`` entries ORed, every ``when`` ANDed; the three ANDed.

    ``sources``/``operations`` empty means the field was absent (matches anything).
    """

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str  # "" for core (Service)
    kind: str
    name: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """One accepted policy. ``rules == ()`` (absent or empty): the policy never matches, so an
    ALLOW without rules allows nothing (API reference, ``rules``: "If not set, the match will
    never occur"); ``(Rule(),)`` (``rules: [{}]``) matches everything."""

    namespace: str
    name: str
    action: Action
    rules: tuple[Rule, ...]
    selector: Mapping[str, str] | None = None  # matchLabels; None = no selector
    target_refs: tuple[TargetRef, ...] = ()
    provider: str = ""  # CUSTOM only
    dry_run: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
