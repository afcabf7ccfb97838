"""Filters by name: built-ins, then the ``waypoint.filters`` entry-point group.

A waypoint's configuration lists filters as ``[{name, config}, ...]``. A third-party package
registers ``name = "module:factory"`` under ``[project.entry-points."waypoint.filters"]``; the
factory is either a :class:`Filter` subclass (built with ``from_config(config)`` if it has one, else
``cls(**config)``) or a callable ``factory(config) -> Filter``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from waypoint.errors import ManifestError
from waypoint.l7.filter import Filter
from waypoint.l7.filters.forwarded import Forwarded
from waypoint.l7.filters.headers import HeaderManipulation
from waypoint.l7.filters.request_id import RequestId

GROUP = "waypoint.filters"

BUILTIN: dict[str, Callable[[Mapping[str, Any]], Filter]] = {
    "headers": HeaderManipulation.from_config,
    "request-id": lambda config: RequestId(),
    "forwarded": lambda config: Forwarded(),
}


def build_filter(factory: Any, config: Mapping[str, Any]) -> Filter:
    if isinstance(factory, type) and issubclass(factory, Filter):
        from_config = getattr(factory, "from_config", None)
        built = from_config(config) if callable(from_config) else factory(**config)
    else:
        built = factory(config)
    if not isinstance(built, Filter):
        raise TypeError(f"{factory!r} made {type(built).__name__}, not a waypoint.l7.filter.Filter")
    return built


def load_filters(specs: Sequence[Mapping[str, Any]], available: Iterable[EntryPoint] | None = None) -> list[Filter]:
    """Build the configured filters in order. ``available`` defaults to the installed entry points."""
    eps = {ep.name: ep for ep in (available if available is not None else entry_points(group=GROUP))}
    filters: list[Filter] = []
    for i, spec in enumerate(specs):
        name = spec.get("name")
        config = spec.get("config") or {}
        if not isinstance(name, str) or not name:
            raise ManifestError(f"filters[{i}].name", "a filter needs a name")
        if not isinstance(config, Mapping):
            raise ManifestError(f"filters[{i}].config", "must be a mapping")
        if name in BUILTIN:
            filters.append(BUILTIN[name](config))
            continue
        ep = eps.get(name)
        if ep is None:
            known = ", ".join(sorted({*BUILTIN, *eps}))
            raise ManifestError(
                f"filters[{i}].name",
                f"unknown filter {name!r}: not built in nor in entry points group {GROUP!r} (known: {known})",
            )
        try:
            filters.append(build_filter(ep.load(), config))
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise ManifestError(f"filters[{i}]", f"filter {name!r} could not be built: {exc}") from exc
    return filters
