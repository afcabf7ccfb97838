"""The authorizers: one per enforcement point, each built once per :class:`MeshSnapshot`.

- :class:`ZtunnelAuthorizer`: the destination ztunnel, L4 facts, selector / namespace / mesh-wide
  policies in ztunnel's form (:mod:`.ztunnel_rules`), looked up per destination workload.
- :class:`WaypointAuthorizer`: one waypoint, ``targetRefs`` policies (:mod:`.scope`) in Envoy's
  form (:mod:`.envoy_rules`): HTTP for requests, TCP for opaque tunnels; per destination service.
- :class:`SidecarAuthorizer`: what a sidecar would decide (selector policies with HTTP facts). No
  role uses it; the conformance run does, for cases taken from Istio's sidecar-mode tests.

Compilation does all the work; a check is a dict lookup and the matchers. When no policy applies
the shared :data:`~waypoint.policy.attributes.ALLOW` is returned, and every other answer except
a dry-run report is a Decision built at compile time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from waypoint.errors import ManifestError
from waypoint.mesh.model import MeshSnapshot, Service, Waypoint, Workload
from waypoint.policy.attributes import ConnectionFacts, Decision, RequestFacts
from waypoint.policy.authz.decide import EMPTY, Matcher, PolicySet, custom_providers, evaluate
from waypoint.policy.authz.envoy_rules import EnvoyPolicy, compile_envoy
from waypoint.policy.authz.model import AuthorizationPolicy
from waypoint.policy.authz.parse import parse_authorization_policy
from waypoint.policy.authz.peer_authn import PeerAuthentication
from waypoint.policy.authz.peer_authn_l4 import PeerAuthnIndex, load_peer_authentications
from waypoint.policy.authz.scope import (
    DEFAULT_ROOT_NAMESPACE,
    attaches_to_service,
    attaches_to_waypoint,
    selects_workload,
)
from waypoint.policy.authz.ztunnel_rules import L4Policy, compile_l4

log = logging.getLogger(__name__)


def load_policies(snapshot: MeshSnapshot, root_namespace: str) -> list[AuthorizationPolicy]:
    """Every valid policy, root namespace first, then in source order (istiod lists the root
    namespace's, then the workload namespace's). Invalid ones (a registry without the validator)
    are skipped with an error, as istiod's admission would have refused them."""
    out: list[AuthorizationPolicy] = []
    for obj in snapshot.objects("AuthorizationPolicy"):
        try:
            out.append(parse_authorization_policy(obj.body, obj.namespace))
        except ManifestError as e:
            log.error("AuthorizationPolicy %s/%s ignored: %s: %s", obj.namespace, obj.name, e.field, e.message)
    out.sort(key=lambda p: p.namespace != root_namespace)
    return out


class _WorkloadIndex:
    """Per-workload policy sets, keyed by uid; a workload not in the snapshot is scoped on the fly.
    ``extra``: policies derived per workload (PeerAuthentication's converted forms), after these."""

    def __init__(
        self, snapshot: MeshSnapshot, compiled: list[Matcher], root_namespace: str,
        extra: Callable[[str, Mapping[str, str]], list[L4Policy]] | None = None,
    ) -> None:
        self._compiled = compiled
        self._root = root_namespace
        self._extra = extra
        self._by_uid: dict[str, tuple[Workload, PolicySet]] = {}
        for w in snapshot.workloads:
            self._by_uid[w.uid] = (w, self._select(w.namespace, w.labels))

    def _select(self, namespace: str, labels: Mapping[str, str]) -> PolicySet:
        chosen = [m for m in self._compiled if selects_workload(m.policy, namespace, labels, self._root)]
        if self._extra is not None:
            chosen.extend(self._extra(namespace, labels))
        return PolicySet(chosen) if chosen else EMPTY

    def lookup(self, workload: Workload) -> PolicySet:
        hit = self._by_uid.get(workload.uid)
        if hit is not None:
            known, policies = hit
            if known is workload or (known.namespace == workload.namespace and known.labels == workload.labels):
                return policies
        return self._select(workload.namespace, workload.labels)


class ZtunnelAuthorizer:
    """The destination ztunnel's check of an inbound connection (``ZT:src/proxy/inbound.rs``
    ``assert_rbac``). ``targetRefs`` policies never reach ztunnel; CUSTOM/AUDIT are refused.
    PeerAuthentications arrive as istiod converts them (:mod:`.peer_authn_l4`)."""

    def __init__(
        self, policies: Iterable[AuthorizationPolicy], snapshot: MeshSnapshot, *, root_namespace: str,
        peer_authentications: Iterable[PeerAuthentication] = (),
    ) -> None:
        compiled: list[Matcher] = [c for c in (compile_l4(p) for p in policies) if c is not None]
        peer = PeerAuthnIndex(peer_authentications, root_namespace)
        self._index = _WorkloadIndex(snapshot, compiled, root_namespace, peer.matchers_for)

    @classmethod
    def from_snapshot(
        cls, snapshot: MeshSnapshot, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
    ) -> ZtunnelAuthorizer:
        return cls(load_policies(snapshot, root_namespace), snapshot, root_namespace=root_namespace,
                   peer_authentications=load_peer_authentications(snapshot))

    def check(self, workload: Workload, facts: ConnectionFacts) -> Decision:
        """``workload`` is the destination pod; ``facts`` the connection as ztunnel sees it."""
        return evaluate(self._index.lookup(workload), facts, None)

    def policy_names(self, workload: Workload) -> list[str]:
        """``ns/name`` of the policies ztunnel holds for this workload (config dump)."""
        return list(self._index.lookup(workload).names)


class SidecarAuthorizer:
    """Selector-scoped policies evaluated with HTTP facts, as a sidecar's Envoy would."""

    def __init__(self, policies: Iterable[AuthorizationPolicy], snapshot: MeshSnapshot, *, root_namespace: str) -> None:
        compiled: list[Matcher] = [compile_envoy(p, for_tcp=False) for p in policies if not p.target_refs]
        self._index = _WorkloadIndex(snapshot, compiled, root_namespace)

    @classmethod
    def from_snapshot(
        cls, snapshot: MeshSnapshot, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
    ) -> SidecarAuthorizer:
        return cls(load_policies(snapshot, root_namespace), snapshot, root_namespace=root_namespace)

    def check_request(self, workload: Workload, facts: RequestFacts) -> Decision:
        return evaluate(self._index.lookup(workload), facts.connection, facts)


class _ServiceSets:
    """One waypoint's policy sets in one form (HTTP or TCP): gateway-level, plus per service."""

    def __init__(
        self,
        gateway: list[Matcher],
        by_service: Mapping[tuple[str, str], list[Matcher]],
        asked: Collection[str] = (),
        skipped: Collection[str] = (),
    ) -> None:
        self.gateway_only = PolicySet(gateway, asked, skipped) if gateway else EMPTY
        self._merged: dict[tuple[str, str], PolicySet] = {
            key: PolicySet(gateway + extra, asked, skipped) for key, extra in by_service.items()
        }

    def lookup(self, service: Service | None) -> PolicySet:
        if service is None:
            return self.gateway_only
        return self._merged.get((service.namespace, service.name), self.gateway_only)


class WaypointAuthorizer:
    """One waypoint's RBAC: the policies attached to it (Gateway / GatewayClass) and to the
    destination Service of each request (facts §3.1-3.2; ``listener_waypoint.go`` RBAC filter).

    ``providers``: the MeshConfig's ext-authz providers, name -> kind (``"http"``/``"grpc"``).
    CUSTOM policies naming one of them are left to the ext_authz filter (:meth:`custom_check`);
    on opaque TCP an HTTP provider's CUSTOM policies do not apply (Istio's ``buildTCP``), and a
    gRPC provider's still deny (the network ext_authz is not built here yet)."""

    def __init__(
        self,
        policies: Iterable[AuthorizationPolicy],
        waypoint: Waypoint,
        *,
        root_namespace: str,
        providers: Mapping[str, str] | None = None,
    ) -> None:
        gateway: list[AuthorizationPolicy] = []
        by_service: dict[tuple[str, str], list[AuthorizationPolicy]] = {}
        for p in policies:
            if attaches_to_waypoint(p, waypoint, root_namespace):
                gateway.append(p)
            for name in sorted({ref.name for ref in p.target_refs}):
                if attaches_to_service(p, p.namespace, name):
                    by_service.setdefault((p.namespace, name), []).append(p)
        providers = providers or {}
        http_kind = [name for name, kind in providers.items() if kind == "http"]
        self._http = self._sets(gateway, by_service, lambda p: compile_envoy(p, for_tcp=False), asked=providers)
        self._tcp = self._sets(gateway, by_service, lambda p: compile_envoy(p, for_tcp=True), skipped=http_kind)

    @staticmethod
    def _sets(
        gateway: list[AuthorizationPolicy],
        by_service: Mapping[tuple[str, str], list[AuthorizationPolicy]],
        compile_one: Callable[[AuthorizationPolicy], EnvoyPolicy],
        asked: Collection[str] = (),
        skipped: Collection[str] = (),
    ) -> _ServiceSets:
        compiled: dict[str, EnvoyPolicy] = {}

        def get(p: AuthorizationPolicy) -> Matcher:
            if p.key not in compiled:
                compiled[p.key] = compile_one(p)
            return compiled[p.key]

        by_key = {k: [get(p) for p in v] for k, v in by_service.items()}
        return _ServiceSets([get(p) for p in gateway], by_key, asked, skipped)

    @classmethod
    def from_snapshot(
        cls,
        snapshot: MeshSnapshot,
        waypoint: Waypoint,
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        providers: Mapping[str, str] | None = None,
    ) -> WaypointAuthorizer:
        return cls(load_policies(snapshot, root_namespace), waypoint, root_namespace=root_namespace,
                   providers=providers)

    def custom_check(self, service: Service | None, facts: RequestFacts) -> tuple[str, ...]:
        """The ext-authz providers to ask about this request, in order (empty: none; most requests).
        Their allow still goes through :meth:`check_request` (CUSTOM first, then DENY, then ALLOW)."""
        policies = self._http.lookup(service)
        if not policies.ext_authz:
            return ()
        return custom_providers(policies, facts.connection, facts)

    def has_custom(self, service: Service | None) -> bool:
        """Whether any configured provider's CUSTOM policy applies to requests to ``service``."""
        return bool(self._http.lookup(service).ext_authz)

    def check_request(self, service: Service | None, facts: RequestFacts) -> Decision:
        """An HTTP or gRPC request to ``service`` (``None``: addressed to a workload, not a service)."""
        return evaluate(self._http.lookup(service), facts.connection, facts)

    def check_connection(self, service: Service | None, facts: ConnectionFacts) -> Decision:
        """An opaque TCP stream through the waypoint (Envoy's network RBAC, ``forTCP``)."""
        return evaluate(self._tcp.lookup(service), facts, None)

    def policy_names(self, service: Service | None) -> list[str]:
        return list(self._http.lookup(service).names)


__all__ = ["L4Policy", "SidecarAuthorizer", "WaypointAuthorizer", "ZtunnelAuthorizer", "load_policies"]
