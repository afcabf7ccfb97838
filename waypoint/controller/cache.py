"""What the cluster has, per watched resource, kept by the same list/watch loop as the mesh source.

A cache plugs into :class:`~waypoint.mesh.kubeapi.watcher.ResourceWatcher` where the mesh source
puts its ``ResourceStore`` (same ``replace``/``apply``/``resource_version`` contract: client-go's
``Store``), but keeps raw objects rather than mesh models, and tells the controller which Gateway
to reconcile after each change, as istiod's handlers do (``EnqueueForParentHandler`` for the
objects a Gateway owns; for Gateways, only when generation, labels or annotations changed, so our
own status writes do not come back as work). Pure: no I/O.

- :class:`GatewayCache`: every Gateway, whole (less ``managedFields``, as Istio's informers strip).
- :class:`OwnedCache`: Deployments, Services, ServiceAccounts, ClusterRoleBindings, each reduced to an
  :class:`Observed` record: whether it carries our managed label (istiod will not take over an object
  without it: ``canManage``), which Gateway it belongs to, and for a Service its addresses and ports.
  Every object of the kind is recorded (a name taken by someone else matters), but few bytes each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from waypoint.controller.render import GATEWAY_NAME_LABEL, GATEWAY_NAMESPACE_LABEL, MANAGED_LABEL, MANAGED_VALUE
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry
from waypoint.mesh.kubeapi.resources import Resource
from waypoint.mesh.kubeapi.store import ResourceStore, WatchEvent

Name = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Enqueue = Callable[[Name], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Observed:
    """An object the controller renders, as far as decisions need it (no resourceVersion: a
    record that compares equal means nothing worth reconciling happened)."""

    managed: bool  # carries gateway.istio.io/managed: istio.io-mesh-controller
    gateway: Name | None  # the Gateway it belongs to
    generation: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    cluster_ips: tuple[str, ...] = ()  # Services only
    ports: tuple[int, ...] = ()  # Services only


class _Cache(ResourceStore, Generic[T]):
    """The list/watch contract over a dict of views; subclasses say what a view is and whom it concerns."""

    def __init__(self, resource: Resource, enqueue: Enqueue) -> None:
        super().__init__(resource, KindRegistry(), ParseContext())
        self.enqueue = enqueue
        self.items: dict[Name, T] = {}

    def get(self, namespace: str, name: str) -> T | None:
        return self.items.get((namespace, name))

    def replace(self, items: Iterable[Any], resource_version: str) -> bool:
        listed: set[Name] = set()
        changed = False
        for raw in items:
            if isinstance(raw, Mapping):
                listed.add(_name(raw))
                changed |= self._put(raw)
        for key in [k for k in self.items if k not in listed]:
            changed |= self._drop(key)
        self.resource_version = resource_version
        return changed

    def apply(self, event: WatchEvent) -> bool:
        if event.type == "ERROR":
            raise ValueError("an ERROR event ends the watch; it is not applied to the cache")
        changed = False
        if event.type == "DELETED":
            changed = self._drop(_name(event.object))
        elif event.type in ("ADDED", "MODIFIED"):
            changed = self._put(event.object)
        if event.resource_version:
            self.resource_version = event.resource_version
        return changed

    def _put(self, raw: Mapping[str, Any]) -> bool:
        key = _name(raw)
        new = self._view(raw)
        old = self.items.get(key)
        self.items[key] = new
        if old is not None and not self._matters(old, new):
            return False
        for parent in {*self._parents(key, old), *self._parents(key, new)}:
            self.enqueue(parent)
        return True

    def _drop(self, key: Name) -> bool:
        old = self.items.pop(key, None)
        if old is None:
            return False
        for parent in self._parents(key, old):
            self.enqueue(parent)
        return True

    def _view(self, raw: Mapping[str, Any]) -> T:
        raise NotImplementedError

    def _matters(self, old: T, new: T) -> bool:
        return old != new

    def _parents(self, key: Name, view: T | None) -> Iterable[Name]:
        raise NotImplementedError


class GatewayCache(_Cache[Mapping[str, Any]]):
    """Every Gateway, whole; a change is work only when the Gateway's intent changed."""

    def _view(self, raw: Mapping[str, Any]) -> Mapping[str, Any]:
        doc = dict(raw)
        doc.setdefault("kind", "Gateway")
        doc.setdefault("apiVersion", self.resource.api_version)
        md = doc.get("metadata")
        if isinstance(md, Mapping) and "managedFields" in md:
            doc["metadata"] = {k: v for k, v in md.items() if k != "managedFields"}
        return doc

    def _matters(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """istiod's Gateway handler: generation, labels, annotations (and a re-created Gateway's uid)."""
        a, b = old.get("metadata") or {}, new.get("metadata") or {}
        return any(a.get(k) != b.get(k) for k in ("generation", "labels", "annotations", "uid"))

    def _parents(self, key: Name, view: Mapping[str, Any] | None) -> Iterable[Name]:
        return (key,) if view is not None else ()


class OwnedCache(_Cache[Observed]):
    """Objects of a kind the controller renders, reduced to :class:`Observed`."""

    def _view(self, raw: Mapping[str, Any]) -> Observed:
        md = raw.get("metadata")
        meta: Mapping[str, Any] = md if isinstance(md, Mapping) else {}
        labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
        assert isinstance(labels, Mapping)
        gen = meta.get("generation")
        spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
        assert isinstance(spec, Mapping)
        return Observed(
            managed=labels.get(MANAGED_LABEL) == MANAGED_VALUE,
            gateway=_owner_gateway(meta, labels),
            generation=gen if isinstance(gen, int) else 0,
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            cluster_ips=_cluster_ips(spec) if self.resource.kind == "Service" else (),
            ports=_ports(spec) if self.resource.kind == "Service" else (),
        )

    def _parents(self, key: Name, view: Observed | None) -> Iterable[Name]:
        return (view.gateway,) if view is not None and view.gateway is not None else ()


def _owner_gateway(meta: Mapping[str, Any], labels: Mapping[str, Any]) -> Name | None:
    """The Gateway an object belongs to: its Gateway ownerReference (``EnqueueForParentHandler``),
    or, for our cluster-scoped ClusterRoleBinding, the two labels naming it."""
    namespace = meta.get("namespace")
    for ref in meta.get("ownerReferences") or ():
        if (isinstance(ref, Mapping) and ref.get("kind") == "Gateway"
                and str(ref.get("apiVersion", "")).startswith("gateway.networking.k8s.io/")
                and isinstance(namespace, str) and isinstance(ref.get("name"), str)):
            return (namespace, ref["name"])
    ns, name = labels.get(GATEWAY_NAMESPACE_LABEL), labels.get(GATEWAY_NAME_LABEL)
    if not namespace and isinstance(ns, str) and isinstance(name, str) and labels.get(MANAGED_LABEL) == MANAGED_VALUE:
        return (ns, name)
    return None


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[str, ...]:
    ips = spec.get("clusterIPs")
    if isinstance(ips, list) and ips:
        return tuple(str(ip) for ip in ips if ip and ip != "None")
    ip = spec.get("clusterIP")
    return (ip,) if isinstance(ip, str) and ip and ip != "None" else ()


def _ports(spec: Mapping[str, Any]) -> tuple[int, ...]:
    ports = spec.get("ports") or ()
    return tuple(p["port"] for p in ports if isinstance(p, Mapping) and isinstance(p.get("port"), int))


def _name(raw: Mapping[str, Any]) -> Name:
    md = raw.get("metadata")
    meta: Mapping[str, Any] = md if isinstance(md, Mapping) else {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
