"""Fixtures for the Envoy harness tests: one throw-away mesh CA per module, loopback 127.0.7.x."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.envoy import CertPaths, TestCA

Issue = Callable[[str, str], CertPaths]


@pytest.fixture(scope="module")
def mesh_ca() -> TestCA:
    return TestCA("cluster.local")


@pytest.fixture
def issue(mesh_ca: TestCA, tmp_path: Path) -> Issue:
    """``issue("ns", "sa")`` → the cert directory of that identity, under this test's tmp_path."""

    def _issue(namespace: str, service_account: str) -> CertPaths:
        identity = mesh_ca.spiffe_id(namespace, service_account)
        return mesh_ca.write_cert_dir(tmp_path / f"{namespace}.{service_account}", identity)

    return _issue
