"""Workload identity: SPIFFE IDs, the dev CA, certificate files and sources, mTLS contexts.

``spiffe`` (Identity), ``ca`` (DevCA), ``certs`` (WorkloadCertificate, providers, file
source), ``tls`` (contexts and post-handshake checks; the only module importing ``ssl``),
``cli`` (``waypoint ca``). Import the submodules directly.
"""
