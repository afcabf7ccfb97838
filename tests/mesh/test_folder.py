"""The folder source: rejects with file/object/field, last good kept, deletes, hot reload,
and a folder written by the conformance harness's topology.py."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mesh import objects as o
from waypoint.mesh.folder import FolderSource
from waypoint.mesh.model import MeshSnapshot
from waypoint.mesh.state import MeshState

HARNESS = Path("/work/shared/conformance/gateway-api/harness")


def write(path: Path, *docs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))


def names(snap: MeshSnapshot) -> set[str]:
    return {s.name for s in snap.services} | {w.name for w in snap.workloads}


def test_bad_object_rejected_with_file_object_field_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = o.service("bad", "127.0.200.2", ns="shop", ports=[{"name": "http", "port": 80, "targetPort": 0}])
    write(
        tmp_path / "a.yaml",
        o.service("good", "127.0.200.1", ns="shop"),
        bad,
        o.pod("p", "127.10.0.1", ns="shop"),
    )
    caplog.set_level(logging.ERROR, logger="waypoint.mesh.folder")
    snap = FolderSource(tmp_path).reload()
    assert names(snap) == {"good", "p"}
    (problem,) = snap.problems
    assert (problem.file, problem.kind, problem.namespace, problem.name, problem.field) == (
        "a.yaml",
        "Service",
        "shop",
        "bad",
        "spec.ports[0].targetPort",
    )
    assert (
        "rejected a.yaml: Service shop/bad: spec.ports[0].targetPort: must be between 1 and 65535, not 0"
        in (caplog.text)
    )


def test_recursive_multi_document_json_and_list(tmp_path: Path) -> None:
    write(
        tmp_path / "nested" / "deeper" / "b.yml",
        o.service("b", "127.0.200.2"),
        None,
        o.service("c", "127.0.200.3"),
    )
    (tmp_path / "d.json").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [o.service("d", "127.0.200.4"), o.pod("e", "127.10.0.5")],
            }
        )
    )
    (tmp_path / "notes.txt").write_text("kind: Service")  # not a manifest suffix
    (tmp_path / ".hidden.yaml").write_text("{")  # editor swap file: skipped
    write(
        tmp_path / "deploy.yaml", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    )
    source = FolderSource(tmp_path)
    snap = source.reload()
    assert names(snap) == {"b", "c", "d", "e"} and snap.problems == () and source.problems == ()


def test_single_file_path(tmp_path: Path) -> None:
    write(tmp_path / "one.yaml", o.service("a", "127.0.200.1"))
    assert names(FolderSource(tmp_path / "one.yaml").reload()) == {"a"}


def test_bad_edit_keeps_last_good_object_and_delete_removes(tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    write(f, o.service("a", "127.0.200.1"), o.service("b", "127.0.200.2"))
    source = FolderSource(tmp_path)
    first = source.reload()
    edited = o.service("a", "127.0.200.1", ports=[{"name": "http", "port": 99999}])
    write(f, edited, o.service("b", "127.0.200.2", ports=[{"name": "http", "port": 81}]))
    second = source.poll()
    assert second is not None and second.generation == first.generation + 1
    a = next(s for s in second.services if s.name == "a")
    assert a.ports[0].port == 80  # the last good version stays in force
    assert next(s for s in second.services if s.name == "b").ports[0].port == 81  # good edits apply
    assert [(p.name, p.field) for p in second.problems] == [("a", "spec.ports[0].port")]
    assert first.services[0].ports[0].port == 80  # the old snapshot is untouched
    third = source.poll()
    assert third is None  # nothing changed on disk
    write(f, o.service("b", "127.0.200.2"))  # 'a' deleted (even though its last edit was bad)
    fourth = source.poll()
    assert fourth is not None and names(fourth) == {"b"} and fourth.problems == ()


def test_yaml_syntax_error_names_file_and_line_and_keeps_its_objects(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", o.service("a", "127.0.200.1"))
    write(tmp_path / "b.yaml", o.service("b", "127.0.200.2"))
    source = FolderSource(tmp_path)
    source.reload()
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [a\n")
    snap = source.poll()
    assert snap is not None
    (problem,) = snap.problems
    assert problem.file == "a.yaml" and problem.field.startswith("line ")
    assert problem.describe().startswith("rejected a.yaml:") and "YAML syntax error" in problem.message
    assert names(snap) == {"a", "b"}  # a.yaml's previous objects stay until it parses again
    (tmp_path / "a.json").write_text('{"kind": ')
    snap = source.poll()
    assert snap is not None and any(p.file == "a.json" and p.field == "line 1" for p in snap.problems)


def test_touch_without_change_is_not_a_reload(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    write(f, o.service("a", "127.0.200.1"))
    source = FolderSource(tmp_path)
    source.reload()
    f.write_text(f.read_text())
    import os

    os.utime(f, ns=(1, 1))
    assert source.poll() is None


async def test_watch_hot_reload(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", o.service("a", "127.0.200.1"))
    source = FolderSource(tmp_path)
    source.reload()
    seen: list[MeshSnapshot] = []
    changed = asyncio.Event()

    async def on_change(snap: MeshSnapshot) -> None:
        seen.append(snap)
        changed.set()

    task = asyncio.create_task(source.watch(on_change, interval_s=0.02))
    try:
        write(tmp_path / "b.yaml", o.service("b", "127.0.200.2"))
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert names(seen[-1]) == {"a", "b"} and source.snapshot is seen[-1]
        changed.clear()
        (tmp_path / "a.yaml").unlink()
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert names(seen[-1]) == {"b"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture(scope="module")
def harness_topology(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sys.path.insert(0, str(HARNESS))
    try:
        import topology  # type: ignore[import-not-found]  # the conformance harness's folder writer, used as-is
    finally:
        sys.path.remove(str(HARNESS))
    cases = json.loads((HARNESS.parent / "gateway_api_cases.json").read_text())
    record = next(t for t in cases if t["name"] == "MeshPorts")
    base = topology.load_base(str(HARNESS.parent / "base_manifests.yaml"))
    out = tmp_path_factory.mktemp("meshports")
    return topology.build(record, base, str(out)), out


def test_conformance_topology_folder_loads(harness_topology: Any) -> None:
    topo, folder = harness_topology
    snap = FolderSource(folder).reload()
    assert snap.problems == ()
    state = MeshState(snap)
    assert {(s.namespace, s.name) for s in snap.services} == set(topo.services)
    for (ns, name), info in topo.services.items():
        svc = state.service(ns, name)
        assert svc is not None and svc.vips == ((info.vip,) if info.vip else ())
        assert state.service_by_vip(info.vip) is svc
    assert {(w.namespace, w.name, w.ips[0]) for w in snap.workloads} == {
        (p.namespace, p.name, p.ip) for p in topo.pods
    }
    assert {(w.namespace, w.addresses) for w in snap.waypoints} == {
        (ns, (a,)) for ns, a in topo.waypoints.items()
    }
    client = topo.client_pod("app=echo,version=v1", "gateway-conformance-mesh")
    wl = state.workload_by_ip(client.ip)
    assert wl is not None and state.is_ambient(wl) and wl.service_account == "default"
    echo = state.service("gateway-conformance-mesh", "echo")
    assert echo is not None
    wp = state.waypoint_for_service(echo)
    assert wp is not None and wp.addresses == (topo.waypoints["gateway-conformance-mesh"],)
    assert [str(i) for i in state.waypoint_identities(wp)] == [
        "spiffe://cluster.local/ns/gateway-conformance-mesh/sa/waypoint"
    ]
    assert state.waypoint_for_workload(wl) is None  # waypoint-for: service
    eps = state.endpoints(echo, 80)
    assert sorted(e.workload.name for e in eps) == sorted(
        p.name for p in topo.pods_for(topo.services[("gateway-conformance-mesh", "echo")])
    )
    assert {e.port for e in eps} == {8080}
    assert len(snap.objects("HTTPRoute")) >= 1
