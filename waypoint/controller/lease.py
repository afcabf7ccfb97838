"""Leader election over a ``coordination.k8s.io/v1`` Lease, as client-go does it, without I/O.

This follows client-go ``tools/leaderelection/leaderelection.go`` (``tryAcquireOrRenew``, ``renew``,
``release``) and ``resourcelock/leaselock.go`` (the Lease spec fields). One round is: the edge GETs
the Lease, :meth:`Elector.plan` says what to write (or to wait), the edge writes it with the
resourceVersion it read (create, or update carrying ``metadata.resourceVersion``), then reports
:meth:`Elector.wrote` or :meth:`Elector.failed`. A 409 means another candidate wrote first: that
round is lost, nothing else.

Two clocks, both passed in. Expiry and the renew deadline use ``now``, this process's monotonic
seconds, never the timestamps in the Lease: as client-go, a candidate times a holder's lease from
when *it* last saw the record change (``observedTime``), so clock skew between pods does not matter.
``stamp`` is the wall-clock MicroTime written into ``acquireTime``/``renewTime`` for people and tools.

Safety rests on ``renew_deadline < lease_duration``: a leader stops at its last successful write's
start + ``renew_deadline``, while anyone else waits ``lease_duration`` after seeing that write.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

LEASE_API_VERSION = "coordination.k8s.io/v1"
JITTER_FACTOR = 1.2  # client-go leaderelection.JitterFactor


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who we are, and client-go's timings (``LeaderElectionConfig`` defaults)."""

    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        # the checks of client-go NewLeaderElector
        if self.lease_duration_s <= self.renew_deadline_s:
            raise ValueError("lease duration must be greater than the renew deadline")
        if self.renew_deadline_s <= JITTER_FACTOR * self.retry_period_s:
            raise ValueError(f"renew deadline must be greater than retry period * {JITTER_FACTOR}")
        if self.retry_period_s <= 0:
            raise ValueError("retry period must be positive")
        if not self.identity:
            raise ValueError("identity must not be empty")
        if not self.namespace or not self.name:
            raise ValueError("lease namespace and name must not be empty")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease ``spec`` as client-go's ``LeaderElectionRecord`` reads it."""

    holder: str = ""
    lease_duration_s: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        """leaselock.go ``LeaderElectionRecordToLeaseSpec``: unset times are left out."""
        out: dict[str, Any] = {"holderIdentity": self.holder, "leaseDurationSeconds": self.lease_duration_s,
                               "leaseTransitions": self.transitions}
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


Action = Literal["create", "acquire", "renew", "wait", "lost"]


@dataclass(frozen=True)
class Step:
    """What one round should do. ``lease`` is the body to write (create, acquire, renew), else None;
    ``holder`` is who holds the Lease as last seen ("" for nobody)."""

    action: Action
    lease: dict[str, Any] | None
    holder: str


def micro_time(now: datetime.datetime) -> str:
    """``metav1.MicroTime`` as the API server writes it (RFC 3339, microseconds, UTC)."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """One candidate's view of the election. Feed it each observed Lease; ask :meth:`leading`."""

    def __init__(self, config: LeaseConfig) -> None:
        self.config = config
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # start of our last successful write, while leading
        self._attempt_at = 0.0

    @property
    def holder(self) -> str:
        return self._observed.holder if self._observed is not None else ""

    def leading(self, now: float) -> bool:
        """True until ``renew_deadline`` after our last successful write started (client-go ``renew``)."""
        return self._renewed_at is not None and now < self._renewed_at + self.config.renew_deadline_s

    def deadline(self) -> float | None:
        """When leadership ends unless renewed; None when not leading."""
        return None if self._renewed_at is None else self._renewed_at + self.config.renew_deadline_s

    def plan(self, lease: Mapping[str, Any] | None, now: float, stamp: str) -> Step:
        """Decide this round from the Lease as read (None: there is none) (``tryAcquireOrRenew``)."""
        self._attempt_at = now
        ours = LeaseRecord(self.config.identity, int(self.config.lease_duration_s), stamp, stamp, 0)
        if lease is None:
            return Step("create", self._lease_object(None, ours), "")
        old = LeaseRecord.of(lease)
        if old != self._observed:
            self._observed, self._observed_at = old, now
        mine = old.holder == self.config.identity
        if old.holder and not mine and now < self._observed_at + self.config.lease_duration_s:
            was_leading = self._renewed_at is not None
            self._renewed_at = None
            return Step("lost" if was_leading else "wait", None, old.holder)
        if mine:  # renewal keeps acquireTime and the transition count
            record = LeaseRecord(ours.holder, ours.lease_duration_s, old.acquire_time or stamp, stamp,
                                 old.transitions)
            return Step("renew", self._lease_object(lease, record), old.holder)
        record = LeaseRecord(ours.holder, ours.lease_duration_s, stamp, stamp, old.transitions + 1)
        return Step("acquire", self._lease_object(lease, record), old.holder)

    def wrote(self, stored: Mapping[str, Any]) -> None:
        """The planned write succeeded; ``stored`` is the Lease as the server answered."""
        self._observed, self._observed_at = LeaseRecord.of(stored), self._attempt_at
        self._renewed_at = self._attempt_at

    def failed(self, now: float) -> None:
        """The round failed (409 conflict, error, timeout): leadership lapses at its deadline."""
        if not self.leading(now):
            self._renewed_at = None

    def release(self, lease: Mapping[str, Any], stamp: str) -> dict[str, Any] | None:
        """The Lease to write on a clean stop so a successor need not wait (client-go ``release``, with
        ``ReleaseOnCancel``); None when it is not ours. Call only after our work has stopped."""
        old = LeaseRecord.of(lease)
        self._renewed_at = None
        if old.holder != self.config.identity:
            return None
        return self._lease_object(lease, LeaseRecord("", 1, stamp, stamp, old.transitions))

    def _lease_object(self, read: Mapping[str, Any] | None, record: LeaseRecord) -> dict[str, Any]:
        """The object to write: as read (so its resourceVersion guards the update) with our spec."""
        if read is None:
            return {"apiVersion": LEASE_API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": record.spec()}
        out = copy.deepcopy(dict(read))
        out.setdefault("apiVersion", LEASE_API_VERSION)
        out.setdefault("kind", "Lease")
        out["spec"] = {**(out.get("spec") or {}), **record.spec()}
        return out
