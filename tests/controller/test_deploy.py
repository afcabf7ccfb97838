"""deploy/controller.yaml grants what the controller does, and its args are ones the command takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from waypoint.cli import build_parser
from waypoint.controller.controller import GATEWAYS, OWNED

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "controller.yaml"


def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(DEPLOY.read_text())}


def allowed(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and "resourceNames" not in rule:
            verbs |= set(rule["verbs"])
    return verbs


def test_cluster_role_covers_every_watch_and_write() -> None:
    rules = docs()["ClusterRole"]["rules"]
    for r in (GATEWAYS, *OWNED):
        assert {"list", "watch"} <= allowed(rules, r.group, r.plural), r
    for r in OWNED:
        assert {"create", "patch"} <= allowed(rules, r.group, r.plural), r
    assert "patch" in allowed(rules, GATEWAYS.group, "gateways/status")
    assert "patch" not in allowed(rules, GATEWAYS.group, "gateways")  # status only, as istiod
    assert "delete" in allowed(rules, "rbac.authorization.k8s.io", "clusterrolebindings")
    bind = [r for r in rules if "bind" in r["verbs"]]
    assert bind == [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                     "resourceNames": ["waypoint-mesh-reader"], "verbs": ["bind"]}]


def test_deployment_args_parse_as_the_controller_command() -> None:
    container = docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = build_parser("controller").parse_args(container["args"])
    assert args.kubernetes == ""  # in-cluster service account
    assert args.image == container["image"]


def test_leader_election_may_use_leases_in_its_own_namespace_only() -> None:
    d = docs()
    role, binding, deployment = d["Role"], d["RoleBinding"], d["Deployment"]
    ns = deployment["metadata"]["namespace"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == ns
    assert allowed(role["rules"], "coordination.k8s.io", "leases") == {"get", "create", "update"}
    assert not allowed(d["ClusterRole"]["rules"], "coordination.k8s.io", "leases")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser("controller").parse_args(container["args"])
    assert args.leader_elect
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}  # identity, Lease namespace
