"""What an authorization check looks at, and what it answers: the contract between the policy
engine (:mod:`waypoint.policy.authz`) and the two places that enforce it.

- The destination ztunnel checks each inbound connection before it dials the app (HBONE on 15008,
  plaintext on 15006), with L4 facts only: ``ZT:src/proxy/inbound.rs`` ``assert_rbac`` and
  ``ZT:src/rbac.rs`` (facts §3.2). A deny is a 401 on HBONE; a plaintext connection is closed.
- The waypoint checks each request (or opaque TCP tunnel) with L4 and L7 facts, as Envoy's RBAC
  filter does for istiod's waypoint config (facts §3.1-3.2). A deny is a 403 ``RBAC: access denied``.

The engine is sans-I/O: it sees these values and the policies, never a socket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from waypoint.identity.spiffe import Identity


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """L4 facts about one connection, as the enforcing proxy knows them.

    ``source_identity`` is the peer proven by mutual TLS (``None`` on plaintext): never taken
    from a header. At a destination ztunnel behind a waypoint it is the waypoint's identity
    (facts §3.2, "Enforcement point").
    """

    source_ip: str
    source_identity: Identity | None
    destination_ip: str
    destination_port: int


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """L7 facts about one HTTP request at the waypoint, on top of its connection's.

    ``headers`` are lower-case names with their values, in arrival order (a name may repeat).
    ``host`` is ``:authority`` / ``Host`` without the port when the port is the default one.
    ``jwt_claims`` is the payload of a token RequestAuthentication verified (``request.auth.*``,
    ``requestPrincipals``); None when the request carried none (Envoy: no jwt_authn metadata).
    """

    connection: ConnectionFacts
    method: str
    path: str
    host: str
    headers: Sequence[tuple[str, str]] = ()
    jwt_claims: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer. ``policy`` names the deciding policy as ``namespace/name`` (a DENY that
    matched, or the ALLOW that matched); it is empty when no policy applies (allowed) or when
    ALLOW policies apply and none matched (denied). ``reason`` is for the log line."""

    allowed: bool
    policy: str = ""
    reason: str = ""
    rule: int = -1  # the index in the deciding policy's ``rules`` of the rule that matched (Envoy's policy names)
    dry_run_denied_by: tuple[str, ...] = field(default=())  # dry-run policies that would have denied


ALLOW = Decision(True, reason="allowed: no policy applies")
