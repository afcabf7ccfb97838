"""Gateway -> ServiceAccount, ClusterRoleBinding, Service, Deployment, as pure functions.

Expected values follow istiod's waypoint template (IS:manifests/charts/istio-control/istio-discovery/
files/waypoint.yaml) and deployment controller (IS:pilot/pkg/config/kube/gateway/deploymentcontroller.go).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.controller.objects import gateway
from waypoint.controller.render import (
    GATEWAY_CLASS_LABEL,
    GATEWAY_NAME_LABEL,
    MANAGED_LABEL,
    binding_name,
    render,
    service_ports,
)
from waypoint.controller.settings import CERT_DIR, ControllerSettings

SETTINGS = ControllerSettings(image="registry.example/waypoint:1.2")


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def test_renders_the_four_objects_in_apply_order_deterministically() -> None:
    objs = render(gateway(), SETTINGS)
    assert [o["kind"] for o in objs] == ["ServiceAccount", "ClusterRoleBinding", "Service", "Deployment"]
    assert json.dumps(objs, sort_keys=False) == json.dumps(render(gateway(), SETTINGS), sort_keys=False)


def test_names_follow_the_gateway_without_class_suffix_waypoint_template_disable_name_suffix() -> None:
    objs = by_kind(render(gateway("wp", "shop"), SETTINGS))
    for kind in ("ServiceAccount", "Service", "Deployment"):
        assert objs[kind]["metadata"]["name"] == "wp"
        assert objs[kind]["metadata"]["namespace"] == "shop"
    assert objs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "wp"
    assert objs["ClusterRoleBinding"]["metadata"]["name"] == "waypoint:shop:wp"
    assert "namespace" not in objs["ClusterRoleBinding"]["metadata"]


def test_name_override_and_service_account_annotations_deploymentcontroller_template_input() -> None:
    gw = gateway("wp", annotations={"gateway.istio.io/name-override": "custom",
                                    "gateway.istio.io/service-account": "ident", "team": "a"})
    objs = by_kind(render(gw, SETTINGS))
    assert objs["Deployment"]["metadata"]["name"] == objs["Service"]["metadata"]["name"] == "custom"
    assert objs["ServiceAccount"]["metadata"]["name"] == "ident"
    assert objs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "ident"
    assert objs["ClusterRoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "ident", "namespace": "shop"}]
    # the selector still names the Gateway, not the Deployment (template: GatewayNameLabel: .Name)
    assert objs["Service"]["spec"]["selector"] == {GATEWAY_NAME_LABEL: "wp"}
    # annotations are copied, except the controller's own (template's omit list)
    assert objs["Deployment"]["metadata"]["annotations"] == {"team": "a"}


def test_labels_tie_every_object_to_its_gateway_and_mark_it_managed() -> None:
    objs = by_kind(render(gateway("wp", labels={"istio.io/waypoint-for": "service", "team": "a"}), SETTINGS))
    for kind in ("ServiceAccount", "Service", "Deployment"):
        labels = objs[kind]["metadata"]["labels"]
        assert labels[GATEWAY_NAME_LABEL] == "wp"
        assert labels[GATEWAY_CLASS_LABEL] == "istio-waypoint"
        assert labels[MANAGED_LABEL] == "istio.io-mesh-controller"
        assert labels["team"] == "a"  # the Gateway's labels are the infrastructure labels by default
    pod = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod["istio.io/dataplane-mode"] == "none"
    assert pod["sidecar.istio.io/inject"] == "false"
    assert pod[GATEWAY_NAME_LABEL] == "wp"
    assert objs["Deployment"]["spec"]["selector"] == {"matchLabels": {GATEWAY_NAME_LABEL: "wp"}}


def test_infrastructure_labels_win_over_the_gateways_own_and_drop_gateway_api_keys() -> None:
    gw = gateway("wp", labels={"team": "a"})
    gw["spec"]["infrastructure"] = {"labels": {"cost": "x", "gateway.networking.k8s.io/x": "y"}}
    labels = by_kind(render(gw, SETTINGS))["Deployment"]["metadata"]["labels"]
    assert labels["cost"] == "x"
    assert "team" not in labels and "gateway.networking.k8s.io/x" not in labels


def test_owner_references_point_at_the_gateway_uid_except_on_the_cluster_scoped_binding() -> None:
    objs = by_kind(render(gateway("wp", uid="1234-abcd"), SETTINGS))
    ref = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp", "uid": "1234-abcd"}
    for kind in ("ServiceAccount", "Service", "Deployment"):
        assert objs[kind]["metadata"]["ownerReferences"] == [ref]
    crb = objs["ClusterRoleBinding"]
    assert "ownerReferences" not in crb["metadata"]
    assert crb["metadata"]["labels"]["waypoint.io/gateway-namespace"] == "shop"
    assert crb["metadata"]["labels"][GATEWAY_NAME_LABEL] == "wp"
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": "waypoint-mesh-reader"}


def test_service_ports_status_port_then_listeners_extract_service_ports() -> None:
    svc = by_kind(render(gateway(), SETTINGS))["Service"]
    assert svc["spec"]["ports"] == [
        {"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
        {"name": "mesh", "port": 15008, "protocol": "TCP", "appProtocol": "hbone"},
    ]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    assert svc["metadata"]["annotations"] == {"networking.istio.io/traffic-distribution": "PreferClose"}


def test_service_ports_dedupe_ports_and_sanitize_names() -> None:
    gw = gateway(listeners=[{"name": "mesh", "port": 15008, "protocol": "HBONE"},
                            {"name": "again", "port": 15008, "protocol": "HBONE"},
                            {"name": "a.b", "port": 8080, "protocol": "HTTP"}])
    assert [(p["name"], p["port"]) for p in service_ports(gw)] == [("status-port", 15021), ("mesh", 15008),
                                                                   ("a-b", 8080)]


def test_deployment_runs_our_waypoint_for_this_gateway() -> None:
    dep = by_kind(render(gateway("wp", "shop"), SETTINGS))["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/waypoint:1.2"
    assert container["args"] == ["waypoint", "--kubernetes", "--gateway=shop/wp", "--address=0.0.0.0",
                                 f"--cert-dir={CERT_DIR}", "--concurrency=2"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "mesh": 15008, "metrics": 15020, "status-port": 15021}
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
    assert container["securityContext"]["runAsUser"] == 1337
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {CERT_DIR, "/tmp"}
    assert pod["volumes"][0] == {"name": "workload-certs", "csi": {"driver": "csi.spiffe.io", "readOnly": True}}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15020"
    assert annotations["prometheus.io/path"] == "/stats/prometheus"


def test_replicas_are_left_unset_unless_asked_so_scaling_is_not_fought() -> None:
    assert "replicas" not in by_kind(render(gateway(), SETTINGS))["Deployment"]["spec"]
    asked = ControllerSettings(replicas=3, concurrency=4, cpu_request="1", memory_request="1Gi")
    dep = by_kind(render(gateway(), asked))["Deployment"]
    assert dep["spec"]["replicas"] == 3
    assert "--concurrency=4" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}


@pytest.mark.parametrize("waypoint_for", ["service", "workload", "all", None])
def test_per_service_and_namespace_waypoints_render_alike_but_carry_waypoint_for(waypoint_for: str | None) -> None:
    """istio.io/waypoint-for (IS:pkg/config/constants/constants.go) is read by the data plane from the
    Gateway; the rendered objects are the same, carrying the label along as infrastructure labels."""
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else None
    objs = by_kind(render(gateway(labels=labels), SETTINGS))
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.get("istio.io/waypoint-for") == waypoint_for
    assert objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"][2] == "--gateway=shop/waypoint"


def test_binding_names_cannot_collide() -> None:
    assert binding_name("a-b", "c") != binding_name("a", "b-c")
