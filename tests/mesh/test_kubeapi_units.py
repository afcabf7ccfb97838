"""The pure parts of the API server source, in memory: the store, the reflector policy, the
resource table and the kubeconfig reader (client-go ``tools/cache/reflector.go`` behaviour)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.mesh.objects import pod
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import default_registry
from waypoint.mesh.kubeapi import RESOURCES, ClusterConfig, KubeConfigError, from_kubeconfig
from waypoint.mesh.kubeapi.config import TokenSource
from waypoint.mesh.kubeapi.reflector import (
    Backoff,
    WatchEnd,
    after_watch,
    list_resource_version,
    watch_timeout_s,
)
from waypoint.mesh.kubeapi.resources import resources_for
from waypoint.mesh.kubeapi.store import ResourceStore, WatchEvent, decode_event

PODS = next(r for r in RESOURCES if r.kind == "Pod")


def versioned(obj: dict[str, Any], rv: int, *, strip_type: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(obj))
    out["metadata"]["resourceVersion"] = str(rv)
    if strip_type:  # as list items come
        del out["kind"], out["apiVersion"]
    return out


def store() -> ResourceStore:
    return ResourceStore(PODS, default_registry(), ParseContext())


# -- store ---------------------------------------------------------------------------------------
def test_store_list_then_events_track_objects_and_resource_version() -> None:
    s = store()
    assert s.replace([versioned(pod("a", "10.0.0.1"), 5, strip_type=True)], "7")
    assert s.resource_version == "7" and list(s.good) == [("Pod", "default", "a")]
    assert s.apply(WatchEvent("ADDED", versioned(pod("b", "10.0.0.2"), 8)))
    assert not s.apply(WatchEvent("MODIFIED", versioned(pod("b", "10.0.0.2"), 8))), "same version: no change"
    assert s.apply(WatchEvent("DELETED", versioned(pod("a", "10.0.0.1"), 9)))
    assert not s.apply(WatchEvent("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "12"}}))
    assert list(s.good) == [("Pod", "default", "b")] and s.resource_version == "12"


def test_store_relist_removes_what_is_gone_and_skips_what_is_unchanged() -> None:
    s = store()
    s.replace([versioned(pod("a", "10.0.0.1"), 5), versioned(pod("b", "10.0.0.2"), 6)], "6")
    parsed_a = s.good[("Pod", "default", "a")]
    assert s.replace([versioned(pod("a", "10.0.0.1"), 5)], "20")
    assert s.good == {("Pod", "default", "a"): parsed_a}, "unchanged object not re-parsed"
    assert not s.replace([versioned(pod("a", "10.0.0.1"), 5)], "21")


def test_store_rejected_version_keeps_the_last_good_one_and_delete_clears_both() -> None:
    s = store()
    s.replace([versioned(pod("a", "10.0.0.1"), 5)], "5")
    bad = versioned(pod("a", "nope"), 6)
    assert s.apply(WatchEvent("MODIFIED", bad))
    (problem,) = s.problems.values()
    assert (problem.file, problem.kind, problem.name, problem.field) == (
        "kubernetes:pods/default/a", "Pod", "a", "status.podIP")
    assert s.good[("Pod", "default", "a")].model.ips == ("10.0.0.1",)  # type: ignore[union-attr]
    assert s.apply(WatchEvent("DELETED", bad))
    assert not s.good and not s.problems


def test_store_refuses_error_events() -> None:
    with pytest.raises(ValueError):
        store().apply(WatchEvent("ERROR", {"code": 410}))


def test_decode_event() -> None:
    e = decode_event(b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}')
    assert (e.type, e.status_code) == ("ERROR", 410)
    for garbage in (b"[]", b'{"type":"NOPE","object":{}}', b'{"type":"ADDED"}'):
        with pytest.raises(ValueError):
            decode_event(garbage)
    with pytest.raises(ValueError):
        decode_event(b"{not json")


# -- reflector policy ----------------------------------------------------------------------------
def test_backoff_doubles_from_half_a_second_to_thirty_and_resets() -> None:
    b = Backoff(rand=lambda: 0.0)
    assert [b.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next() == 0.5
    assert 0.5 <= Backoff(rand=lambda: 1.0).next() <= 0.55 + 1e-9


@pytest.mark.parametrize(
    ("end", "events", "duration", "relist", "waits"),
    [
        (WatchEnd.CLOSED, 3, 0.1, False, False),  # clean close: re-watch at once (reflector.go ListAndWatch)
        (WatchEnd.CLOSED, 0, 0.1, False, True),  # "very short watch": back off
        (WatchEnd.EXPIRED, 0, 0.0, True, False),  # 410: relist now
        (WatchEnd.BROKEN, 2, 5.0, False, True),  # broken: back off, resume from the resourceVersion
        (WatchEnd.ERROR, 0, 0.0, True, True),  # other ERROR event: back off, relist
    ],
)
def test_after_watch(end: WatchEnd, events: int, duration: float, relist: bool, waits: bool) -> None:
    step = after_watch(end, events, duration, Backoff(rand=lambda: 0.0))
    assert step.relist is relist
    assert (step.delay_s > 0) is waits


def test_broken_watches_back_off_longer_until_one_works() -> None:
    b = Backoff(rand=lambda: 0.0)
    delays = [after_watch(WatchEnd.BROKEN, 0, 0.0, b).delay_s for _ in range(3)]
    assert delays == [0.5, 1, 2]
    assert after_watch(WatchEnd.BROKEN, 4, 60.0, b).delay_s == 0.5


def test_list_resource_version_and_watch_timeout() -> None:
    assert list_resource_version("", False) == "0"  # first list may come from the watch cache
    assert list_resource_version("42", False) == "42"
    assert list_resource_version("42", True) == ""  # after 410: a consistent read
    assert watch_timeout_s(lambda: 0.0) == 300 and watch_timeout_s(lambda: 0.999) == 599


# -- resources -----------------------------------------------------------------------------------
def test_resource_paths_and_names() -> None:
    by_kind = {r.kind: r for r in RESOURCES}
    assert by_kind["Pod"].path == "/api/v1/pods"
    assert by_kind["ReferenceGrant"].path == "/apis/gateway.networking.k8s.io/v1beta1/referencegrants"
    assert by_kind["AuthorizationPolicy"].api_version == "security.istio.io/v1"
    assert by_kind["Namespace"].object_source("", "shop") == "kubernetes:namespaces/shop"
    assert by_kind["EndpointSlice"].display == "endpointslices.discovery.k8s.io"


def test_only_kinds_the_registry_knows_are_watched() -> None:
    registry = default_registry()
    kinds = {r.kind for r in resources_for(registry)}
    assert {"Pod", "Service", "Namespace", "EndpointSlice", "Gateway", "HTTPRoute"} <= kinds
    registry_without = {r.kind for r in RESOURCES if registry.knows(r.kind)}
    assert kinds == registry_without


# -- kubeconfig ----------------------------------------------------------------------------------
def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], ctx: str = "a") -> Path:
    doc = {
        "current-context": ctx,
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "shop"}},
                     {"name": "b", "context": {"cluster": "c"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path = tmp_path / "config"
    path.write_text(json.dumps(doc))
    return path


def test_kubeconfig_files_are_relative_to_it_and_data_wins(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA FILE")
    (tmp_path / "tok").write_text("file-token\n")
    path = kubeconfig(tmp_path, {"server": "https://k:6443/", "certificate-authority": "ca.pem"},
                      {"tokenFile": "tok", "client-key-data": base64.b64encode(b"KEY").decode(),
                       "client-key": "missing.pem"})
    config = from_kubeconfig(path)
    assert config.server == "https://k:6443" and config.ca_pem == b"CA FILE"
    assert config.token_file == tmp_path / "tok" and config.client_key_pem == b"KEY"
    assert config.namespace == "shop"
    other = from_kubeconfig(path, context="b")
    assert other.token is None and other.namespace == "default"


def test_kubeconfig_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="exec"):
        from_kubeconfig(kubeconfig(tmp_path, {"server": "https://k"}, {"exec": {"command": "aws"}}))
    with pytest.raises(KubeConfigError, match="no server"):
        from_kubeconfig(kubeconfig(tmp_path, {}, {}))
    with pytest.raises(KubeConfigError, match="no context named 'zz'"):
        from_kubeconfig(kubeconfig(tmp_path, {"server": "https://k"}, {}, ctx="zz"))
    with pytest.raises(KubeConfigError, match="cannot read"):
        from_kubeconfig(tmp_path / "absent")


def test_token_file_is_reread_every_minute(tmp_path: Path) -> None:
    """Bound service account tokens rotate: client-go re-reads the file (cached file token source)."""
    token = tmp_path / "token"
    token.write_text("one\n")
    now = [0.0]
    tokens = TokenSource(ClusterConfig("https://k", token_file=token), lambda: now[0])
    assert tokens.token() == "one"
    token.write_text("two")
    now[0] = 59.0
    assert tokens.token() == "one"
    now[0] = 60.0
    assert tokens.token() == "two"
    token.unlink()
    now[0] = 200.0
    assert tokens.token() == "two", "a briefly missing file keeps the last token"
