"""The 80 Istio AuthorizationPolicy conformance cases, each through the enforcement point it names.

Data: ``/work/shared/conformance/istio-authz/istio_authz_cases.json`` (README §2 there).
- ``L4``: the destination ztunnel with ``policies``; and the waypoint with ``policies_waypoint``
  when the case gives them (HTTP requests via ``check_request``, TCP via ``check_connection``).
- ``L7``: the waypoint with ``policies_waypoint`` (or ``policies`` when they use ``targetRefs``).

Two adaptations, both because istiod attaches nothing to a waypoint without ``targetRefs``
(``IS:pilot/pkg/model/policyattachment.go`` "waypoints never use selector"):
- authz-005..007: the root-namespace DENY in ``policies_waypoint`` has no ``targetRefs``; Istio's
  way to apply a mesh-wide policy to every waypoint is ``targetRefs: GatewayClass istio-waypoint``
  in the root namespace, so the test attaches it that way (:func:`_mesh_wide_for_waypoints`).
- authz-041..045 (TestAuthz_WorkloadSelector, sidecar mode, selector policies with HTTP paths):
  no waypoint form exists; they run through :class:`SidecarAuthorizer` (selector scoping with
  Envoy's HTTP rules), which is what those upstream tests exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.policy import world
from waypoint.policy.attributes import ConnectionFacts, Decision, RequestFacts
from waypoint.policy.authz import SidecarAuthorizer, WaypointAuthorizer, ZtunnelAuthorizer

CASES_FILE = Path("/work/shared/conformance/istio-authz/istio_authz_cases.json")
CASES: list[dict[str, Any]] = json.loads(CASES_FILE.read_text())
ROOT = "istio-system"
# Policies istiod's admission refuses (validation.go): the case's outcome is then "no such policy".
REJECTED = {"authz-051": "spec.rules"}  # DENY without rules: "meaningless as it will never be triggered"


def _mesh_wide_for_waypoints(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec") or {}
    if doc["metadata"]["namespace"] == ROOT and "targetRefs" not in spec and "selector" not in spec:
        gateway_class = {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"}
        doc = {**doc, "spec": {**spec, "targetRefs": [gateway_class]}}
    return doc


def _facts(case: dict[str, Any], destination_ip: str) -> tuple[ConnectionFacts, RequestFacts | None]:
    r = case["request"]
    conn = world.conn(r.get("source_principal"), r["source_ip"], r["port"], destination_ip)
    if r["protocol"] == "tcp":
        return conn, None
    headers = tuple((k.lower(), v) for k, v in (r.get("headers") or {}).items())
    return conn, RequestFacts(conn, r["method"], r["path"], r["host"], headers)


def _labels(case: dict[str, Any]) -> dict[str, str]:
    return dict(case["request"]["destination"]["workload_labels"])


def _check_problems(case: dict[str, Any], snap: Any) -> None:
    fields = [p.field for p in snap.problems]
    assert fields == ([REJECTED[case["id"]]] if case["id"] in REJECTED else []), snap.problems


def at_ztunnel(case: dict[str, Any]) -> Decision:
    snap = world.snapshot(case["policies"], _labels(case))
    _check_problems(case, snap)
    conn, _ = _facts(case, world.POD_IP)
    return ZtunnelAuthorizer.from_snapshot(snap).check(world.pod(snap), conn)


def at_waypoint(case: dict[str, Any], policies: list[str]) -> Decision:
    docs = [_mesh_wide_for_waypoints(yaml.safe_load(p)) for p in policies]
    snap = world.snapshot(docs, _labels(case))
    _check_problems(case, snap)
    authz = WaypointAuthorizer.from_snapshot(snap, world.waypoint(snap))
    conn, req = _facts(case, world.SERVICE_VIP)
    if req is None:
        return authz.check_connection(world.service(snap), conn)
    return authz.check_request(world.service(snap), req)


def at_sidecar(case: dict[str, Any]) -> Decision:
    snap = world.snapshot(case["policies"], _labels(case))
    _check_problems(case, snap)
    _, req = _facts(case, world.POD_IP)
    assert req is not None
    return SidecarAuthorizer.from_snapshot(snap).check_request(world.pod(snap), req)


def _uses_target_refs(policies: list[str]) -> bool:
    return any("targetRefs" in (yaml.safe_load(p).get("spec") or {}) for p in policies)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    want = case["expect"] == "allow"
    results: dict[str, Decision] = {}
    if case["enforceable_at"] == "L4":
        results["ztunnel"] = at_ztunnel(case)
        if "policies_waypoint" in case:
            results["waypoint"] = at_waypoint(case, case["policies_waypoint"])
    elif "policies_waypoint" in case:
        results["waypoint"] = at_waypoint(case, case["policies_waypoint"])
    elif _uses_target_refs(case["policies"]):
        results["waypoint"] = at_waypoint(case, case["policies"])
    else:
        results["sidecar"] = at_sidecar(case)
    for where, decision in results.items():
        assert decision.allowed is want, f"{case['id']} {case['name']} at {where}: {decision}"


def test_every_case_is_evaluated_somewhere() -> None:
    assert len(CASES) == 80
    assert {c["enforceable_at"] for c in CASES} == {"L4", "L7"}
