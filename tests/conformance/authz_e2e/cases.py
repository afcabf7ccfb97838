"""How each conformance case becomes traffic through the product: one or two *runs* per case.

The mapping is the engine-level run's (``tests/policy/test_istio_authz_cases.py``), now with real
enforcement points:

- ``L4`` cases: the destination ztunnel with ``policies`` (selector form), the client dialling pod
  b-0's address, which no waypoint serves (``istio.io/waypoint-for: service``), so the ztunnel sees the
  client's own identity; and, when the case gives ``policies_waypoint``, the waypoint with those,
  the client dialling Service b's VIP.
- ``L7`` cases: the waypoint with ``policies_waypoint`` (or ``policies`` when they use ``targetRefs``).
- authz-073 is also run at the ztunnel: its name is the ztunnel's own rule ("ALLOW with L7 field at
  ztunnel (no waypoint) denies", istio.io ``ambient/usage/l4-policy``).

Only one form of a case's policies is in force at a time: a selector policy naming a client principal
would otherwise also judge the waypoint's own connection to b-0 (Istio's known ambient pitfall), which
is not what the case is about.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import topology

CASES_FILE = Path("/work/shared/conformance/istio-authz/istio_authz_cases.json")
ROOT_NAMESPACE = "istio-system"
# Policies istiod's admission refuses (validation.go): the product must reject them too, naming the field.
REJECTED = {"authz-051": ["spec.rules"]}  # DENY without rules: "meaningless as it will never be triggered"
ALSO_AT_ZTUNNEL = {"authz-073"}

_SIDECAR = ("sidecar-mode selector policies with HTTP paths (TestAuthz_WorkloadSelector): ambient has no "
            "sidecar; the ztunnel cannot see paths and waypoints never use selectors "
            "(IS:pilot/pkg/model/policyattachment.go); the engine run covers them with SidecarAuthorizer")
_NO_PRINCIPAL_AT_WAYPOINT = ("a peer without identity cannot reach a waypoint: it only accepts HBONE (mutual TLS), "
                             "so its peer always has the client ztunnel's identity; the ztunnel run (plaintext "
                             "into b-0's 15006) and the engine run cover it")
# Every (case, enforcement point) the engine run checks that is not sent through the product, and why.
NOT_DRIVEN: dict[tuple[str, str], str] = {
    **{(f"authz-0{n}", "sidecar"): _SIDECAR for n in range(41, 46)},
    ("authz-020", "waypoint"): _NO_PRINCIPAL_AT_WAYPOINT,
    ("authz-057", "waypoint"): _NO_PRINCIPAL_AT_WAYPOINT,
}

Doc = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One case at one enforcement point: the folder it needs and the request it sends."""

    case: dict[str, Any]
    where: str  # "ztunnel" | "waypoint"
    policies: list[Doc] = field(hash=False)

    @property
    def id(self) -> str:
        return f"{self.case['id']}@{self.where}"

    @property
    def request(self) -> dict[str, Any]:
        r: dict[str, Any] = self.case["request"]
        return r

    @property
    def expect_allow(self) -> bool:
        return bool(self.case["expect"] == "allow")

    @property
    def transport(self) -> str:
        """``plaintext`` (no identity, into b-0's 15006), ``pod`` (SOCKS5 to b-0) or ``service`` (to b's VIP)."""
        if self.request.get("source_principal") is None:
            return "plaintext"
        return "pod" if self.where == "ztunnel" else "service"

    @property
    def source_ip(self) -> str:
        return topology.rewrite_ips(self.request["source_ip"])

    @property
    def rejected_fields(self) -> list[str]:
        return REJECTED.get(self.case["id"], [])

    def docs(self) -> list[Doc]:
        protocols = dict(topology.PORTS)
        protocols[self.request["port"]] = self.request["protocol"]
        labels = self.request["destination"]["workload_labels"]
        return topology.case_docs(labels, protocols, self.policies)

    def world_key(self) -> str:
        return json.dumps(self.docs(), sort_keys=True)


def load() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(CASES_FILE.read_text())
    return cases


def _parse(policies: list[str]) -> list[Doc]:
    return [yaml.safe_load(topology.rewrite_ips(p)) for p in policies]


def mesh_wide_for_waypoints(doc: Doc) -> Doc:
    """A root-namespace policy without ``targetRefs`` reaches no waypoint in Istio ("waypoints never
    use selector", IS:pilot/pkg/model/policyattachment.go); Istio's way to apply one to every waypoint
    is ``targetRefs: GatewayClass istio-waypoint`` in the root namespace (authz-005..007)."""
    spec = doc.get("spec") or {}
    if doc["metadata"]["namespace"] != ROOT_NAMESPACE or "targetRefs" in spec or "selector" in spec:
        return doc
    doc = copy.deepcopy(doc)
    gateway_class = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
    doc["spec"] = {**spec, "targetRefs": [gateway_class]}
    return doc


def _uses_target_refs(docs: list[Doc]) -> bool:
    return any("targetRefs" in (d.get("spec") or {}) for d in docs)


def points(case: dict[str, Any]) -> Iterator[tuple[str, list[Doc]]]:
    """The enforcement points the engine run checks for ``case``, with the policies in force there."""
    policies = _parse(case["policies"])
    waypoint = [mesh_wide_for_waypoints(d) for d in _parse(case["policies_waypoint"])] \
        if "policies_waypoint" in case else None
    if case["enforceable_at"] == "L4" or case["id"] in ALSO_AT_ZTUNNEL:
        yield "ztunnel", policies
    if waypoint is not None:
        yield "waypoint", waypoint
    elif case["enforceable_at"] == "L7":
        yield ("waypoint", policies) if _uses_target_refs(policies) else ("sidecar", policies)


def runs(cases: list[dict[str, Any]]) -> tuple[list[Run], set[tuple[str, str]]]:
    """Every drivable run, ordered so that runs needing the same folder are neighbours (one apply
    each), and the (case, point) pairs that were not driven."""
    driven: list[Run] = []
    skipped: set[tuple[str, str]] = set()
    for case in cases:
        for where, policies in points(case):
            if (case["id"], where) in NOT_DRIVEN:
                skipped.add((case["id"], where))
            else:
                driven.append(Run(case, where, policies))
    first: dict[str, int] = {}
    for i, run in enumerate(driven):
        first.setdefault(run.world_key(), i)
    driven.sort(key=lambda r: first[r.world_key()])  # stable: case order within a folder
    return driven, skipped
