"""The controller end to end against the HTTPS API server stand-in (tests/support/kubeapi.py): Gateways
in, server-side applied objects and Gateway status out, as istiod's deployment controller
(IS:pilot/pkg/config/kube/gateway/deploymentcontroller.go) does for class istio-waypoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.controller.objects import gateway
from tests.support.kubeapi import FakeApiServer
from tests.support.wait import wait_for
from waypoint.controller.controller import FIELD_MANAGER, WaypointController
from waypoint.controller.settings import ControllerSettings
from waypoint.mesh.kubeapi.client import KubeClient
from waypoint.mesh.kubeapi.config import from_kubeconfig

GW = "gateway.networking.k8s.io/v1"
SETTINGS = ControllerSettings(image="registry.example/waypoint:1.2")


@contextlib.asynccontextmanager
async def running(api: FakeApiServer, tmp: Path, **kw: Any) -> AsyncIterator[WaypointController]:
    client = KubeClient(from_kubeconfig(api.kubeconfig(tmp / "kc")))
    controller = WaypointController(client, SETTINGS, backoff_s=(0.05, 0.5), **kw)
    task = asyncio.get_running_loop().create_task(controller.run())
    try:
        await wait_for(lambda: not controller.pending(), 10, "caches synced")
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def obj(api: FakeApiServer, api_version: str, kind: str, name: str, ns: str = "shop") -> dict[str, Any] | None:
    return api.get(api_version, kind, ns, name)


def condition(api: FakeApiServer, kind: str, name: str = "waypoint", ns: str = "shop") -> dict[str, Any] | None:
    gw = obj(api, GW, "Gateway", name, ns) or {}
    for c in (gw.get("status") or {}).get("conditions") or ():
        if c["type"] == kind:
            return dict(c)
    return None


def is_true(api: FakeApiServer, kind: str, name: str = "waypoint") -> bool:
    c = condition(api, kind, name)
    return c is not None and c["status"] == "True"


@pytest.mark.timeout(60)
async def test_gateway_becomes_a_programmed_waypoint_with_its_service_address(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path):
        api.put(gateway(uid="gw-uid-1"))
        await wait_for(lambda: obj(api, "apps/v1", "Deployment", "waypoint") is not None, 10, "Deployment applied")
        await wait_for(lambda: condition(api, "Programmed") is not None, 10, "status written")
        sa = obj(api, "v1", "ServiceAccount", "waypoint")
        svc = obj(api, "v1", "Service", "waypoint")
        dep = obj(api, "apps/v1", "Deployment", "waypoint")
        crb = api.get("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", "waypoint:shop:waypoint")
        assert sa is not None and svc is not None and dep is not None and crb is not None
        for o in (sa, svc, dep):
            assert o["metadata"]["ownerReferences"] == [
                {"apiVersion": GW, "kind": "Gateway", "name": "waypoint", "uid": "gw-uid-1"}]
            assert o["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"
        assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
            "waypoint", "--kubernetes", "--gateway=shop/waypoint"]
        assert [p["port"] for p in svc["spec"]["ports"]] == [15021, 15008]
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "waypoint", "namespace": "shop"}]
        # every write is a forced server-side apply by istiod's field manager
        patches = [w for w in api.writes if w.method == "PATCH"]
        assert patches and all(w.content_type == "application/apply-patch+yaml" and w.force
                               and w.field_manager == FIELD_MANAGER for w in patches)
        assert any(w.path == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status"
                   for w in patches)
        # before the Service has an IP: accepted, not programmed
        assert is_true(api, "Accepted")
        assert condition(api, "Programmed")["reason"] == "AddressNotAssigned"  # type: ignore[index]
        api.assign_cluster_ip("shop", "waypoint", "10.96.0.15")
        await wait_for(lambda: is_true(api, "Programmed"), 10, "Programmed=True")
        status = obj(api, GW, "Gateway", "waypoint")["status"]  # type: ignore[index]
        assert status["addresses"] == [{"type": "IPAddress", "value": "10.96.0.15"},
                                       {"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"}]
        assert condition(api, "Programmed")["observedGeneration"] == 1  # type: ignore[index]


@pytest.mark.timeout(60)
async def test_deleted_deployment_is_recreated_and_steady_state_writes_nothing(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path) as controller:
        api.put(gateway())
        await wait_for(lambda: obj(api, "apps/v1", "Deployment", "waypoint") is not None, 10, "Deployment applied")
        api.assign_cluster_ip("shop", "waypoint", "10.96.0.15")
        await wait_for(lambda: is_true(api, "Programmed"), 10, "Programmed=True")
        api.delete("apps/v1", "Deployment", "shop", "waypoint")
        await wait_for(lambda: obj(api, "apps/v1", "Deployment", "waypoint") is not None, 10, "Deployment recreated")
        # a change that is not the Gateway's intent (its status, an unrelated Service) is no loop
        done, rv = controller.reconciles, api.rv
        api.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "shop"}})
        api.put(gateway("other-class", cls="istio"))
        await wait_for(lambda: controller.reconciles > done, 10, "the other-class Gateway looked at")
        assert api.rv == rv + 2  # only our two puts wrote anything


@pytest.mark.timeout(60)
async def test_gateway_of_another_class_is_ignored(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path) as controller:
        api.put(gateway("ingress", cls="istio"))
        await wait_for(lambda: controller.reconciles >= 1, 10, "reconciled")
        assert api.writes == []
        assert obj(api, "apps/v1", "Deployment", "ingress") is None


@pytest.mark.timeout(60)
async def test_invalid_waypoint_gateway_is_not_accepted_and_gets_nothing_deployed(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path):
        api.put(gateway(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"}]))
        await wait_for(lambda: condition(api, "Accepted") is not None, 10, "status written")
        accepted = condition(api, "Accepted")
        assert accepted is not None and accepted["status"] == "False"
        assert accepted["reason"] == "ListenersNotValid"
        assert "HBONE" in accepted["message"]
        assert condition(api, "Programmed")["reason"] == "Invalid"  # type: ignore[index]
        assert obj(api, "apps/v1", "Deployment", "waypoint") is None


@pytest.mark.timeout(60)
async def test_deleted_gateway_objects_go_to_the_garbage_collector_and_its_binding_is_deleted(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path) as controller:
        api.put(gateway())
        crb = ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "", "waypoint:shop:waypoint")
        await wait_for(lambda: condition(api, "Accepted") is not None and controller.idle, 10, "objects applied")
        assert api.get(*crb) is not None
        done = controller.reconciles
        api.delete(GW, "Gateway", "shop", "waypoint")
        assert {k for k, _, _ in api.collect_garbage()} == {"ServiceAccount", "Service", "Deployment"}
        await wait_for(lambda: api.get(*crb) is None, 10, "ClusterRoleBinding deleted")
        await wait_for(lambda: controller.reconciles > done, 10, "deletion seen")
        assert obj(api, "apps/v1", "Deployment", "waypoint") is None  # not made again for a gone Gateway


@pytest.mark.timeout(60)
async def test_objects_made_by_someone_else_are_not_taken_over(tmp_path: Path) -> None:
    async with FakeApiServer() as api:
        api.put({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "waypoint", "namespace": "shop"},
                 "spec": {"replicas": 5}})
        async with running(api, tmp_path):
            api.put(gateway())
            await wait_for(lambda: obj(api, "v1", "Service", "waypoint") is not None, 10, "Service applied")
            await wait_for(lambda: condition(api, "Accepted") is not None, 10, "status written")
            assert not any(w.path.endswith("/deployments/waypoint") for w in api.writes)
            assert obj(api, "apps/v1", "Deployment", "waypoint")["spec"] == {"replicas": 5}  # type: ignore[index]


@pytest.mark.timeout(60)
async def test_namespace_filter_limits_the_gateways_handled(tmp_path: Path) -> None:
    async with FakeApiServer() as api, running(api, tmp_path, namespaces=["shop"]):
        api.put(gateway("waypoint", "elsewhere"))
        api.put(gateway("waypoint", "shop"))
        await wait_for(lambda: obj(api, "apps/v1", "Deployment", "waypoint") is not None, 10, "shop's waypoint")
        assert obj(api, "apps/v1", "Deployment", "waypoint", "elsewhere") is None
        assert not any("/namespaces/elsewhere/" in w.path for w in api.writes)
