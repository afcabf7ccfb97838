"""Workload identities: the SPIFFE IDs Istio puts in certificates.

Istio's only identity shape is ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``
(facts §1.2 "SPIFFE format"). The parser is as strict as ztunnel's
(``ZT:src/identity/manager.rs`` ``Identity::from_str`` L68-90: the ``spiffe://`` prefix, then
exactly five ``/``-separated parts with ``ns`` and ``sa`` in places 2 and 4), and in addition
refuses empty parts, which ztunnel would accept but which no Kubernetes object can have.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"  # ZT:src/identity/manager.rs L42 (Identity::default)

_PREFIX = "spiffe://"


class InvalidIdentity(ValueError):
    """A string that is not an Istio SPIFFE ID; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One workload identity. Hashable, so it can key caches and sets of expected peers."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        for field, value in (
            ("trust domain", self.trust_domain),
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not value:
                raise InvalidIdentity(f"empty {field}")
            if "/" in value:
                raise InvalidIdentity(f"{field} {value!r} contains '/'")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def uri(self) -> str:
        """The SPIFFE URI, as it appears in a certificate's URI SAN."""
        return str(self)

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse ``spiffe://<td>/ns/<ns>/sa/<sa>``; raise :class:`InvalidIdentity` otherwise."""
        if not uri.startswith(_PREFIX):
            raise InvalidIdentity(f"{uri!r}: scheme is not spiffe://")
        parts = uri[len(_PREFIX) :].split("/")
        if len(parts) != 5:
            raise InvalidIdentity(
                f"{uri!r}: want <trust-domain>/ns/<namespace>/sa/<service-account>, got {len(parts)} parts"
            )
        trust_domain, ns_word, namespace, sa_word, service_account = parts
        if ns_word != "ns":
            raise InvalidIdentity(f"{uri!r}: second path part must be 'ns', got {ns_word!r}")
        if sa_word != "sa":
            raise InvalidIdentity(f"{uri!r}: fourth path part must be 'sa', got {sa_word!r}")
        try:
            return cls(trust_domain, namespace, service_account)
        except InvalidIdentity as exc:
            raise InvalidIdentity(f"{uri!r}: {exc}") from None
