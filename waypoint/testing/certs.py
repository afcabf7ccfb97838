"""Certificates for other areas' tests: one dev CA per trust domain per process.

Usage::

    from waypoint.testing.certs import workload_cert
    from waypoint.identity.tls import server_context, client_context

    server = server_context(workload_cert("ns1", "waypoint"))
    client = client_context(workload_cert("ns2", "sleep"))

Every certificate from the same trust domain chains to the same root, so any pair
handshakes. Certificates are cached too: a test that needs a *fresh* one calls
``dev_ca().issue(...)`` directly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

from waypoint.identity.ca import DevCA
from waypoint.identity.certs import WorkloadCertificate
from waypoint.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity


def dev_ca(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> DevCA:
    """The process's dev CA for ``trust_domain`` (created on first use)."""
    return _dev_ca(trust_domain)


@cache
def _dev_ca(trust_domain: str) -> DevCA:
    # Keyed on the plain argument: functools.cache would treat dev_ca() and
    # dev_ca("cluster.local") as different calls and make two roots.
    return DevCA.create(trust_domain)


def identity(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity:
    return Identity(trust_domain, namespace, service_account)


def workload_cert(
    namespace: str = "default", service_account: str = "default", trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> WorkloadCertificate:
    """A 24 h certificate for ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
    return _workload_cert(namespace, service_account, trust_domain)


@cache
def _workload_cert(namespace: str, service_account: str, trust_domain: str) -> WorkloadCertificate:
    return dev_ca(trust_domain).issue(identity(namespace, service_account, trust_domain))


def expired_cert(
    namespace: str = "default", service_account: str = "default", trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> WorkloadCertificate:
    """A certificate from the same CA that expired an hour ago."""
    start = datetime.now(UTC) - timedelta(hours=2)
    return dev_ca(trust_domain).issue(
        identity(namespace, service_account, trust_domain), lifetime=timedelta(hours=1), not_before=start
    )
