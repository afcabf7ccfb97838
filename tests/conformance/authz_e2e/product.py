"""`waypoint dev --config DIR` as a user runs it: a subprocess, ready when 15021 says so, observed only
through its admin config dump (15000) and its log.

A policy change is a rewrite of one file in the folder; it is in force once the admin dump shows a
newer snapshot generation. The dev mesh applies a snapshot to every waypoint role first and to the
ztunnel last (``waypoint/devmesh/mesh.py`` ``DevMesh.apply``), and the ztunnel's dump reports the
generation it holds, so a newer generation there means every enforcement point has it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import topology

WAYPOINT = str(Path(sys.executable).with_name("waypoint"))
CASE_FILE = "50-case.yaml"
T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` (every 20 ms) until it returns a value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what} not met in {timeout}s"
        time.sleep(0.02)


class DevProduct:
    def __init__(self, folder: Path, endpoints: topology.Endpoints) -> None:
        self.folder = folder
        self.endpoints = endpoints
        self.log_path = folder.parent / "product.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.applied: str | None = None  # the case file's current content

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, docs: list[topology.Doc]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        topology.write(self.folder / "00-world.yaml", topology.static_docs())
        topology.write(self.folder / CASE_FILE, docs)
        self.applied = json.dumps(docs, sort_keys=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [WAYPOINT, "dev", "--config", str(self.folder), *self.endpoints.cli_args()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._ready, 30, "waypoint dev ready on 15021")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def _ready(self) -> bool | None:
        assert self.proc is not None and self.proc.poll() is None, f"waypoint dev exited:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(self._url(self.endpoints.readiness, "/healthz/ready"), timeout=1) as r:
                return True if r.status == 200 else None
        except OSError:
            return None

    @staticmethod
    def _url(address: tuple[str, int], path: str) -> str:
        return f"http://{address[0]}:{address[1]}{path}"

    # -- observing --------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        with urllib.request.urlopen(self._url(self.endpoints.admin, "/config_dump"), timeout=5) as r:
            found: dict[str, Any] = json.loads(r.read())
            return found

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    # -- changing the folder ----------------------------------------------------------------------
    def apply(self, docs: list[topology.Doc]) -> dict[str, Any]:
        """Put ``docs`` in force (if they are not already) and return the admin dump that shows them.

        An object the product rejects keeps its last good version (``waypoint/mesh/folder.py``), so
        when the new folder has a rejected object, it is applied again after an empty case file:
        the case then sees exactly its own policies, as a fresh cluster would."""
        key = json.dumps(docs, sort_keys=True)
        if key == self.applied:
            return self.dump()
        dump = self._write_and_wait(docs)
        if dump["problems"]:
            self._write_and_wait([d for d in docs if d["kind"] != "AuthorizationPolicy"])
            dump = self._write_and_wait(docs)
        self.applied = key
        return dump

    def _write_and_wait(self, docs: list[topology.Doc]) -> dict[str, Any]:
        before = self.dump()["generation"]
        topology.write(self.folder / CASE_FILE, docs)

        def newer() -> dict[str, Any] | None:
            dump = self.dump()
            return dump if dump["generation"] > before else None

        return wait_until(newer, 10, "the new policies in the admin dump")
