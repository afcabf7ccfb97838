"""Real Envoys for tests and benchmarks: the independent HBONE peer and the performance baseline.

``EnvoyProcess`` runs one Envoy from a config dict; ``hbone_terminate``, ``hbone_originate`` and
``waypoint_chain`` build the configs (see ``shared/reference/envoy-peer.md``); ``TestCA`` writes
the mesh certificates they read.
"""

from tests.support.envoy.certs import CertPaths, TestCA
from tests.support.envoy.configs import (
    HBONE_PORT,
    Address,
    Config,
    hbone_originate,
    hbone_terminate,
    http_backend,
)
from tests.support.envoy.process import EnvoyError, EnvoyProcess, envoy_binary, validate_config, wait_for
from tests.support.envoy.waypoint_chain import CANARY_HEADER, RESPONSE_HEADER, ROUTE_HEADER, waypoint_chain

__all__ = [
    "CANARY_HEADER",
    "HBONE_PORT",
    "RESPONSE_HEADER",
    "ROUTE_HEADER",
    "Address",
    "CertPaths",
    "Config",
    "EnvoyError",
    "EnvoyProcess",
    "TestCA",
    "envoy_binary",
    "hbone_originate",
    "hbone_terminate",
    "http_backend",
    "validate_config",
    "wait_for",
    "waypoint_chain",
]
