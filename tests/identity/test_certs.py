"""Certificate files in Istio's layout, the dev provider's half-life refresh, the file source."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from waypoint.identity.certs import (
    CertificateError,
    CertificateProvider,
    DevCertificateProvider,
    FileCertificateSource,
    WorkloadCertificate,
    load_istio_layout,
)
from waypoint.identity.spiffe import Identity
from waypoint.testing.certs import dev_ca, workload_cert

A = Identity("cluster.local", "ns1", "a")
B = Identity("cluster.local", "ns2", "b")


def test_istio_layout_round_trip(tmp_path: Path) -> None:
    cert = workload_cert("ns1", "a")
    paths = cert.write_istio_layout(tmp_path)
    assert [p.name for p in paths] == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [
        "cert-chain.pem",
        "key.pem",
        "root-cert.pem",
    ]  # no temp files left
    assert load_istio_layout(tmp_path) == cert


def test_load_refuses_a_key_that_is_not_the_leafs(tmp_path: Path) -> None:
    workload_cert("ns1", "a").write_istio_layout(tmp_path)
    (tmp_path / "key.pem").write_bytes(workload_cert("ns2", "b").key_pem)
    with pytest.raises(CertificateError, match="does not match"):
        load_istio_layout(tmp_path)


def test_load_refuses_garbage_and_reports_missing_files(tmp_path: Path) -> None:
    workload_cert("ns1", "a").write_istio_layout(tmp_path)
    (tmp_path / "cert-chain.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAA")
    with pytest.raises(CertificateError, match="unparseable"):
        load_istio_layout(tmp_path)
    (tmp_path / "root-cert.pem").unlink()
    with pytest.raises(FileNotFoundError):
        load_istio_layout(tmp_path)


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_dev_provider_mints_per_identity_and_re_mints_at_half_life() -> None:
    # ZT:src/tls/certificate.rs refresh_at: not_before + (not_after - not_before) / 2 (facts §1.1)
    clock = FakeClock()
    provider: CertificateProvider = DevCertificateProvider(dev_ca(), clock=clock)
    first = provider.certificate_for(A)
    assert first.identity == A and first.not_before == clock.now
    assert provider.certificate_for(B).identity == B
    clock.now += timedelta(hours=11, minutes=59)
    assert provider.certificate_for(A) is first
    clock.now += timedelta(minutes=1)
    second = provider.certificate_for(A)
    assert second is not first and second.not_before == clock.now
    assert second.not_after == clock.now + timedelta(hours=24)


def _source_with(tmp_path: Path, cert: WorkloadCertificate) -> FileCertificateSource:
    cert.write_istio_layout(tmp_path)
    return FileCertificateSource(tmp_path)


def test_file_source_detects_a_rotation(tmp_path: Path) -> None:
    source = _source_with(tmp_path, workload_cert("ns1", "a"))
    assert source.certificate_for(A) == workload_cert("ns1", "a")
    assert source.check_for_changes() is False
    fresh = dev_ca().issue(A)
    fresh.write_istio_layout(tmp_path)
    assert source.check_for_changes() is True
    assert source.current == fresh
    assert source.check_for_changes() is False


def test_file_source_ignores_a_half_written_set(tmp_path: Path) -> None:
    old = workload_cert("ns1", "a")
    source = _source_with(tmp_path, old)
    new = dev_ca().issue(A)
    # the writer has replaced the chain but not yet the key: the key no longer matches the leaf
    (tmp_path / "cert-chain.pem").write_bytes(new.chain_pem)
    assert source.check_for_changes() is False
    assert source.current == old
    # a truncated key file, mid-write
    (tmp_path / "key.pem").write_bytes(new.key_pem[: len(new.key_pem) // 2])
    assert source.check_for_changes() is False
    assert source.current == old
    (tmp_path / "key.pem").write_bytes(new.key_pem)
    assert source.check_for_changes() is True
    assert source.current == new


def test_file_source_ignores_a_touch_without_change(tmp_path: Path) -> None:
    source = _source_with(tmp_path, workload_cert("ns1", "a"))
    (tmp_path / "key.pem").write_bytes((tmp_path / "key.pem").read_bytes())  # new mtime, same bytes
    assert source.check_for_changes() is False


def test_file_source_refuses_another_identity(tmp_path: Path) -> None:
    source = _source_with(tmp_path, workload_cert("ns1", "a"))
    with pytest.raises(CertificateError):
        source.certificate_for(B)


async def test_watch_calls_back_with_the_new_certificate(tmp_path: Path) -> None:
    source = _source_with(tmp_path, workload_cert("ns1", "a"))
    seen: asyncio.Queue[WorkloadCertificate] = asyncio.Queue()

    async def on_change(cert: WorkloadCertificate) -> None:
        await seen.put(cert)

    watcher = asyncio.create_task(source.watch(0.01, on_change))
    try:
        fresh = dev_ca().issue(A)
        fresh.write_istio_layout(tmp_path)
        assert await asyncio.wait_for(seen.get(), 5) == fresh
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
