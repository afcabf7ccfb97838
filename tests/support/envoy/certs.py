"""Mesh certificates for Envoys in tests and benchmarks, from the project's own dev CA.

A thin face over ``waypoint.identity.ca.DevCA`` (EC P-256, SPIFFE URI SAN only, as Istio issues
them: facts §1.2 "SPIFFE format"), writing Istio's mounted-certificate layout so every config
names the same three files and our processes can read the same directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from waypoint.identity.ca import DevCA
from waypoint.identity.certs import CHAIN_FILE, KEY_FILE, ROOT_FILE
from waypoint.identity.spiffe import Identity


@dataclass(frozen=True)
class CertPaths:
    """Where one identity's files are: what Envoy's TLS contexts name."""

    directory: Path

    @property
    def chain(self) -> Path:
        return self.directory / CHAIN_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def root(self) -> Path:
        return self.directory / ROOT_FILE


class TestCA:
    """One mesh root for a test module or a benchmark run."""

    __test__ = False  # not a pytest class

    def __init__(self, trust_domain: str = "cluster.local") -> None:
        self.trust_domain = trust_domain
        self.ca = DevCA.create(trust_domain)

    @property
    def root_pem(self) -> bytes:
        return self.ca.root_pem

    def spiffe_id(self, namespace: str, service_account: str) -> str:
        return str(Identity(self.trust_domain, namespace, service_account))

    def write_cert_dir(self, directory: Path, identity: str) -> CertPaths:
        """Issue a leaf for ``identity`` (a SPIFFE URI) and write chain, key and root into ``directory``."""
        self.ca.issue(Identity.parse(identity)).write_istio_layout(directory)
        return CertPaths(directory)
