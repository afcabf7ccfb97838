"""A waypoint Gateway -> the objects that run it, as plain dicts ready to server-side apply. Pure.

What istiod renders per Gateway of class ``istio-waypoint`` (template
``IS:manifests/charts/istio-control/istio-discovery/files/waypoint.yaml``, input built by
``IS:pilot/pkg/config/kube/gateway/deploymentcontroller.go`` ``configureIstioGateway``):

- names: the waypoint class has ``disableNameSuffix``, so the Deployment and Service are named as the
  Gateway (annotation ``gateway.istio.io/name-override`` wins) and the ServiceAccount too (annotation
  ``gateway.istio.io/service-account`` wins);
- labels: the Gateway's ``spec.infrastructure.labels``, else the Gateway's own labels (Istio's
  ``extractInfrastructureMetadata`` with copy-labels on), then ``gateway.networking.k8s.io/gateway-name``,
  ``gateway.networking.k8s.io/gateway-class-name``, and ``gateway.istio.io/managed:
  istio.io-mesh-controller`` (``apply`` sets it on every object: the mark that lets the controller
  take the object over later, ``canManage``);
- ownerReferences to the Gateway (apiVersion/kind/name/uid), so deleting the Gateway deletes them;
- the Service: ``status-port`` 15021 (appProtocol tcp) then one port per listener (``mesh`` 15008,
  appProtocol hbone), ``PreferDualStack``, ClusterIP, selecting ``gateway-name``;
- the Deployment: pod labels ``istio.io/dataplane-mode: none`` and ``sidecar.istio.io/inject: false``,
  Prometheus annotations for 15020, startup and readiness probes on ``:15021/healthz/ready``, the
  restricted security context (uid/gid 1337, read-only root, no capabilities).

Where ours differs, it runs OUR waypoint, as ``deploy/waypoint-namespace.yaml`` does: container
``waypoint`` with ``waypoint --kubernetes --gateway NS/NAME --cert-dir ...``, the workload certificate
from a CSI volume, an emptyDir ``/tmp`` (worker metrics sockets under a read-only root), and a
ClusterRoleBinding of the service account to the mesh-reader ClusterRole (our waypoint lists and
watches the mesh itself, where Istio's gets xDS from istiod). A ClusterRoleBinding cannot be owned by
a namespaced Gateway (the garbage collector ignores such owners), so it is labelled with its Gateway
instead and the controller deletes it when no Gateway needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waypoint.controller.settings import CERT_DIR, ControllerSettings

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-mesh-controller"  # constants.ManagedGatewayMeshController with "/" -> "-"
GATEWAY_NAMESPACE_LABEL = "waypoint.io/gateway-namespace"  # ours: on the (cluster-scoped) ClusterRoleBinding
NAME_OVERRIDE = "gateway.istio.io/name-override"
SA_OVERRIDE = "gateway.istio.io/service-account"
# annotations never copied to rendered objects (the template's ``omit`` list)
_OMITTED_ANNOTATIONS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", NAME_OVERRIDE, SA_OVERRIDE,
    "gateway.istio.io/controller-version",
})
STATUS_PORT = 15021
METRICS_PORT = 15020
HBONE_PORT = 15008

Obj = dict[str, Any]


def deployment_name(gateway: Mapping[str, Any]) -> str:
    """The Deployment and Service name: the Gateway's, unless ``gateway.istio.io/name-override``."""
    return _annotations(gateway).get(NAME_OVERRIDE) or _meta(gateway)["name"]


def service_account_name(gateway: Mapping[str, Any]) -> str:
    """The pod identity: the Gateway's name, unless ``gateway.istio.io/service-account``."""
    return _annotations(gateway).get(SA_OVERRIDE) or _meta(gateway)["name"]


def binding_name(namespace: str, service_account: str) -> str:
    """``waypoint:<ns>:<sa>``: colons cannot occur in either part, so no two pairs share a name."""
    return f"waypoint:{namespace}:{service_account}"


def render(gateway: Mapping[str, Any], settings: ControllerSettings) -> list[Obj]:
    """Every object one waypoint Gateway needs, in apply order (the identity before the pods that use it)."""
    return [
        render_service_account(gateway),
        render_binding(gateway, settings),
        render_service(gateway),
        render_deployment(gateway, settings),
    ]


def render_service_account(gateway: Mapping[str, Any]) -> Obj:
    md = _meta(gateway)
    return _object("v1", "ServiceAccount", service_account_name(gateway), md["namespace"], gateway,
                   _labels(gateway), owned=True)


def render_binding(gateway: Mapping[str, Any], settings: ControllerSettings) -> Obj:
    """The ClusterRoleBinding that lets the waypoint list and watch the mesh cluster-wide."""
    md = _meta(gateway)
    sa = service_account_name(gateway)
    labels = {GATEWAY_NAME_LABEL: md["name"], GATEWAY_NAMESPACE_LABEL: md["namespace"], MANAGED_LABEL: MANAGED_VALUE}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name(md["namespace"], sa), "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": settings.mesh_reader_role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": md["namespace"]}],
    }


def render_service(gateway: Mapping[str, Any]) -> Obj:
    md = _meta(gateway)
    obj = _object("v1", "Service", deployment_name(gateway), md["namespace"], gateway, _labels(gateway), owned=True)
    obj["metadata"]["annotations"] = {"networking.istio.io/traffic-distribution": "PreferClose",
                                      **_infra_annotations(gateway)}
    obj["spec"] = {
        "ipFamilyPolicy": "PreferDualStack",
        "ports": service_ports(gateway),
        "selector": {GATEWAY_NAME_LABEL: md["name"]},
        "type": "ClusterIP",
    }
    return obj


def service_ports(gateway: Mapping[str, Any]) -> list[Obj]:
    """Istio's ``extractServicePorts``: status-port first, then each listener port once, named after
    its listener (dots to dashes, 63 characters), appProtocol the lower-cased listener protocol."""
    ports: list[Obj] = [{"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "appProtocol": "tcp"}]
    seen: set[int] = set()
    listeners = gateway.get("spec", {}).get("listeners") or []
    for i, listener in enumerate(listeners):
        port, protocol = listener.get("port"), str(listener.get("protocol", ""))
        if not isinstance(port, int) or port in seen:
            continue
        seen.add(port)
        name = str(listener.get("name") or "").replace(".", "-")[:63] or f"{protocol.lower()}-{i}"
        ports.append({"name": name, "port": port, "protocol": "TCP", "appProtocol": protocol.lower()})
    return ports


def render_deployment(gateway: Mapping[str, Any], settings: ControllerSettings) -> Obj:
    md = _meta(gateway)
    name = deployment_name(gateway)
    obj = _object("apps/v1", "Deployment", name, md["namespace"], gateway, _labels(gateway), owned=True)
    pod_labels = {
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",  # the waypoint terminates HBONE itself
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
        **_labels(gateway),
    }
    pod_annotations = {
        **_infra_annotations(gateway),
        "istio.io/rev": "default",
        "prometheus.io/path": "/stats/prometheus",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/scrape": "true",
    }
    spec: Obj = {
        "selector": {"matchLabels": {GATEWAY_NAME_LABEL: md["name"]}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": pod_annotations},
            "spec": {
                "serviceAccountName": service_account_name(gateway),
                "containers": [_container(md["namespace"], md["name"], settings)],
                "volumes": [
                    {"name": "workload-certs", "csi": {"driver": settings.cert_csi_driver, "readOnly": True}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    }
    if settings.replicas is not None:
        spec = {"replicas": settings.replicas, **spec}
    obj["spec"] = spec
    return obj


def _container(namespace: str, gateway_name: str, settings: ControllerSettings) -> Obj:
    probe = {"httpGet": {"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"}, "timeoutSeconds": 1}
    container: Obj = {
        "name": "waypoint",
        "image": settings.image,
        "args": [
            "waypoint",
            "--kubernetes",  # the mesh from the API server, with the pod's service account
            f"--gateway={namespace}/{gateway_name}",
            "--address=0.0.0.0",
            f"--cert-dir={CERT_DIR}",
            f"--concurrency={settings.concurrency}",
        ],
        "env": [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
                _field_env("INSTANCE_IP", "status.podIP"), _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName")],
        "ports": [
            {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
        ],
        # the template's numbers: up to 30 s to start, then ready checks every 15 s
        "startupProbe": {**probe, "failureThreshold": 30, "initialDelaySeconds": 1, "periodSeconds": 1,
                         "successThreshold": 1},
        "readinessProbe": {**probe, "failureThreshold": 4, "initialDelaySeconds": 0, "periodSeconds": 15,
                           "successThreshold": 1},
        "resources": {"requests": {"cpu": settings.cpu_request, "memory": settings.memory_request}},
        "securityContext": {
            "privileged": False, "runAsGroup": 1337, "runAsUser": 1337, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "workload-certs", "mountPath": CERT_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    return container


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _object(api_version: str, kind: str, name: str, namespace: str, gateway: Mapping[str, Any],
            labels: Mapping[str, str], *, owned: bool) -> Obj:
    md: Obj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    annotations = _infra_annotations(gateway)
    if annotations:
        md["annotations"] = annotations
    if owned:
        md["ownerReferences"] = [owner_reference(gateway)]
    return {"apiVersion": api_version, "kind": kind, "metadata": md}


def owner_reference(gateway: Mapping[str, Any]) -> Obj:
    md = _meta(gateway)
    return {"apiVersion": GATEWAY_API_VERSION, "kind": "Gateway", "name": md["name"], "uid": md.get("uid", "")}


def _labels(gateway: Mapping[str, Any]) -> dict[str, str]:
    """Infrastructure labels, then the three that tie an object to its Gateway (they win)."""
    return {
        **_infra(gateway, "labels"),
        GATEWAY_NAME_LABEL: _meta(gateway)["name"],
        GATEWAY_CLASS_LABEL: str(gateway.get("spec", {}).get("gatewayClassName", "")),
        MANAGED_LABEL: MANAGED_VALUE,
    }


def _infra_annotations(gateway: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in _infra(gateway, "annotations").items() if k not in _OMITTED_ANNOTATIONS}


def _infra(gateway: Mapping[str, Any], which: str) -> dict[str, str]:
    """``spec.infrastructure.<which>`` (minus ``gateway.networking.k8s.io/`` keys), else the Gateway's own."""
    infra = (gateway.get("spec") or {}).get("infrastructure") or {}
    chosen = infra.get(which)
    if isinstance(chosen, Mapping):
        return {str(k): str(v) for k, v in chosen.items() if not str(k).startswith("gateway.networking.k8s.io/")}
    own = _meta(gateway).get(which)
    return {str(k): str(v) for k, v in own.items()} if isinstance(own, Mapping) else {}


def _meta(gateway: Mapping[str, Any]) -> Mapping[str, Any]:
    md = gateway.get("metadata")
    return md if isinstance(md, Mapping) else {}


def _annotations(gateway: Mapping[str, Any]) -> Mapping[str, str]:
    ann = _meta(gateway).get("annotations")
    return ann if isinstance(ann, Mapping) else {}
