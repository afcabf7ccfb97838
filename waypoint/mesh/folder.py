"""The config folder as a mesh source: ``waypoint dev --config DIR`` and friends.

Loads ``*.yaml``, ``*.yml`` and ``*.json`` under a folder (recursively; multi-document YAML,
``kind: List``), validates each object with a :class:`~waypoint.mesh.kube.KindRegistry`, and
builds one immutable :class:`~waypoint.mesh.model.MeshSnapshot`. A rejected object is reported
(``ManifestProblem``, logged at ERROR) and the rest still loads. On reload, a bad new version of
an object keeps its last good version in force, as a half-saved edit should not take a service
down; an object that disappears from the files is removed. Change detection is polling
(mtime/size, then content), so no inotify dependency and it works on any filesystem.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from waypoint.errors import ManifestError
from waypoint.mesh.kinds import ParseContext
from waypoint.mesh.kube import KindRegistry, ParsedObject, default_registry
from waypoint.mesh.model import ManifestProblem, MeshSnapshot
from waypoint.mesh.snapshot import assemble

log = logging.getLogger(__name__)

OnChange = Callable[[MeshSnapshot], Awaitable[None] | None]
_SUFFIXES = (".yaml", ".yml", ".json")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster
Key = tuple[str, str, str]


class _FileUnreadable(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class FolderSource:
    """A folder (or one file) of Kubernetes manifests. Not thread-safe: one owner task."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        registry: KindRegistry | None = None,
        context: ParseContext | None = None,
    ) -> None:
        self.path = Path(path)
        self.registry = registry or default_registry()
        self.context = context or ParseContext()
        self._good: dict[Key, ParsedObject] = {}  # last good version of every object in force
        self._snapshot = MeshSnapshot()
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._digest: bytes | None = None
        self._generation = 0

    @property
    def snapshot(self) -> MeshSnapshot:
        """The current snapshot (empty until the first :meth:`reload`)."""
        return self._snapshot

    @property
    def problems(self) -> tuple[ManifestProblem, ...]:
        """What the last load rejected (for the admin config dump)."""
        return self._snapshot.problems

    def reload(self) -> MeshSnapshot:
        """Read every file now and build a new snapshot (whatever the fingerprint says)."""
        files = self._files()
        self._fingerprint = _fingerprint(files)
        contents = _read_all(files)
        self._digest = _digest(contents)
        return self._build(contents)

    def poll(self) -> MeshSnapshot | None:
        """A new snapshot if any file changed since the last load, else ``None``."""
        files = self._files()
        fingerprint = _fingerprint(files)
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        contents = _read_all(files)
        digest = _digest(contents)
        if digest == self._digest:  # touched, not changed
            return None
        self._digest = digest
        return self._build(contents)

    async def watch(self, on_change: OnChange, interval_s: float = 0.5) -> None:
        """Poll every ``interval_s`` and hand each new snapshot to ``on_change``; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                snapshot = self.poll()
            except OSError as e:  # folder briefly gone (editor rename, remount): try again later
                log.warning("cannot scan %s: %s", self.path, e)
                continue
            if snapshot is None:
                continue
            try:
                result = on_change(snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("config change handler failed for generation %d", snapshot.generation)

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise FileNotFoundError(f"config path {self.path} is not a file or folder")
        found: list[Path] = []
        for root, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skips ConfigMap ..data links
            found.extend(
                Path(root, n) for n in sorted(names) if n.endswith(_SUFFIXES) and not n.startswith(".")
            )
        return found

    def _build(self, contents: Mapping[Path, bytes]) -> MeshSnapshot:
        problems: list[ManifestProblem] = []
        accepted: dict[Key, ParsedObject] = {}
        for path, data in contents.items():
            name = self._display(path)
            try:
                docs = _documents(path, data)
            except _FileUnreadable as e:
                field = f"line {e.line}" if e.line is not None else ""
                problems.append(_report(ManifestProblem(name, "", "", "", field, e.message)))
                kept = {k: p for k, p in self._good.items() if p.obj.source == name}
                accepted.update(kept)  # what the file held before stays in force until it parses again
                continue
            for doc in docs:
                self._accept(doc, name, accepted, problems)
        self._good = accepted
        self._generation += 1
        self._snapshot = assemble(accepted.values(), problems, self._generation)
        log.info(
            "config %s generation %d: %d objects, %d rejected",
            self.path,
            self._generation,
            len(accepted),
            len(problems),
        )
        return self._snapshot

    def _accept(
        self, doc: Any, file: str, accepted: dict[Key, ParsedObject], problems: list[ManifestProblem]
    ) -> None:
        key = self.registry.identity(doc, self.context.default_namespace)
        try:
            parsed = self.registry.parse(doc, self.context, file)
        except ManifestError as e:
            problems.append(_report(ManifestProblem(file, *key, e.field, e.message)))
            previous = self._good.get(key)
            if previous is not None and key[2]:
                log.warning("keeping the last good version of %s %s/%s", *key)
                accepted[key] = previous
            return
        if parsed is None:
            return
        if parsed.obj.key in accepted:
            log.warning("%s %s/%s is defined twice; %s wins", *parsed.obj.key, file)
        accepted[parsed.obj.key] = parsed

    def _display(self, path: Path) -> str:
        if self.path.is_dir():
            return str(path.relative_to(self.path))
        return path.name


def _report(problem: ManifestProblem) -> ManifestProblem:
    log.error("%s", problem.describe())
    return problem


def _fingerprint(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:  # deleted between walk and stat
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _read_all(files: list[Path]) -> dict[Path, bytes]:
    contents: dict[Path, bytes] = {}
    for p in files:
        try:
            contents[p] = p.read_bytes()
        except FileNotFoundError:
            continue
    return contents


def _digest(contents: Mapping[Path, bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p, data in contents.items():
        h.update(str(p).encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.digest()


def _documents(path: Path, data: bytes) -> list[Any]:
    """Every object document in one file (``kind: List`` expanded); raises ``_FileUnreadable``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _FileUnreadable(None, f"not UTF-8: {e}") from None
    if path.suffix == ".json":
        try:
            loaded = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise _FileUnreadable(e.lineno, f"JSON syntax error: {e.msg} (column {e.colno})") from None
        docs = loaded if isinstance(loaded, list) else [loaded]
    else:
        try:
            docs = list(yaml.load_all(text, Loader=_Loader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            raise _FileUnreadable(line, f"YAML syntax error: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise _FileUnreadable(None, f"YAML error: {e}") from None
    out: list[Any] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(d for d in doc["items"] if d is not None)
        else:
            out.append(doc)
    return out
