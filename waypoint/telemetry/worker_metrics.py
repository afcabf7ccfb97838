"""One ``/metrics`` for several worker processes: the sum over every worker's registry.

Istio's waypoint is one Envoy with N worker threads and one stats store, so its 15020 shows every
request once. Our workers are processes (``waypoint.roles.workers``), each with its own registry.
Worker 0 serves the HTTP endpoint; every other worker answers its exposition on a private Unix
socket in a folder the parent made before forking (and removes when they have all exited). A scrape
asks each socket, parses the texts and adds the samples up (``_created`` timestamps: the earliest).

Why not prometheus_client's multiprocess mode: it swaps a module-global value class before any
metric exists (a global singleton, and it would reach the dev mesh and tests sharing the process),
and every increment becomes a locked write into an mmapped file. Here the hot path stays an
in-memory addition and all the cost is at scrape time, a few times a minute.

A worker that does not answer makes the scrape fail (503) rather than report a partial sum: a
Prometheus counter that drops looks like a reset, a failed scrape is just a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from waypoint.telemetry.admin import Response

FETCH_TIMEOUT_S = 2.0


def socket_path(folder: str, index: int) -> str:
    """Where worker ``index`` answers its own metrics."""
    return os.path.join(folder, f"worker-{index}.sock")


class _Merged:
    """A collector yielding already-merged families (so ``generate_latest`` formats them)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(texts: Sequence[str]) -> bytes:
    """The Prometheus text exposition of the sum of ``texts`` (same-named samples with the same
    labels are added; ``*_created`` samples take the earliest). Families keep their first order."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = into.get(key)
                if seen is None:
                    into[key] = sample.value
                elif sample.name.endswith("_created"):
                    into[key] = min(seen, sample.value)
                else:
                    into[key] = seen + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))  # type: ignore[arg-type]
    return generate_latest(registry)


async def serve_registry(registry: CollectorRegistry, path: str) -> asyncio.Server:
    """Answer every connection on the Unix socket ``path`` with ``registry``'s exposition."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(registry))
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from an earlier run in a reused folder
    return await asyncio.start_unix_server(answer, path)


async def fetch(path: str, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """One worker's exposition; raises ``OSError``/``TimeoutError`` if it does not answer."""

    async def read() -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            return await reader.read()
        finally:
            writer.close()

    return (await asyncio.wait_for(read(), timeout_s)).decode()


def merged_metrics_routes(
    registry: CollectorRegistry, peers: Sequence[str]
) -> dict[str, Callable[[], Awaitable[Response]]]:
    """``/metrics`` and ``/stats/prometheus`` summing ``registry`` and the workers at ``peers``."""

    async def scrape() -> Response:
        try:
            texts = await asyncio.gather(*(fetch(path) for path in peers))
        except (OSError, TimeoutError) as exc:
            return Response(503, f"a worker's metrics are unavailable: {exc}\n".encode())
        own = generate_latest(registry).decode()
        return Response(200, merge_expositions([own, *texts]), CONTENT_TYPE_LATEST)

    return {"/metrics": scrape, "/stats/prometheus": scrape}
