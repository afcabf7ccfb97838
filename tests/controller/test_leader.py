"""Leader election for ``waypoint controller``: the Lease state machine as tables (client-go
``tools/leaderelection/leaderelection.go`` ``tryAcquireOrRenew``/``renew``/``release``; Lease fields from
``resourcelock/leaselock.go``), then two controllers against the API server stand-in: one writes, and
when it stops the other takes over within the lease duration and carries on."""

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
from waypoint.cli import build_parser
from waypoint.controller.cli import LEASE_NAME, lease_config_from
from waypoint.controller.controller import WaypointController
from waypoint.controller.leader import LeaseLeader
from waypoint.controller.lease import Elector, LeaseConfig, LeaseRecord
from waypoint.controller.settings import ControllerSettings
from waypoint.mesh.kubeapi.client import ApiError, KubeClient
from waypoint.mesh.kubeapi.config import from_kubeconfig

ME, OTHER = "pod-a", "pod-b"
CONFIG = LeaseConfig("waypoint-system", LEASE_NAME, ME)  # client-go defaults: 15 s, 10 s, 2 s


def lease(
    holder: str, *, rv: str = "7", transitions: int = 3, acquired: str = "t0", renewed: str = "t0"
) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": "waypoint-system", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": acquired,
                     "renewTime": renewed, "leaseTransitions": transitions}}


# -- the state machine ------------------------------------------------------------------------

def test_no_lease_is_created_with_us_as_holder_and_no_transitions() -> None:
    step = Elector(CONFIG).plan(None, now=100.0, stamp="T")
    assert step.action == "create" and step.lease is not None
    assert step.lease["metadata"] == {"name": LEASE_NAME, "namespace": "waypoint-system"}
    assert step.lease["spec"] == {"holderIdentity": ME, "leaseDurationSeconds": 15, "acquireTime": "T",
                                  "renewTime": "T", "leaseTransitions": 0}


@pytest.mark.parametrize(("seen_at", "now", "action"), [
    (100.0, 100.0, "wait"),     # just seen: held
    (100.0, 114.999, "wait"),   # one tick before leaseDuration after we saw it
    (100.0, 115.0, "acquire"),  # expired by our clock (observedTime + leaseDuration is not after now)
])
def test_someone_elses_lease_expires_by_our_clock_not_its_timestamps(seen_at: float, now: float, action: str) -> None:
    e = Elector(CONFIG)
    assert e.plan(lease(OTHER, renewed="2000-01-01T00:00:00.000000Z"), seen_at, "T").action == "wait"
    step = e.plan(lease(OTHER, renewed="2000-01-01T00:00:00.000000Z"), now, "T")
    assert (step.action, step.holder) == (action, OTHER)
    if action == "acquire":
        assert step.lease is not None
        assert step.lease["metadata"]["resourceVersion"] == "7"  # the update is conditional on what we read
        assert LeaseRecord.of(step.lease) == LeaseRecord(ME, 15, "T", "T", 4)  # a transition


def test_a_renewal_seen_restarts_the_wait() -> None:
    e = Elector(CONFIG)
    e.plan(lease(OTHER, rv="7", renewed="r1"), 100.0, "T")
    assert e.plan(lease(OTHER, rv="8", renewed="r2"), 110.0, "T").action == "wait"  # changed: seen anew
    assert e.plan(lease(OTHER, rv="8", renewed="r2"), 124.0, "T").action == "wait"
    assert e.plan(lease(OTHER, rv="8", renewed="r2"), 125.0, "T").action == "acquire"


@pytest.mark.parametrize("holder", ["", ME])
def test_released_or_own_lease_is_taken_at_once(holder: str) -> None:
    step = Elector(CONFIG).plan(lease(holder, acquired="a0"), 100.0, "T")
    if holder:  # ours (a restart with the same identity): a renewal keeps acquireTime and transitions
        assert (step.action, LeaseRecord.of(step.lease or {})) == ("renew", LeaseRecord(ME, 15, "a0", "T", 3))
    else:
        assert (step.action, LeaseRecord.of(step.lease or {})) == ("acquire", LeaseRecord(ME, 15, "T", "T", 4))


def test_leader_renews_and_leads_until_the_renew_deadline_after_its_last_write() -> None:
    e = Elector(CONFIG)
    step = e.plan(None, 100.0, "T1")
    assert not e.leading(100.0)  # not before the write succeeded
    assert step.lease is not None
    e.wrote({**step.lease, "metadata": {**step.lease["metadata"], "resourceVersion": "8"}})
    assert e.leading(100.0) and e.leading(109.999) and not e.leading(110.0)
    renew = e.plan(lease(ME, rv="8", acquired="T1", renewed="T1", transitions=0), 102.0, "T2")
    assert renew.action == "renew" and renew.lease is not None
    assert LeaseRecord.of(renew.lease) == LeaseRecord(ME, 15, "T1", "T2", 0)
    e.failed(103.0)  # e.g. a 409: still leading on the last write
    assert e.leading(109.0) and not e.leading(110.0)
    e.wrote(renew.lease)
    assert e.deadline() == 112.0 and e.leading(111.0)
    e.failed(112.5)  # a failure after the deadline ends the term for good
    assert e.deadline() is None and not e.leading(112.5)


def test_leader_that_sees_another_holder_has_lost_at_once() -> None:
    e = Elector(CONFIG)
    step = e.plan(None, 100.0, "T")
    assert step.lease is not None
    e.wrote(step.lease)
    lost = e.plan(lease(OTHER, rv="9"), 101.0, "T")
    assert (lost.action, lost.lease, lost.holder) == ("lost", None, OTHER)
    assert not e.leading(101.0)
    assert e.plan(lease(OTHER, rv="9"), 102.0, "T").action == "wait"


def test_release_clears_the_holder_only_when_it_is_ours() -> None:
    e = Elector(CONFIG)
    released = e.release(lease(ME, transitions=5), "T")
    assert released is not None and released["metadata"]["resourceVersion"] == "7"
    assert LeaseRecord.of(released) == LeaseRecord("", 1, "T", "T", 5)
    assert e.release(lease(OTHER), "T") is None


@pytest.mark.parametrize(("kw", "message"), [
    ({"lease_duration_s": 10.0}, "greater than the renew deadline"),
    ({"renew_deadline_s": 2.4, "lease_duration_s": 15.0}, "retry period"),
    ({"identity": ""}, "identity"),
])
def test_timings_are_checked_as_client_go_does(kw: dict[str, Any], message: str) -> None:
    args = {"namespace": "ns", "name": "n", "identity": ME, **kw}
    with pytest.raises(ValueError, match=message):
        LeaseConfig(**args)


def test_cli_defaults_elect_with_our_own_lease_name() -> None:
    argv = ["controller", "--kubernetes", "--identity", "pod-x", "--lease-namespace", "ns"]
    args = build_parser("controller").parse_args(argv)
    assert args.leader_elect
    assert lease_config_from(args) == LeaseConfig("ns", "waypoint-gateway-deployment-controller", "pod-x")
    assert not build_parser("controller").parse_args(["controller", "--kubernetes", "--no-leader-elect"]).leader_elect


# -- two controllers against the API server stand-in -------------------------------------------

FAST = {"lease_duration_s": 1.5, "renew_deadline_s": 1.0, "retry_period_s": 0.2}
SETTINGS = ControllerSettings(image="registry.example/waypoint:1.2")
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/waypoint-system/leases/{LEASE_NAME}"


class Replica:
    """One ``waypoint controller`` replica: its client, elector and controller as the CLI wires them."""

    def __init__(self, api: FakeApiServer, kubeconfig: Path, identity: str) -> None:
        self.client = KubeClient(from_kubeconfig(kubeconfig))
        self.leader = LeaseLeader(self.client, LeaseConfig("waypoint-system", LEASE_NAME, identity, **FAST))
        self.controller = WaypointController(self.client, SETTINGS, backoff_s=(0.05, 0.5), leader=self.leader)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.controller.run()), loop.create_task(self.leader.run())]

    async def stop(self, *, release: bool) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if release:
            await self.leader.release()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def two_replicas(api: FakeApiServer, tmp: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    # a bearer token for one, a client certificate for the other: the server tells their writes apart
    a = Replica(api, api.kubeconfig(tmp / "a"), "pod-a")
    b = Replica(api, api.kubeconfig(tmp / "b", client_cert=True), "pod-b")
    try:
        yield a, b
    finally:
        for r in (a, b):
            await r.stop(release=False)


def deployment(api: FakeApiServer, name: str) -> dict[str, Any] | None:
    return api.get("apps/v1", "Deployment", "shop", name)


def gateway_writers(api: FakeApiServer) -> set[str]:
    return {w.user for w in api.writes if w.method == "PATCH" and w.status in (200, 201)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("release", [False, True], ids=["leader-killed", "leader-released"])
async def test_only_the_leader_writes_and_the_other_takes_over_when_it_stops(tmp_path: Path, release: bool) -> None:
    async with FakeApiServer() as api, two_replicas(api, tmp_path) as (a, b):
        await wait_for(lambda: a.leader.is_leader or b.leader.is_leader, 10, "a leader elected")
        api.put(gateway("first", uid="uid-first"))
        await wait_for(lambda: deployment(api, "first") is not None, 10, "first Deployment")
        leader, follower = (a, b) if a.leader.is_leader else (b, a)
        held = api.get("coordination.k8s.io/v1", "Lease", "waypoint-system", LEASE_NAME)
        assert held is not None and held["spec"]["holderIdentity"] == leader.leader.config.identity
        assert gateway_writers(api) == {"token" if leader is a else "cert:waypoint-test"}  # one writer only
        assert not follower.leader.is_leader and not follower.controller.pending()  # it watches all the same

        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await leader.stop(release=release)
        await wait_for(lambda: follower.leader.is_leader, 5, "the follower takes over")
        took = loop.time() - stopped_at
        # within the lease duration (+ one jittered retry period and a round) of the last renewal;
        # at once when the old leader released the Lease on its way out
        assert took < (1.2 if release else FAST["lease_duration_s"] + 1.0), took
        new = api.get("coordination.k8s.io/v1", "Lease", "waypoint-system", LEASE_NAME)
        assert new is not None and new["spec"]["holderIdentity"] == follower.leader.config.identity
        assert new["spec"]["leaseTransitions"] == held["spec"]["leaseTransitions"] + 1

        before = len(api.writes)
        api.put(gateway("second", uid="uid-second"))  # the work continues under the new leader
        await wait_for(lambda: deployment(api, "second") is not None, 10, "second Deployment")
        assert {w.user for w in api.writes[before:] if w.method == "PATCH"} == {
            "cert:waypoint-test" if follower is b else "token"}


@pytest.mark.timeout(30)
async def test_leader_whose_lease_is_taken_stops_reconciling_at_once(tmp_path: Path) -> None:
    async with FakeApiServer() as api:
        solo = Replica(api, api.kubeconfig(tmp_path / "kc"), "pod-a")
        try:
            await wait_for(lambda: solo.leader.is_leader, 10, "leading")
            held = api.get("coordination.k8s.io/v1", "Lease", "waypoint-system", LEASE_NAME)
            assert held is not None
            api.put({**held, "spec": {**held["spec"], "holderIdentity": "usurper"}})  # another took it
            await wait_for(lambda: not solo.leader.is_leader, 2, "stepped down")
            before = len(api.writes)
            api.put(gateway("late", uid="uid-late"))
            with pytest.raises(AssertionError):  # nothing is reconciled while another holds the Lease
                await wait_for(lambda: deployment(api, "late") is not None, 0.5, "late Deployment")
            assert [w for w in api.writes[before:] if w.method == "PATCH"] == []
        finally:
            await solo.stop(release=False)


@pytest.mark.timeout(30)
async def test_stale_resource_version_is_a_conflict(tmp_path: Path) -> None:
    async with FakeApiServer() as api:
        client = KubeClient(from_kubeconfig(api.kubeconfig(tmp_path / "kc")))
        try:
            from waypoint.controller.leader import LEASES

            created = await client.create(LEASES, lease(ME, rv=""))
            with pytest.raises(ApiError) as exists:
                await client.create(LEASES, lease(OTHER, rv=""))
            assert exists.value.status == 409 and exists.value.reason == "AlreadyExists"
            renewed = await client.replace(LEASES, {**created, "spec": {**created["spec"], "renewTime": "t1"}})
            with pytest.raises(ApiError) as stale:  # a writer still holding the first read loses
                await client.replace(LEASES, {**created, "spec": {**created["spec"], "holderIdentity": OTHER}})
            assert stale.value.status == 409 and stale.value.reason == "Conflict"
            got = await client.get(LEASES, "waypoint-system", LEASE_NAME)
            assert got == renewed and got["spec"]["holderIdentity"] == ME
            assert await client.get(LEASES, "waypoint-system", "nope") is None
        finally:
            await client.aclose()
