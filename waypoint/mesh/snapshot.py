"""Assembling a :class:`MeshSnapshot` from accepted objects, shared by every source.

The folder source, a future Kubernetes watcher and tests all end here, so a snapshot is built
the same way whatever produced the objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from waypoint.errors import ManifestError
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry, ParsedObject, default_registry
from waypoint.mesh.model import (
    EndpointSlice,
    KubeObject,
    ManifestProblem,
    MeshSnapshot,
    Namespace,
    Service,
    Waypoint,
    Workload,
)

log = logging.getLogger(__name__)


def assemble(
    objects: Iterable[ParsedObject], problems: Iterable[ManifestProblem], generation: int
) -> MeshSnapshot:
    """One snapshot from accepted objects; shared with other sources (the API watcher)."""
    namespaces: dict[str, Namespace] = {}
    workloads: list[Workload] = []
    services: list[Service] = []
    waypoints: list[Waypoint] = []
    slices: list[EndpointSlice] = []
    raw: dict[str, list[KubeObject]] = {}
    for parsed in objects:
        raw.setdefault(parsed.obj.kind, []).append(parsed.obj)
        model = parsed.model
        if isinstance(model, Namespace):
            namespaces[model.name] = model
        elif isinstance(model, Workload):
            workloads.append(model)
        elif isinstance(model, Service):
            services.append(model)
        elif isinstance(model, Waypoint):
            waypoints.append(model)
        elif isinstance(model, EndpointSlice):
            slices.append(model)
    return MeshSnapshot(
        namespaces=MappingProxyType(namespaces),
        workloads=tuple(workloads),
        services=tuple(services),
        waypoints=tuple(waypoints),
        endpoint_slices=tuple(slices),
        raw=MappingProxyType({k: tuple(v) for k, v in raw.items()}),
        problems=tuple(problems),
        generation=generation,
    )


def snapshot_from_docs(
    docs: Iterable[Any],
    *,
    registry: KindRegistry | None = None,
    context: ParseContext | None = None,
    source: str = "",
    generation: int = 1,
) -> MeshSnapshot:
    """A snapshot from object dicts held in memory (tests, embedded configs); rejects are reported."""
    registry = registry or default_registry()
    context = context or ParseContext()
    accepted: dict[tuple[str, str, str], ParsedObject] = {}
    problems: list[ManifestProblem] = []
    for doc in docs:
        try:
            parsed = registry.parse(doc, context, source)
        except ManifestError as e:
            key = registry.identity(doc, context.default_namespace)
            problem = ManifestProblem(source, *key, e.field, e.message)
            log.error("%s", problem.describe())
            problems.append(problem)
            continue
        if parsed is not None:
            accepted[parsed.obj.key] = parsed
    return assemble(accepted.values(), problems, generation)
