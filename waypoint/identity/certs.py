"""Workload certificates: the value, Istio's file layout, and the sources that supply them.

- :class:`WorkloadCertificate` is one identity's chain, key and trust roots, as PEM bytes.
- Istio mounts a workload's certificate as ``cert-chain.pem``, ``key.pem`` and
  ``root-cert.pem`` (the names istio-agent writes for file-mounted certificates);
  :meth:`WorkloadCertificate.write_istio_layout` and :func:`load_istio_layout` use the same.
- :class:`CertificateProvider` is the seam roles use to get a certificate for an identity.
  :class:`DevCertificateProvider` mints from a :class:`~waypoint.identity.ca.DevCA` and
  re-mints at half-life, as ztunnel refreshes (``ZT:src/tls/certificate.rs`` ``refresh_at``;
  facts §1.1). :class:`FileCertificateSource` follows a mounted directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from waypoint.identity.spiffe import Identity, InvalidIdentity

if TYPE_CHECKING:
    from waypoint.identity.ca import DevCA

CHAIN_FILE = "cert-chain.pem"
KEY_FILE = "key.pem"
ROOT_FILE = "root-cert.pem"
LAYOUT_FILES = (CHAIN_FILE, KEY_FILE, ROOT_FILE)

DEFAULT_LEAF_LIFETIME = timedelta(hours=24)  # ZT:src/config.rs L104; facts §1.1

Clock = Callable[[], datetime]


class CertificateError(ValueError):
    """PEM material that cannot be used as a workload certificate (and why)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """One workload's certificate chain (leaf first), private key and trust roots, all PEM."""

    identity: Identity
    chain_pem: bytes
    key_pem: bytes
    root_pem: bytes
    not_after: datetime
    not_before: datetime | None = field(default=None)

    @property
    def refresh_at(self) -> datetime:
        """Half-way through the validity, when ztunnel fetches a new one (facts §1.1)."""
        if self.not_before is None:
            return self.not_after
        return self.not_before + (self.not_after - self.not_before) / 2

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    def leaf(self) -> x509.Certificate:
        """The parsed leaf (the first certificate of the chain). Parses on each call: off the hot path."""
        return x509.load_pem_x509_certificates(self.chain_pem)[0]

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, root_pem: bytes) -> WorkloadCertificate:
        """Build from PEM, checking that all three parse, the key is the leaf's, and the
        leaf carries a SPIFFE ID (the first parseable URI SAN is the identity)."""
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
            x509.load_pem_x509_certificates(root_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateError(f"unparseable PEM: {exc}") from exc
        leaf = chain[0]
        if key.public_key() != leaf.public_key():
            raise CertificateError("private key does not match the leaf certificate")
        ids = identities_of(leaf)
        if not ids:
            raise CertificateError("leaf certificate has no SPIFFE URI SAN")
        return cls(
            identity=ids[0],
            chain_pem=chain_pem,
            key_pem=key_pem,
            root_pem=root_pem,
            not_after=leaf.not_valid_after_utc,
            not_before=leaf.not_valid_before_utc,
        )

    def write_istio_layout(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``cert-chain.pem``, ``key.pem`` (0600), ``root-cert.pem``; each file atomically."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        return [
            _atomic_write(out / CHAIN_FILE, self.chain_pem, 0o644),
            _atomic_write(out / KEY_FILE, self.key_pem, 0o600),
            _atomic_write(out / ROOT_FILE, self.root_pem, 0o644),
        ]


def identities_of(cert: x509.Certificate) -> list[Identity]:
    """The SPIFFE identities in a certificate's URI SANs.

    URIs that are not Istio SPIFFE IDs are skipped, as ztunnel skips them
    (``ZT:src/tls/certificate.rs`` ``identities``: a SAN that does not parse is logged, not fatal).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            found.append(Identity.parse(uri))
        except InvalidIdentity:
            continue
    return found


def load_istio_layout(directory: str | os.PathLike[str]) -> WorkloadCertificate:
    """Read the three Istio files; raises :class:`CertificateError` (or OSError if missing)."""
    src = Path(directory)
    return WorkloadCertificate.from_pem(
        (src / CHAIN_FILE).read_bytes(), (src / KEY_FILE).read_bytes(), (src / ROOT_FILE).read_bytes()
    )


def _atomic_write(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


class CertificateProvider(Protocol):
    """Where a role gets the certificate it presents for an identity."""

    def certificate_for(self, identity: Identity) -> WorkloadCertificate: ...


class DevCertificateProvider:
    """Mints on first use per identity and again once the current one is past half-life.

    Minting is synchronous CPU work (~1 ms: one P-256 key and signature) done at most once
    per identity per half-life, so it is not worth a thread hop.
    """

    def __init__(
        self, ca: DevCA, *, clock: Clock = utc_now, lifetime: timedelta = DEFAULT_LEAF_LIFETIME
    ) -> None:
        self._ca = ca
        self._clock = clock
        self._lifetime = lifetime
        self._certs: dict[Identity, WorkloadCertificate] = {}

    def certificate_for(self, identity: Identity) -> WorkloadCertificate:
        now = self._clock()
        cert = self._certs.get(identity)
        if cert is None or now >= cert.refresh_at:
            cert = self._ca.issue(identity, lifetime=self._lifetime, not_before=now)
            self._certs[identity] = cert
        return cert


class FileCertificateSource:
    """The workload certificate mounted in Istio's layout, re-read when the files change.

    A rotation writes three files, not atomically as a set; a poll that lands between the
    writes sees a chain that does not match the key. Such a set is never taken: the current
    certificate stays until all three parse and the key matches the leaf.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.current = load_istio_layout(self.directory)
        self._digest = _digest(self.current.chain_pem, self.current.key_pem, self.current.root_pem)

    def certificate_for(self, identity: Identity) -> WorkloadCertificate:
        """Provider seam: a mounted directory holds one identity; asking for another is a bug."""
        if identity != self.current.identity:
            raise CertificateError(f"{self.directory} holds {self.current.identity}, not {identity}")
        return self.current

    def check_for_changes(self) -> bool:
        """Re-read the files; True only when a new, complete certificate was taken.

        Decided on content, not on mtime and size: a rewrite within one filesystem timestamp
        tick, to the same length (a re-issued P-256 chain usually is), looks unchanged to
        ``stat``. Reading three ~1 KiB files per poll costs microseconds; parsing happens
        only when the bytes differ.
        """
        try:
            raw = tuple((self.directory / name).read_bytes() for name in LAYOUT_FILES)
        except OSError:
            return False  # mid-swap (a file briefly missing): look again next poll
        digest = _digest(*raw)
        if digest == self._digest:
            return False
        try:
            candidate = WorkloadCertificate.from_pem(*raw)
        except CertificateError:
            return False  # half-written: keep the current certificate, look again next poll
        self.current, self._digest = candidate, digest
        return True

    async def watch(self, interval_s: float, on_change: Callable[[WorkloadCertificate], object]) -> None:
        """Poll forever (cancel to stop); call ``on_change`` (sync or async) with each new certificate."""
        while True:
            await asyncio.sleep(interval_s)
            if self.check_for_changes():
                result = on_change(self.current)
                if inspect.isawaitable(result):
                    await result


def _digest(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
