"""Every generated config passes ``envoy --mode validate`` (envoy-peer.md "Getting it")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.envoy.conftest import Issue
from tests.support.envoy import (
    Config,
    EnvoyError,
    EnvoyProcess,
    hbone_originate,
    hbone_terminate,
    http_backend,
    validate_config,
    waypoint_chain,
)

PEER_ID = "spiffe://cluster.local/ns/default/sa/peer"


def _configs(issue: Issue) -> dict[str, Config]:
    certs = issue("default", "me")
    return {
        "terminate-fixed": hbone_terminate(("127.0.7.20", 15008), certs, ("127.0.7.20", 8080)),
        "terminate-authority": hbone_terminate(("127.0.7.20", 15008), certs, "authority"),
        "originate": hbone_originate(
            ("127.0.7.20", 0), ("127.0.7.21", 15008), "127.0.7.21:80", certs, PEER_ID
        ),
        "waypoint": waypoint_chain(("127.0.7.20", 15008), certs),
        "backend": http_backend(("127.0.7.20", 0)),
    }


@pytest.mark.parametrize(
    "name", ["terminate-fixed", "terminate-authority", "originate", "waypoint", "backend"]
)
def test_generated_config_passes_envoy_validate(name: str, issue: Issue, tmp_path: Path) -> None:
    validate_config(_configs(issue)[name], tmp_path, name)


def test_tls_is_pinned_to_1_3_both_ways(issue: Issue) -> None:
    # envoy-peer.md gotcha 1: a minimum alone leaves the upstream maximum at TLS 1.2.
    text = repr(_configs(issue))
    assert (
        text.count("'tls_minimum_protocol_version': 'TLSv1_3'")
        == text.count("'tls_maximum_protocol_version': 'TLSv1_3'")
        == 5
    )


def test_a_rejected_config_is_reported_with_envoys_reason(tmp_path: Path) -> None:
    broken: Config = {"static_resources": {"listeners": [{"name": "x", "no_such_field": 1}]}}
    with pytest.raises(EnvoyError, match="no_such_field"):
        validate_config(broken, tmp_path, "broken")
    with pytest.raises(EnvoyError, match="exited"):
        EnvoyProcess(broken, tmp_path, "broken").start()
