"""The dev CA mints what istiod would: P-256 leaves with only the SPIFFE URI SAN (facts §1.1, §1.2)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from waypoint.identity.ca import CAError, DevCA
from waypoint.identity.certs import WorkloadCertificate
from waypoint.identity.spiffe import Identity
from waypoint.testing.certs import dev_ca, expired_cert, workload_cert

ID = Identity("cluster.local", "bookinfo", "reviews")


def _verify(cert: WorkloadCertificate, roots: bytes, at: datetime | None = None) -> list[x509.GeneralName]:
    """Chain-verify as a TLS server verifies a client certificate (clientAuth EKU)."""
    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    store = Store(x509.load_pem_x509_certificates(roots))
    builder = PolicyBuilder().store(store)
    if at is not None:
        builder = builder.time(at)
    verified = builder.build_client_verifier().verify(chain[0], chain[1:])
    return list(verified.subjects or [])


def test_root_is_a_p256_self_signed_ca() -> None:
    ca = DevCA.create("example.org")
    root = ca.root_cert
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.trust_domain == "example.org"


@pytest.mark.parametrize("with_intermediate", [False, True])
def test_issued_leaf_verifies_and_carries_exactly_the_uri_san(with_intermediate: bool) -> None:
    ca = DevCA.create(with_intermediate=with_intermediate)
    cert = ca.issue(ID)
    assert _verify(cert, ca.root_pem) == [x509.UniformResourceIdentifier(str(ID))]
    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    assert len(chain) == (2 if with_intermediate else 1)  # full chain, root travels apart
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(str(ID))]
    assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.identity == ID and cert.root_pem == ca.root_pem


def test_default_lifetime_is_24h_and_refresh_is_at_half_life() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = dev_ca().issue(ID, not_before=start)
    assert cert.not_after - start == timedelta(hours=24)
    assert cert.refresh_at == start + timedelta(hours=12)


def test_expired_certificate_fails_verification_now() -> None:
    cert = expired_cert("a", "b")
    assert cert.expired(datetime.now(UTC))
    with pytest.raises(VerificationError):
        _verify(cert, dev_ca().root_pem)
    # the same certificate did verify while it was valid
    assert _verify(cert, dev_ca().root_pem, at=cert.not_after - timedelta(minutes=1))


def test_other_ca_does_not_verify() -> None:
    with pytest.raises(VerificationError):
        _verify(workload_cert("a", "b"), DevCA.create().root_pem)


def test_issue_refuses_a_non_positive_lifetime() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        dev_ca().issue(ID, lifetime=timedelta(0))


@pytest.mark.parametrize("with_intermediate", [False, True])
def test_save_load_round_trip_keeps_keys_private(tmp_path: Path, with_intermediate: bool) -> None:
    ca = DevCA.create("td.example", with_intermediate=with_intermediate)
    written = ca.save(tmp_path)
    assert {p.name for p in written} >= {"root-cert.pem", "root-key.pem"}
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("key.pem") else 0o644), path.name
    loaded = DevCA.load(tmp_path)
    assert loaded.trust_domain == "td.example"
    assert loaded.root_pem == ca.root_pem
    cert = loaded.issue(Identity("td.example", "a", "b"))
    _verify(cert, ca.root_pem)


def test_load_reports_missing_or_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="cannot load"):
        DevCA.load(tmp_path)
    DevCA.create().save(tmp_path)
    other = tmp_path / "other"
    DevCA.create().save(other)
    (tmp_path / "root-key.pem").write_bytes((other / "root-key.pem").read_bytes())
    with pytest.raises(CAError, match="does not match"):
        DevCA.load(tmp_path)
