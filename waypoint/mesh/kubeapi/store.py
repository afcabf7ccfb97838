"""One resource's objects as the API server last described them, validated: no I/O here.

The store is fed a list result (:meth:`ResourceStore.replace`, client-go's ``Store.Replace``) and
then watch events one by one (:meth:`ResourceStore.apply`), and it tracks the resourceVersion to
watch from next (Kubernetes API concepts, "Efficient detection of changes": every event and every
list carries one; a BOOKMARK carries nothing else). Each object goes through the same
:meth:`KindRegistry.parse` as the folder's. A rejected version is reported naming the object and
field, and the object's last good version stays in force (as the folder source does); a DELETED
object leaves, bad or good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry, ParsedObject
from waypoint.mesh.kubeapi.resources import Resource
from waypoint.mesh.model import ManifestProblem

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (kind, namespace, name), as KindRegistry.identity gives it
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One line of a watch stream: ``{"type": ..., "object": ...}`` (API concepts, "Watch")."""

    type: str
    object: Mapping[str, Any]

    @property
    def resource_version(self) -> str:
        md = self.object.get("metadata")
        rv = md.get("resourceVersion") if isinstance(md, Mapping) else None
        return rv if isinstance(rv, str) else ""

    @property
    def status_code(self) -> int:
        """For an ERROR event: the ``Status`` object's code (410 means "too old resource version")."""
        code = self.object.get("code")
        return code if isinstance(code, int) else 0


def decode_event(line: bytes | str) -> WatchEvent:
    """Parse one newline-delimited JSON watch event; ``ValueError`` when it is not one."""
    doc = json.loads(line)
    if not isinstance(doc, dict) or doc.get("type") not in EVENT_TYPES:
        raise ValueError(f"not a watch event: {str(line)[:120]!r}")
    obj = doc.get("object")
    if not isinstance(obj, dict):
        raise ValueError(f"watch event {doc['type']} without an object")
    return WatchEvent(doc["type"], obj)


class ResourceStore:
    """The accepted objects (and open problems) of one resource. One owner task, no locking."""

    def __init__(self, resource: Resource, registry: KindRegistry, context: ParseContext) -> None:
        self.resource = resource
        self.registry = registry
        self.context = context
        self.resource_version = ""  # where the next watch starts; "" until the first list
        self.good: dict[Key, ParsedObject] = {}  # last good version of each object in force
        self.problems: dict[Key, ManifestProblem] = {}  # objects whose current version is rejected
        self._seen: dict[Key, str] = {}  # resourceVersion last applied per object (good or bad)

    def replace(self, items: Iterable[Any], resource_version: str) -> bool:
        """Make the store what a list says (objects absent from it are gone); True if anything changed."""
        changed = False
        listed: set[Key] = set()
        for item in items:
            key, item_changed = self._upsert(item)
            if key is not None:
                listed.add(key)
            changed |= item_changed
        for key in [k for k in self._seen if k not in listed]:
            changed |= self._remove(key)
        self.resource_version = resource_version
        return changed

    def apply(self, event: WatchEvent) -> bool:
        """Apply ADDED/MODIFIED/DELETED/BOOKMARK; True if the model changed. ERROR is the caller's."""
        if event.type == "ERROR":
            raise ValueError("an ERROR event ends the watch; it is not applied to the store")
        changed = False
        if event.type == "DELETED":
            key = self._key(self._complete(event.object))
            changed = self._remove(key)
        elif event.type in ("ADDED", "MODIFIED"):
            changed = self._upsert(event.object)[1]
        if event.resource_version:  # client-go watchHandler: every event moves the watch position
            self.resource_version = event.resource_version
        return changed

    def objects(self) -> Iterable[ParsedObject]:
        return self.good.values()

    def _upsert(self, raw: Any) -> tuple[Key | None, bool]:
        """Accept (or reject) one object version: (its key, whether the model changed)."""
        if not isinstance(raw, dict):
            log.warning("%s: ignored a list item that is not an object", self.resource.display)
            return None, False
        doc = self._complete(raw)
        key = self._key(doc)
        rv = _resource_version(doc)
        if rv and self._seen.get(key) == rv:  # a relist repeats what we have: no re-parse, no re-report
            return key, False
        self._seen[key] = rv
        source = self.resource.object_source(key[1], key[2])
        try:
            parsed = self.registry.parse(doc, self.context, source)
        except ManifestError as e:
            problem = ManifestProblem(source, *key, e.field, e.message)
            log.error("%s", problem.describe())
            if key in self.good:
                log.warning("keeping the last good version of %s %s/%s", *key)
            self.problems[key] = problem
            return key, True
        self.problems.pop(key, None)
        if parsed is not None:
            self.good[key] = parsed
        return key, True

    def _remove(self, key: Key) -> bool:
        self._seen.pop(key, None)
        had = self.good.pop(key, None) is not None
        return self.problems.pop(key, None) is not None or had

    def _complete(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """List items come without kind/apiVersion; managedFields are large and never read
        (Istio's informers drop them too: pkg/kube/kclient ``stripUnusedFields``)."""
        doc = dict(raw)
        doc.setdefault("kind", self.resource.kind)
        doc.setdefault("apiVersion", self.resource.api_version)
        md = doc.get("metadata")
        if isinstance(md, dict) and "managedFields" in md:
            doc["metadata"] = {k: v for k, v in md.items() if k != "managedFields"}
        return doc

    def _key(self, doc: Mapping[str, Any]) -> Key:
        return self.registry.identity(doc, self.context.default_namespace)


def _resource_version(doc: Mapping[str, Any]) -> str:
    md = doc.get("metadata")
    rv = md.get("resourceVersion") if isinstance(md, Mapping) else None
    return rv if isinstance(rv, str) else ""
