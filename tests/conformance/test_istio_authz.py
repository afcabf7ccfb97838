"""The 80 Istio AuthorizationPolicy conformance cases (``/work/shared/conformance/istio-authz/``), end to
end through the product: ONE ``waypoint dev --config DIR`` process, the case's policies written into
the folder, a request from the case's source pod through SOCKS5, judged as a user sees it.

How a case maps (``tests/conformance/authz_e2e/``):
- world: the cases' pod b-0 / Service b / waypoint ``ns1/waypoint`` / clients ns1/a and ns2/a, as pods
  on 127/8 with the cases' service accounts (``topology.py``). Every IP of the case, in its request
  and in its policies (``ipBlocks``, ``notIpBlocks``, ``remoteIpBlocks``, ``source.ip`` conditions),
  is rewritten by one rule, ``10.0.<n>.x -> 127.0.23<n>.x``, so each still names the same client.
- enforcement points: as the engine-level run (``tests/policy/test_istio_authz_cases.py``): L4 cases
  at the destination ztunnel (client dials pod b-0) and, with ``policies_waypoint``, at the waypoint
  (client dials b's VIP); L7 cases at the waypoint (``cases.py``). The root-namespace policy of
  authz-005..007 reaches waypoints via ``targetRefs: GatewayClass istio-waypoint``, Istio's way.
- a peer with no identity (authz-020, -057) dials b-0's plaintext inbound listener (bound on b-0's
  address, so that address is the original destination) from 127.0.239.9, which no pod has. Its
  original destination port is therefore 15006, not the case's 18080; neither policy names a port.
- between cases only the case file changes; the run waits until the admin dump shows the new
  snapshot generation (never a sleep), and runs that need the same folder share one apply.

Cases not driven are listed with their reason in ``cases.NOT_DRIVEN``; the engine run covers them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.authz_e2e import cases
from tests.conformance.authz_e2e.apps import PodApps
from tests.conformance.authz_e2e.client import send
from tests.conformance.authz_e2e.judge import judge
from tests.conformance.authz_e2e.product import DevProduct, wait_until
from tests.conformance.authz_e2e.topology import Endpoints

pytestmark = pytest.mark.timeout(120)

POLICY_NAMED = re.compile(r"(?:policy|among) ([\w-]+/[\w.-]+)")  # "DENY policy ns1/b", "... among ns1/allow"
CASES = cases.load()
RUNS, NOT_DRIVEN_FOUND = cases.runs(CASES)


@dataclass
class Mesh:
    product: DevProduct
    apps: PodApps


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    apps = PodApps()
    apps.start()
    product = DevProduct(Path(tmp_path_factory.mktemp("authz-e2e")) / "mesh", Endpoints())
    try:
        product.start(RUNS[0].docs())
        yield Mesh(product, apps)
    finally:
        product.stop()
        apps.stop()


def test_every_case_is_driven_or_listed_with_its_reason() -> None:
    assert len(CASES) == 80
    assert set(cases.NOT_DRIVEN) == NOT_DRIVEN_FOUND, "a case fell through or the table is stale"
    driven = {r.case["id"] for r in RUNS}
    assert driven | {case for case, _ in cases.NOT_DRIVEN} == {c["id"] for c in CASES}
    assert all(r.where == "ztunnel" for r in RUNS if r.transport == "plaintext")


def _waypoint_denied(dump: dict[str, Any]) -> int:
    role = next(w for w in dump["waypoint_roles"] if w["waypoint"] == "ns1/waypoint")
    return int(role["rbac"]["denied"])


def _refusal_line(log: str, run: cases.Run) -> str | None:
    """The product's log line that names this run's refusal (ztunnel 401/plaintext, waypoint TCP)."""
    who = run.request.get("source_principal") or run.source_ip
    for line in log.splitlines():
        if ("refused: authorization_denied" in line or "closed: denied" in line) and \
                (who in line or run.source_ip in line):
            return line
    return None


@pytest.mark.parametrize("run", RUNS, ids=[r.id for r in RUNS])
def test_case(mesh: Mesh, run: cases.Run) -> None:
    dump = mesh.product.apply(run.docs())
    problems = dump["problems"]
    assert len(problems) == len(run.rejected_fields), problems
    assert all(f": {f}: " in p for f, p in zip(run.rejected_fields, problems, strict=True)), problems
    log_from = mesh.product.log_size()

    got = send(run, mesh.product.endpoints)
    wrong = judge(run, got, mesh.apps.runs_seen())
    assert not wrong, f"{run.id} {run.case['name']} (expect {run.case['expect']}): {wrong}"

    if run.expect_allow:
        return
    if run.where == "waypoint" and run.request["protocol"] != "tcp":
        # an HTTP/gRPC deny is logged at debug only (as Envoy's RBAC filter); the admin dump counts it
        assert _waypoint_denied(mesh.product.dump()) == _waypoint_denied(dump) + 1
    else:
        line = wait_until(lambda: _refusal_line(mesh.product.log_since(log_from), run), 5,
                          f"the product's log naming the refusal of {run.id}")
        named = set(POLICY_NAMED.findall(line))
        in_force = {f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in run.policies}
        assert (named and named <= in_force) or "none matched" in line, line
