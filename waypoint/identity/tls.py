"""TLS contexts for HBONE mTLS, and the identity checks that follow a handshake.

What ztunnel and the Envoy waypoint do (facts §1.2), and how we get there with ``ssl``:

- TLS 1.3 only, ALPN ``h2`` both ways, no session resumption, no SNI
  (``ZT:src/tls/certificate.rs`` L316-380).
- Only AES-GCM suites (``ZT:src/tls/lib.rs`` L78-113). Python cannot set the TLS 1.3 suite
  list, so the server prefers its own order (OpenSSL's default puts AES-256-GCM first) and
  :func:`verify_client` / :func:`verify_server` refuse a connection that ended up on
  ChaCha20 after the fact.
- Chain, expiry and "a client certificate is required" are OpenSSL's job during the
  handshake; :func:`classify_handshake_error` names its failures. The SPIFFE checks that
  ztunnel does inside its verifiers (``ZT:src/tls/workload.rs``: ``TrustDomainVerifier`` on
  the server, ``IdentityVerifier.verify_full_san`` on the client) run right after the
  handshake, before a single byte of HBONE is read or written.

This is the only module of the package that imports :mod:`ssl`.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Collection, Iterator
from functools import lru_cache
from typing import Any

from cryptography import x509

from waypoint.errors import WaypointError
from waypoint.identity.certs import WorkloadCertificate, identities_of
from waypoint.identity.spiffe import Identity

ALPN_H2 = "h2"
AES_GCM_SUITES = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"})

TLSConnection = ssl.SSLObject | ssl.SSLSocket


class PeerRejected(WaypointError):
    """The handshake finished but the peer is not one we talk to.

    ``reason`` is a short stable code for logs and metrics: ``no_alpn_h2``, ``not_tls13``,
    ``cipher_not_aes_gcm``, ``no_peer_cert``, ``no_spiffe_id``, ``trust_domain_mismatch``,
    ``san_mismatch``. The caller closes the connection.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- contexts ----------------------------------------------------------------------------


class _DirectSSLObject(ssl.SSLObject):
    """``SSLObject`` whose ``read``, ``write`` and ``pending`` are the C methods themselves.

    uvloop's TLS transport calls ``read`` and ``pending`` once per TLS record (16 KiB) and
    ``write`` once per chunk; ``ssl.SSLObject`` routes each through a Python method that only
    forwards its arguments to the C object (``Lib/ssl.py``). Binding the C methods on the instance
    drops that Python frame: same arguments, same results, same exceptions.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> _DirectSSLObject:
        obj: _DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        c_object = obj._sslobj  # type: ignore[attr-defined]
        obj.read = c_object.read  # type: ignore[method-assign]
        obj.write = c_object.write  # type: ignore[method-assign]
        obj.pending = c_object.pending  # type: ignore[method-assign]
        return obj


def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.sslobject_class = _DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN_H2])
    return ctx


def server_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """A server context presenting ``cert`` and requiring a client chain to its roots."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    # OP_NO_TICKET alone still sends stateful TLS 1.3 tickets in OpenSSL 3; num_tickets=0 sends none.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    update_context(ctx, cert)
    return ctx


def client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """A client context presenting ``cert``; the server's name is checked by :func:`verify_server`.

    Hostname checking is off: a peer is named by its SPIFFE URI SAN, never a DNS name. Pass
    ``server_hostname=""`` (asyncio) or connect to an IP address so no SNI is sent, as ztunnel.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # check_hostname=False must come first; set again to be explicit
    update_context(ctx, cert)
    return ctx


def update_context(ctx: ssl.SSLContext, cert: WorkloadCertificate) -> None:
    """Load ``cert``'s chain and key, and trust its roots, in an existing context.

    Rotation: handshakes that start afterwards present the new chain; established
    connections keep theirs (OpenSSL copies the certificate into each connection at
    creation). Roots are *added*: the old root stays trusted, which is the overlap a root
    rotation needs; build a new context to drop a root.
    """
    with _pem_path(cert.key_pem + b"\n" + cert.chain_pem) as path:
        ctx.load_cert_chain(path)
    ctx.load_verify_locations(cadata=cert.root_pem.decode("ascii"))


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data``, gone when the block exits.

    ``load_cert_chain`` only takes paths. On Linux an anonymous memory file keeps the key off
    any disk; elsewhere a private (0600) temporary file is removed right after loading.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("waypoint-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="waypoint-cert-", suffix=".pem")
    try:
        os.write(fd, data)
        os.close(fd)
        fd = -1
        yield path
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


# --- post-handshake checks -----------------------------------------------------------------


def peer_identities(der_cert: bytes) -> list[Identity]:
    """The SPIFFE identities in a DER certificate's URI SANs (non-SPIFFE URIs skipped)."""
    return list(_identities_cached(der_cert))


@lru_cache(maxsize=1024)
def _identities_cached(der_cert: bytes) -> tuple[Identity, ...]:
    # Peers reconnect with the same certificate for its whole life; parsing it once per
    # certificate, not once per connection, keeps x509 parsing off the accept path.
    return tuple(identities_of(x509.load_der_x509_certificate(der_cert)))


def _check_session(conn: TLSConnection) -> list[Identity]:
    alpn = conn.selected_alpn_protocol()
    if alpn != ALPN_H2:
        raise PeerRejected("no_alpn_h2", f"negotiated ALPN {alpn!r}")
    version = conn.version()
    if version != "TLSv1.3":
        raise PeerRejected("not_tls13", f"negotiated {version}")
    cipher = conn.cipher()
    if cipher is None or cipher[0] not in AES_GCM_SUITES:
        raise PeerRejected("cipher_not_aes_gcm", f"negotiated {cipher[0] if cipher else None}")
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise PeerRejected("no_peer_cert")
    ids = peer_identities(der)
    if not ids:
        raise PeerRejected("no_spiffe_id", "peer certificate has no spiffe:// URI SAN")
    return ids


def verify_client(conn: TLSConnection, trust_domain: str) -> Identity:
    """Server side: the client's identity, if one of its SPIFFE IDs is in our trust domain.

    As ztunnel's ``TrustDomainVerifier`` (facts §1.2): *which* identity is not checked here;
    that is authorization's job later.
    """
    ids = _check_session(conn)
    for identity in ids:
        if identity.trust_domain == trust_domain:
            return identity
    raise PeerRejected("trust_domain_mismatch", f"{[str(i) for i in ids]} not in {trust_domain}")


def verify_server(conn: TLSConnection, expected: Collection[Identity]) -> Identity:
    """Client side: the server's identity, which must be exactly one of ``expected``.

    As ztunnel's ``verify_full_san`` (``ZT:src/tls/workload.rs``): any of the server's SPIFFE
    IDs equal to any expected identity; DNS names are ignored.
    """
    ids = _check_session(conn)
    for identity in ids:
        if identity in expected:
            return identity
    raise PeerRejected(
        "san_mismatch", f"server is {[str(i) for i in ids]}, expected {sorted(str(e) for e in expected)}"
    )


# --- handshake failures --------------------------------------------------------------------

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) for a chain we could not verify ourselves.
_VERIFY_CODES = {
    2: "untrusted_ca",  # UNABLE_TO_GET_ISSUER_CERT
    7: "untrusted_ca",  # CERT_SIGNATURE_FAILURE
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    18: "untrusted_ca",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted_ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "untrusted_ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted_ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}

# OpenSSL reason strings: the alerts a peer sends us, and our own server-side refusals.
_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": "untrusted_ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "bad_certificate",  # e.g. Envoy when our SAN is not the one it expects
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_cert",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
}


def classify_handshake_error(exc: BaseException) -> str:
    """A stable reason code for a failed handshake (either side), for logs and metrics.

    ``untrusted_ca``, ``expired``, ``not_yet_valid``, ``bad_certificate``, ``no_client_cert``,
    ``protocol_version``, ``no_shared_cipher``, ``not_tls``, ``peer_rejected:<reason>``, or
    ``handshake_failed`` for anything else (resets, EOF, timeouts).

    In TLS 1.3 the client finishes before the server has checked the client certificate, so a
    client learns of its own expired or untrusted certificate from the alert on its first read;
    classify that error too.
    """
    if isinstance(exc, PeerRejected):
        return f"peer_rejected:{exc.reason}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, "bad_certificate")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _REASONS.get(reason, "handshake_failed")
    return "handshake_failed"
