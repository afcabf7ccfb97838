"""A development certificate authority, standing in for istiod's CA.

It mints what istiod's ``IstioCertificateService`` would: an EC P-256 leaf whose only name is
the workload's SPIFFE URI SAN, valid for serverAuth and clientAuth, 24 h by default (facts
§1.1 "Certificate lifetime"), delivered as a full chain (leaf first, then any intermediate;
the root travels separately, as in Istio's ``root-cert.pem``).

The root's subject Organization is the trust domain, as in the self-signed root istiod
generates, so :meth:`DevCA.load` needs nothing but the two PEM files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from waypoint.identity.certs import DEFAULT_LEAF_LIFETIME, WorkloadCertificate
from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
# Optional intermediate, named as in Istio's plug-in CA secret (`cacerts`: ca-cert.pem, ca-key.pem).
INTERMEDIATE_CERT_FILE = "ca-cert.pem"
INTERMEDIATE_KEY_FILE = "ca-key.pem"

DEFAULT_ROOT_LIFETIME = timedelta(days=3650)
ROOT_BACKDATE = timedelta(days=7)


class CAError(Exception):
    """The CA files are missing, unreadable, or already there when they must not be."""


@dataclass(frozen=True, slots=True)
class _Signer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, not_before: datetime, lifetime: timedelta
) -> x509.CertificateBuilder:
    """What every certificate here starts from: names, public key, a random serial, validity."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a workload leaf signs and enciphers keys (as istiod's do)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Signer | None,
    not_before: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    """A CA certificate: self-signed when ``issuer`` is None, else signed by it (an intermediate)."""
    sign_key = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    builder = (
        _builder(subject, issuer_name, key, not_before, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return builder.sign(sign_key, hashes.SHA256())


def _ca_subject(trust_domain: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class DevCA:
    """A root (and optionally one intermediate) that issues workload certificates.

    Made with :meth:`create` or :meth:`load`; :meth:`issue` is pure CPU (key generation and
    one signature) and touches no files.
    """

    def __init__(self, trust_domain: str, root: _Signer, intermediate: _Signer | None = None) -> None:
        self.trust_domain = trust_domain
        self._root = root
        self._intermediate = intermediate

    @classmethod
    def create(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        with_intermediate: bool = False,
        now: datetime | None = None,
    ) -> DevCA:
        """A fresh self-signed EC P-256 root (CA:true); with an intermediate if asked."""
        # Backdated so clock skew never matters and test certificates issued "in the past"
        # (to be expired now) still chain to a root that was valid at their time.
        start = (now or datetime.now(UTC)) - ROOT_BACKDATE
        root_key = _new_key()
        root_cert = _ca_cert(
            _ca_subject(trust_domain, "waypoint dev root"), root_key, None, start, DEFAULT_ROOT_LIFETIME
        )
        root = _Signer(root_cert, root_key)
        intermediate = None
        if with_intermediate:
            key = _new_key()
            cert = _ca_cert(
                _ca_subject(trust_domain, "waypoint dev intermediate"),
                key,
                root,
                start,
                DEFAULT_ROOT_LIFETIME - timedelta(days=1),
            )
            intermediate = _Signer(cert, key)
        return cls(trust_domain, root, intermediate)

    @property
    def root_pem(self) -> bytes:
        return _pem_cert(self._root.cert)

    @property
    def root_cert(self) -> x509.Certificate:
        return self._root.cert

    def issue(
        self,
        identity: Identity,
        lifetime: timedelta = DEFAULT_LEAF_LIFETIME,
        not_before: datetime | None = None,
    ) -> WorkloadCertificate:
        """Mint a leaf for ``identity``.

        ``not_before`` defaults to now; pass a time in the past (with a short ``lifetime``)
        to get an already-expired certificate for tests.
        """
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        start = not_before or datetime.now(UTC)
        signer = self._intermediate or self._root
        key = _new_key()
        leaf = (
            # Istio's workload certificates have an empty subject; the identity is the SAN,
            # which is then critical (RFC 5280 §4.2.1.6).
            _builder(x509.Name([]), signer.cert.subject, key, start, lifetime)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), critical=False
            )
            .sign(signer.key, hashes.SHA256())
        )
        chain = _pem_cert(leaf)
        if self._intermediate is not None:
            chain += _pem_cert(self._intermediate.cert)
        return WorkloadCertificate(
            identity=identity,
            chain_pem=chain,
            key_pem=_pem_key(key),
            root_pem=self.root_pem,
            not_after=leaf.not_valid_after_utc,
            not_before=leaf.not_valid_before_utc,
        )

    # --- files -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the CA's files (keys mode 0600); returns the paths written."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = [
            _write(out / ROOT_CERT_FILE, _pem_cert(self._root.cert), 0o644),
            _write(out / ROOT_KEY_FILE, _pem_key(self._root.key), 0o600),
        ]
        if self._intermediate is not None:
            written.append(_write(out / INTERMEDIATE_CERT_FILE, _pem_cert(self._intermediate.cert), 0o644))
            written.append(_write(out / INTERMEDIATE_KEY_FILE, _pem_key(self._intermediate.key), 0o600))
        return written

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DevCA:
        """Read a CA written by :meth:`save`; the trust domain comes from the root's O=."""
        src = Path(directory)
        root = _load_signer(src / ROOT_CERT_FILE, src / ROOT_KEY_FILE)
        intermediate = None
        if (src / INTERMEDIATE_CERT_FILE).exists():
            intermediate = _load_signer(src / INTERMEDIATE_CERT_FILE, src / INTERMEDIATE_KEY_FILE)
        orgs = root.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        trust_domain = str(orgs[0].value) if orgs else DEFAULT_TRUST_DOMAIN
        return cls(trust_domain, root, intermediate)

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        src = Path(directory)
        return (src / ROOT_CERT_FILE).exists() or (src / ROOT_KEY_FILE).exists()


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write with the final mode from the first byte, so a key is never briefly world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _load_signer(cert_path: Path, key_path: Path) -> _Signer:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot load CA from {cert_path.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path}: not an EC private key")
    if key.public_key() != cert.public_key():
        raise CAError(f"{key_path} does not match {cert_path}")
    return _Signer(cert, key)
