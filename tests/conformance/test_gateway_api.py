"""The Gateway API conformance records (GAMMA mesh profile: 22 tests, 78 cases) against `waypoint dev`,
through the shared runner (``../shared/conformance/gateway-api/harness``), exactly as it is meant to be run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT.parent / "shared" / "conformance" / "gateway-api" / "harness" / "run_gateway_api.py"
WAYPOINT = Path(sys.executable).with_name("waypoint")


@pytest.mark.timeout(900)
def test_every_mesh_conformance_test_passes(tmp_path: Path) -> None:
    assert RUNNER.exists(), f"the shared conformance runner is missing: {RUNNER}"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--waypoint-bin", str(WAYPOINT), "--workdir", str(tmp_path),
         "--json", str(tmp_path / "result.json")],
        capture_output=True, text=True, timeout=880, check=False,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{last}\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert last == "gateway-api mesh: 22/22 tests pass (78/78 cases)", last
