"""The API server source against a real HTTPS stand-in (tests/support/kubeapi.py): first load,
watch events, rejects, broken and expired watches, missing CRDs, the two connection configs.

Behaviour matched: Kubernetes API concepts "Efficient detection of changes" and client-go
``tools/cache/reflector.go`` (``ListAndWatch``/``watchHandler``), as cited in waypoint/mesh/kubeapi/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh.objects import namespace, pod, service, waypoint_gateway
from tests.support.kubeapi import FakeApiServer
from tests.support.wait import wait_for
from waypoint.mesh.kubeapi import KubeConfigError, KubeSource, from_kubeconfig, in_cluster
from waypoint.mesh.kubeapi import client as kube_client
from waypoint.mesh.model import ManifestProblem, MeshSnapshot
from waypoint.roles.runtime import config_registry

PODS = "/api/v1/pods"
GATEWAYS = "/apis/gateway.networking.k8s.io/v1/gateways"


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        server.put(namespace("default", **{"istio.io/dataplane-mode": "ambient"}))
        server.put(pod("echo-1", "10.0.0.1", labels={"app": "echo"}))
        server.put(service("echo", "10.96.0.10", selector={"app": "echo"}))
        yield server


@pytest.fixture
async def sources() -> AsyncIterator[list[KubeSource]]:
    """The sources a test makes, each closed afterwards (its ``watch`` task cancelled first)."""
    made: list[KubeSource] = []
    yield made
    for task in _watch_tasks:
        task.cancel()
    await asyncio.gather(*_watch_tasks, return_exceptions=True)
    _watch_tasks.clear()
    for source in made:
        await source.aclose()


_watch_tasks: list[asyncio.Task[None]] = []


def kube_source(api: FakeApiServer, tmp_path: Path, made: list[KubeSource], **kw: Any) -> KubeSource:
    config = from_kubeconfig(api.kubeconfig(tmp_path / "kubeconfig"))
    kw.setdefault("backoff_s", (0.05, 0.2))
    kw.setdefault("coalesce_s", 0.05)
    source = KubeSource(config, registry=config_registry(), **kw)
    made.append(source)
    return source


class Changes:
    """Collects the snapshots a source hands over."""

    def __init__(self) -> None:
        self.snapshots: list[MeshSnapshot] = []

    def __call__(self, snapshot: MeshSnapshot) -> None:
        self.snapshots.append(snapshot)

    @property
    def last(self) -> MeshSnapshot:
        return self.snapshots[-1]


def pods(snapshot: MeshSnapshot) -> dict[str, tuple[str, ...]]:
    return {w.name: w.ips for w in snapshot.workloads}


async def watching(source: KubeSource) -> Changes:
    """Run ``source.watch`` as the role would; the ``sources`` fixture cancels it."""
    changes = Changes()
    _watch_tasks.append(asyncio.get_running_loop().create_task(source.watch(changes)))
    return changes


async def test_first_load_lists_every_resource_into_the_model(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    api.put(waypoint_gateway("waypoint", address="10.96.0.99"))
    api.put({"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": "{}"}})
    api.put({"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "unrelated", "namespace": "default"}, "data": {"big": "x" * 1000}})
    source = kube_source(api, tmp_path, sources)
    snapshot = await source.reload(timeout_s=10)
    assert pods(snapshot) == {"echo-1": ("10.0.0.1",)}
    assert [s.name for s in snapshot.services] == ["echo"]
    assert [w.name for w in snapshot.waypoints] == ["waypoint"]
    assert set(snapshot.namespaces) == {"default"}
    # the field selector keeps ConfigMaps to Istio's mesh config (Resource.field_selector)
    assert [(c.namespace, c.name) for c in snapshot.objects("ConfigMap")] == [("istio-system", "istio")]
    # list items come without kind/apiVersion (the server strips them); managedFields are dropped
    echo = snapshot.objects("Pod")[0]
    assert echo.body["kind"] == "Pod" and echo.body["apiVersion"] == "v1"
    assert "managedFields" not in echo.body["metadata"]
    assert echo.source == "kubernetes:pods/default/echo-1"
    assert snapshot.problems == ()
    assert source.snapshot is snapshot


async def test_added_modified_deleted_apply_in_one_snapshot_per_burst(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    source = kube_source(api, tmp_path, sources, coalesce_s=0.2)
    await source.reload(timeout_s=10)
    changes = await watching(source)
    for i in range(2, 7):  # ADDED x5
        api.put(pod(f"echo-{i}", f"10.0.0.{i}", labels={"app": "echo"}))
    api.put(pod("echo-1", "10.0.0.1", labels={"app": "echo", "version": "v2"}))  # MODIFIED
    api.delete("v1", "Service", "default", "echo")  # DELETED
    await wait_for(lambda: changes.snapshots and len(changes.last.workloads) == 6
                   and not changes.last.services, what="burst applied")
    assert len(changes.snapshots) <= 2, "a burst of 7 events is coalesced"
    echo1 = next(w for w in changes.last.workloads if w.name == "echo-1")
    assert echo1.labels["version"] == "v2"
    assert changes.last.generation > 1


async def test_bad_object_is_reported_by_name_and_field_and_its_last_good_version_stays(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    source = kube_source(api, tmp_path, sources)
    await source.reload(timeout_s=10)
    changes = await watching(source)
    bad = pod("echo-1", "10.0.0.1", labels={"app": "echo"}, ports=[{"containerPort": 70000}])
    api.put(bad)
    api.put(pod("fresh", "10.0.0.50", ports=[{"containerPort": "http"}]))  # new and bad: never in force
    await wait_for(lambda: changes.snapshots and len(changes.last.problems) == 2, what="both rejected")
    problems = {p.name: p for p in changes.last.problems}
    assert problems["echo-1"] == ManifestProblem(
        "kubernetes:pods/default/echo-1", "Pod", "default", "echo-1",
        "spec.containers[0].ports[0].containerPort", problems["echo-1"].message)
    assert "65535" in problems["echo-1"].message or "port" in problems["echo-1"].message
    assert problems["fresh"].file == "kubernetes:pods/default/fresh"
    assert pods(changes.last) == {"echo-1": ("10.0.0.1",)}, "last good echo-1 in force, fresh not"
    assert source.problems == changes.last.problems
    # fixed: the new version replaces the old and the report goes; deleted: the bad one's report goes
    api.put(pod("echo-1", "10.0.0.7", labels={"app": "echo"}))
    api.delete("v1", "Pod", "default", "fresh")
    await wait_for(lambda: not changes.last.problems and pods(changes.last) == {"echo-1": ("10.0.0.7",)},
                   what="fixed and deleted")


async def test_broken_watch_reconnects_from_its_resource_version_and_misses_nothing(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    source = kube_source(api, tmp_path, sources)
    await source.reload(timeout_s=10)
    changes = await watching(source)
    await wait_for(lambda: api.open_watches(PODS) == 1, what="pod watch open")
    api.break_watches()  # connections dropped; the events below queue behind the drop
    api.put(pod("echo-2", "10.0.0.2"))
    api.delete("v1", "Pod", "default", "echo-1")
    assert source.snapshot.workloads, "the model is kept while disconnected"
    await wait_for(lambda: changes.snapshots and pods(changes.last) == {"echo-2": ("10.0.0.2",)},
                   what="events from the gap")
    assert api.replayed >= 2, "the gap was replayed from the old resourceVersion"
    assert api.lists[PODS] == 1, "no relist for a broken connection"


async def test_clean_close_rewatches_from_the_last_resource_version_and_bookmarks_move_it(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    source = kube_source(api, tmp_path, sources)
    await source.reload(timeout_s=10)
    changes = await watching(source)
    api.put(pod("echo-2", "10.0.0.2"))
    await wait_for(lambda: changes.snapshots and len(changes.last.workloads) == 2, what="echo-2")
    api.bookmark()
    pod_store = next(w.store for w in source.watchers if w.resource.plural == "pods")
    await wait_for(lambda: pod_store.resource_version == str(api.rv), what="bookmark applied")
    n = len(changes.snapshots)
    api.close_watches()
    await wait_for(lambda: len([r for r in api.watch_requests if r[0] == PODS]) == 2, what="re-watch")
    assert [r for r in api.watch_requests if r[0] == PODS][-1][1] == str(api.rv)
    assert api.lists[PODS] == 1
    assert len(changes.snapshots) == n, "a bookmark or a clean close is no change"


async def test_expired_resource_version_410_relists(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    source = kube_source(api, tmp_path, sources)
    await source.reload(timeout_s=10)
    changes = await watching(source)
    await wait_for(lambda: api.open_watches(PODS) == 1, what="pod watch open")
    api.break_watches()
    api.delete("v1", "Pod", "default", "echo-1")
    api.put(pod("echo-3", "10.0.0.3"))
    api.compact()  # the gap is gone from the history: resuming gets ERROR 410 "too old resource version"
    await wait_for(lambda: changes.snapshots and pods(changes.last) == {"echo-3": ("10.0.0.3",)},
                   what="relisted state")
    assert api.lists[PODS] == 2
    assert api.replayed == 0


async def test_missing_crd_is_skipped_and_the_rest_works(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    api.missing.add(GATEWAYS)
    source = kube_source(api, tmp_path, sources)
    snapshot = await source.reload(timeout_s=10)
    assert pods(snapshot) == {"echo-1": ("10.0.0.1",)}
    assert source.unserved == ["gateways.gateway.networking.k8s.io"]
    changes = await watching(source)
    api.put(pod("echo-2", "10.0.0.2"))
    await wait_for(lambda: changes.snapshots and len(changes.last.workloads) == 2, what="pods still watched")


async def test_list_pages_are_followed(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_client, "LIST_PAGE", 2)
    for i in range(2, 6):
        api.put(pod(f"echo-{i}", f"10.0.0.{i}"))
    snapshot = await kube_source(api, tmp_path, sources).reload(timeout_s=10)
    assert len(snapshot.workloads) == 5
    assert api.lists[PODS] == 3


async def test_in_cluster_config_from_the_service_account_files(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(api.token + "\n")
    (account / "ca.crt").write_bytes(api.pki.ca_pem)
    (account / "namespace").write_text("istio-system")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    config = in_cluster(env, account)
    assert (config.server, config.namespace, config.origin) == (api.url, "istio-system", "in-cluster")
    source = KubeSource(config, registry=config_registry())
    sources.append(source)
    assert pods(await source.reload(timeout_s=10)) == {"echo-1": ("10.0.0.1",)}
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster({}, account)
    with pytest.raises(KubeConfigError, match="service account"):
        in_cluster(env, tmp_path / "nowhere")


async def test_kubeconfig_with_a_client_certificate(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    config = from_kubeconfig(api.kubeconfig(tmp_path / "kc", client_cert=True))
    assert config.token is None and config.client_cert_pem is not None
    source = KubeSource(config, registry=config_registry())
    sources.append(source)
    assert pods(await source.reload(timeout_s=10)) == {"echo-1": ("10.0.0.1",)}


async def test_a_refused_token_never_loads_an_empty_mesh(
    api: FakeApiServer, tmp_path: Path, sources: list[KubeSource]
) -> None:
    config = from_kubeconfig(api.kubeconfig(tmp_path / "kc", token="wrong"))
    source = KubeSource(config, registry=config_registry(), backoff_s=(0.05, 0.1))
    sources.append(source)
    with pytest.raises(TimeoutError):
        await source.reload(timeout_s=0.5)
    assert source.snapshot.generation == 0
