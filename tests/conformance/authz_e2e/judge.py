"""Allow or deny, judged as a user sees it (and as Istio answers on the wire).

- allow: the app answered (HTTP 200 from pod b-0 for the path sent, the TCP bytes echoed, gRPC OK)
  and the app's own record shows the request.
- deny at the waypoint: HTTP 403 with body ``RBAC: access denied`` (Envoy's HTTP RBAC filter,
  ``source/extensions/filters/http/rbac/rbac_filter.cc``); gRPC status 7 PERMISSION_DENIED (Envoy's
  local reply for gRPC); opaque TCP closed with no bytes (network RBAC filter).
- deny at the ztunnel: the HBONE CONNECT gets 401 (facts §1.4, ``ZT:src/proxy/inbound.rs``); the
  client ztunnel answers SOCKS5 "connection not allowed by ruleset" (reply 2) and closes, or, once
  connected, the connection closes with no bytes. Plaintext into 15006: closed with no bytes.
In every deny the app never saw the request.
"""

from __future__ import annotations

import json

from .cases import Run
from .client import Outcome

SOCKS_NOT_ALLOWED = 2
RBAC_BODY = b"RBAC: access denied"
GRPC_OK, GRPC_PERMISSION_DENIED = 0, 7


def judge(run: Run, got: Outcome, seen: set[str]) -> list[str]:
    """What is wrong with ``got`` for ``run`` (empty: the product answered as Istio would)."""
    problems = _allowed(run, got) if run.expect_allow else _denied(run, got)
    reached = run.id in seen
    if reached != run.expect_allow:
        problems.append("the app saw the request" if reached else "the app never saw the request")
    return problems


def _allowed(run: Run, got: Outcome) -> list[str]:
    protocol = run.request["protocol"]
    if protocol == "tcp":
        ok = got.kind == "tcp" and got.body == f"{run.id}\n".encode()
    elif protocol == "grpc":
        ok = got.kind == "grpc" and got.status == GRPC_OK
    else:
        ok = got.kind == "http" and got.status == 200 and _answer_path(got) == run.request["path"]
    return [] if ok else [f"expected the app's answer, got {got}"]


def _answer_path(got: Outcome) -> str | None:
    try:
        answer = json.loads(got.body)
    except ValueError:
        return None
    return str(answer["path"]) if answer.get("pod") == "b-0" else None


def _denied(run: Run, got: Outcome) -> list[str]:
    closed = got.kind == "closed" or (got.kind == "refused" and got.rep == SOCKS_NOT_ALLOWED and not got.body)
    if run.where == "waypoint":
        protocol = run.request["protocol"]
        if protocol == "grpc":
            ok = got.kind == "grpc" and got.status == GRPC_PERMISSION_DENIED
            want = "gRPC PERMISSION_DENIED"
        elif protocol == "http":
            ok = got.kind == "http" and got.status == 403 and got.body == RBAC_BODY
            want = "403 RBAC: access denied"
        else:
            ok, want = closed, "the connection closed with no bytes"
    else:
        ok, want = closed, "the connection refused/closed with no bytes"
    return [] if ok else [f"expected {want}, got {got}"]
