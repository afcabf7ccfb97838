"""istiod's conversion of PeerAuthentication into the L4 DENY policies ztunnel enforces (ambient).

ztunnel never receives PeerAuthentication (``IS:architecture/ambient/peer-authentication.md``,
facts §3.2): for each workload istiod computes the effective mode, mesh -> namespace -> workload,
and attaches at most one of two DENY ``Authorization``s (``IS:pilot/pkg/serviceregistry/ambient/
authorization.go``, ``convertedSelectorPeerAuthentications`` and ``convertPeerAuthentication``):

- ``<root>/istio_converted_static_strict``: ``notPrincipals: [presence]``, i.e. deny any connection
  without an mTLS peer identity (plaintext on 15006). Attached when the effective mode is STRICT
  and no port exception applies.
- ``<ns>/converted_peer_authentication_<name>``: made from a workload-level policy (selector, not in
  the root namespace) with ``portLevelMtls``, attached when a port differs from the workload's mode.
  Its groups are ORed: one per STRICT port (``notPrincipals: [presence]`` AND that port), plus one
  whose rules are ANDed (no principal AND ``notDestinationPorts: [each exempt port]``).

A policy without a selector is mesh-wide in the root namespace, namespace-wide elsewhere; of
several at one level the oldest wins (``getOldestPeerAuthn``); root-namespace policies with a
selector are ignored. UNSET inherits; PERMISSIVE and DISABLE both accept plaintext (current
istiod treats DISABLE as "not STRICT": in ambient it cannot turn off HBONE's mTLS).

Two deliberate departures, both where istiod's code contradicts its own comments and fails open
(the converted policy comes out empty while the static one is withheld): the "parent is STRICT"
test uses the effective parent mode (namespace unless UNSET, else mesh) in both places, where
istiod (a) skips a STRICT port when the mesh is STRICT even if the workload is PERMISSIVE (Go
``A || B && C || D`` precedence) and (b) treats an UNSET namespace under a STRICT mesh as not STRICT.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from waypoint.errors import ManifestError
from waypoint.mesh.model import MeshSnapshot
from waypoint.policy.authz.model import Action, AuthorizationPolicy, Rule
from waypoint.policy.authz.peer_authn import Mode, PeerAuthentication, parse_peer_authentication
from waypoint.policy.authz.ztunnel_rules import Clause, L4Match, L4Policy

log = logging.getLogger(__name__)

STATIC_STRICT_NAME = "istio_converted_static_strict"  # authorization.go staticStrictPolicyName
CONVERTED_PREFIX = "converted_peer_authentication_"  # IS:pilot/pkg/model/authentication.go

Group = tuple[Clause, ...]  # ztunnel's security.Group: its rules ANDed, each rule's matches ORed


def _no_principal(port: int | None = None) -> L4Match:
    """``notPrincipals: [{presence: {}}]`` (``*`` is presence here), optionally on one port."""
    return L4Match(not_principals=("*",), destination_ports=() if port is None else (port,))


class ConvertedPolicy(L4Policy):
    """An L4 policy istiod made from a PeerAuthentication; ``origin`` names that policy for the
    log line of a deny (the static STRICT policy's own name does not say which one applied)."""

    __slots__ = ("origin",)

    def __init__(self, namespace: str, name: str, groups: tuple[Group, ...], origin: str,
                 selector: Mapping[str, str] | None = None) -> None:
        policy = AuthorizationPolicy(namespace, name, Action.DENY, tuple(Rule() for _ in groups), selector=selector)
        super().__init__(policy, tuple(enumerate(groups)), ())
        self.origin = origin


@dataclass(frozen=True, slots=True)
class Levels:
    """The oldest applying policy at each level for one workload (any may be absent)."""

    mesh: PeerAuthentication | None = None
    namespace: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None

    @property
    def parent(self) -> PeerAuthentication | None:
        """The policy that decides the mode before the workload level: namespace unless UNSET."""
        if self.namespace is not None and self.namespace.mode is not Mode.UNSET:
            return self.namespace
        return self.mesh

    @property
    def parent_strict(self) -> bool:
        parent = self.parent
        return parent is not None and parent.mode is Mode.STRICT


@dataclass(frozen=True, slots=True)
class Effective:
    """What istiod attaches to one workload: the static STRICT policy (``strict_by``: the policy
    that made the mode STRICT), or the converted form of ``port_policy``, or nothing."""

    strict_by: PeerAuthentication | None = None
    port_policy: PeerAuthentication | None = None


def effective(levels: Levels) -> Effective:
    """``convertedSelectorPeerAuthentications`` for one workload's levels."""
    strict_by = levels.parent if levels.parent_strict else None
    wl = levels.workload
    if wl is None:
        return Effective(strict_by)
    if wl.mode is Mode.STRICT:
        strict_by = wl
    elif wl.mode.lenient:
        strict_by = None
    if not wl.port_level:
        return Effective(strict_by)
    modes = [m for _, m in wl.port_level]
    if wl.mode is Mode.STRICT:
        if any(m.lenient for m in modes):  # the converted policy carries the STRICT default
            return Effective(None, wl)
    elif wl.mode.lenient or strict_by is None:
        if Mode.STRICT in modes:
            return Effective(None, wl)
    elif Mode.PERMISSIVE in modes:  # UNSET under a STRICT parent: only PERMISSIVE ports count here
        return Effective(None, wl)
    return Effective(strict_by)


def convert(wl: PeerAuthentication, levels: Levels, root_namespace: str) -> ConvertedPolicy | None:
    """``convertPeerAuthentication``: a workload policy with ``portLevelMtls`` as one DENY, or None
    when it adds nothing to the static STRICT policy (``levels`` gives the parents)."""
    if wl.namespace == root_namespace or wl.selector is None or not wl.port_level:
        return None
    parent_strict = levels.parent_strict
    rules: list[Clause] = []
    groups: list[Group] = []
    if wl.mode is Mode.STRICT:
        rules.append((_no_principal(),))
    found_lenient = False
    for port, mode in wl.port_level:
        if mode is Mode.STRICT:
            if wl.mode is Mode.STRICT or (wl.mode is Mode.UNSET and parent_strict):
                continue  # already enforced by the policy's own or the inherited mode
            groups.append(((_no_principal(port),),))
        elif mode.lenient:
            if wl.mode.lenient or (wl.mode is Mode.UNSET and not parent_strict):
                continue  # plaintext is accepted anyway
            found_lenient = True
            rules.append((L4Match(not_destination_ports=(port,)),))
    if wl.mode is Mode.STRICT and not found_lenient:
        return None  # plain STRICT: the static policy does it
    if not rules and not groups:
        return None
    if parent_strict and found_lenient:  # merge the inherited STRICT so the static policy can be left off
        rules.append((_no_principal(),))
    if rules:
        groups.append(tuple(rules))
    origin = f"PeerAuthentication {wl.key}: {wl.mode.value} with portLevelMtls"
    return ConvertedPolicy(wl.namespace, CONVERTED_PREFIX + wl.name, tuple(groups), origin, wl.selector)


class PeerAuthnIndex:
    """Every PeerAuthentication of a snapshot, answering per workload with the converted policies
    (ztunnel's L4 form). Built once per snapshot; results are cached per policy."""

    def __init__(self, policies: Iterable[PeerAuthentication], root_namespace: str) -> None:
        self._root = root_namespace
        self._mesh: PeerAuthentication | None = None
        self._ns: dict[str, PeerAuthentication] = {}
        self._selectors: dict[str, list[PeerAuthentication]] = {}
        for pa in sorted(policies, key=lambda p: p.age):  # oldest first: the first seen wins
            if not pa.has_selector:
                if pa.namespace == root_namespace:
                    self._mesh = self._mesh or pa
                else:
                    self._ns.setdefault(pa.namespace, pa)
            elif pa.namespace != root_namespace:  # selector policies in the root namespace are ignored
                self._selectors.setdefault(pa.namespace, []).append(pa)
        self._static: dict[str, ConvertedPolicy] = {}
        self._converted: dict[str, ConvertedPolicy | None] = {}

    @classmethod
    def from_snapshot(cls, snapshot: MeshSnapshot, root_namespace: str) -> PeerAuthnIndex:
        return cls(load_peer_authentications(snapshot), root_namespace)

    def levels(self, namespace: str, labels: Mapping[str, str]) -> Levels:
        wl = next((p for p in self._selectors.get(namespace, ()) if p.selects(labels)), None)
        return Levels(self._mesh, self._ns.get(namespace), wl)

    def matchers_for(self, namespace: str, labels: Mapping[str, str]) -> list[L4Policy]:
        """The converted policies ztunnel holds for a workload (empty: plaintext accepted)."""
        levels = self.levels(namespace, labels)
        eff = effective(levels)
        if eff.strict_by is not None:
            return [self._static_policy(eff.strict_by)]
        if eff.port_policy is not None:
            converted = self._converted_policy(eff.port_policy, levels)
            return [converted] if converted is not None else []
        return []

    def _static_policy(self, by: PeerAuthentication) -> ConvertedPolicy:
        policy = self._static.get(by.key)
        if policy is None:
            origin = f"PeerAuthentication {by.key}: STRICT"
            policy = ConvertedPolicy(self._root, STATIC_STRICT_NAME, (((_no_principal(),),),), origin)
            self._static[by.key] = policy
        return policy

    def _converted_policy(self, wl: PeerAuthentication, levels: Levels) -> ConvertedPolicy | None:
        if wl.key not in self._converted:  # the parents are the same for every workload of wl's namespace
            self._converted[wl.key] = convert(wl, levels, self._root)
        return self._converted[wl.key]


def load_peer_authentications(snapshot: MeshSnapshot) -> list[PeerAuthentication]:
    """Every valid PeerAuthentication; invalid ones (a registry without the validator) are skipped
    with an error, as istiod's admission would have refused them."""
    out: list[PeerAuthentication] = []
    for obj in snapshot.objects("PeerAuthentication"):
        try:
            out.append(parse_peer_authentication(obj.body, obj.namespace, obj.creation_timestamp or ""))
        except ManifestError as e:
            log.error("PeerAuthentication %s/%s ignored: %s: %s", obj.namespace, obj.name, e.field, e.message)
    return out
