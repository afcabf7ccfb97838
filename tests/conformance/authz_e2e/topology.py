"""The conformance data's fixed world (README §2 of the cases file) as a `waypoint dev` folder on 127/8.

The cases name a world of their own: pod ``b-0`` (labels per case) behind Service ``b`` in ``ns1`` with
waypoint ``waypoint``; clients ``ns1/a`` (10.0.1.10), ``ns2/a`` (10.0.2.10) and a plaintext peer
(10.0.9.9). Here every address moves to this test's own block, 127.0.230.0-127.0.239.255 (no other
test uses it), by one rule applied to the case's request *and* its policies alike::

    10.0.<n>.<host>  ->  127.0.23<n>.<host>      (10.0.1.0/24 -> 127.0.231.0/24, ...)

so an ``ipBlocks``/``source.ip`` policy means the same thing about the same client as in the case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

HOST = "127.0.230.1"  # every listener of this test's `waypoint dev` (never the default 127.0.0.1)
NS1_A_IP = "127.0.231.10"  # 10.0.1.10: pod a-0 in ns1, service account a
NS2_A_IP = "127.0.232.10"  # 10.0.2.10: pod a-0 in ns2, service account a
B_IP = "127.0.233.10"  # 10.0.3.10: pod b-0 in ns1, the destination
C_IP = "127.0.233.20"  # pod c-0 in ns1 (the "other workload" some cases name)
PLAINTEXT_IP = "127.0.239.9"  # 10.0.9.9: a peer outside the mesh (no pod has this address)
WAYPOINT_IP = "127.0.234.10"  # waypoint ns1/waypoint
B_VIP = "127.0.235.10"
C_VIP = "127.0.235.20"
# The destination's ports (the cases' 18080/18085 http, 17070 grpc, 19090 tcp, 8080 per case).
PORTS: Mapping[int, str] = {18080: "http", 18085: "http", 17070: "grpc", 19090: "tcp", 8080: "http"}
SOURCE_IPS = {"ns1": NS1_A_IP, "ns2": NS2_A_IP}

_CASE_IP = re.compile(r"\b10\.0\.([1-9])\.")


def rewrite_ips(text: str) -> str:
    """The case's 10.0.<n>.x addresses (and CIDRs) as this test's 127.0.23<n>.x ones."""
    return _CASE_IP.sub(r"127.0.23\1.", text)


@dataclass(frozen=True)
class Endpoints:
    """Where this test's `waypoint dev` listens."""

    socks5: tuple[str, int] = (HOST, 15080)
    admin: tuple[str, int] = (HOST, 15000)
    readiness: tuple[str, int] = (HOST, 15021)
    # Bound on b-0's own address: without iptables, the listener's address is the original
    # destination (waypoint/l4/origdst.py), so a peer dialling it is plaintext *to pod b-0*.
    inbound_plaintext: tuple[str, int] = (B_IP, 15006)

    def cli_args(self) -> list[str]:
        pairs = (("socks5", self.socks5), ("admin", self.admin), ("readiness", self.readiness),
                 ("inbound-plaintext", self.inbound_plaintext), ("outbound", (HOST, 15001)),
                 ("metrics", (HOST, 15020)))
        return [f"--listen-{name}={ip}:{port}" for name, (ip, port) in pairs]


def _namespace(name: str, ambient: bool = True) -> Doc:
    labels = {"istio.io/dataplane-mode": "ambient"} if ambient else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _pod(name: str, ns: str, sa: str, ip: str, labels: Mapping[str, str]) -> Doc:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": {"serviceAccountName": sa, "nodeName": "dev", "containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _service(name: str, vip: str, protocols: Mapping[int, str]) -> Doc:
    """A Service that uses the waypoint; each port's protocol is its name's prefix (Istio's convention)."""
    ports = [{"name": f"{proto}-{port}", "port": port, "targetPort": port} for port, proto in protocols.items()]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "ns1", "labels": {"istio.io/use-waypoint": "waypoint"}},
        "spec": {"clusterIP": vip, "selector": {"app": name}, "ports": ports},
    }


def static_docs() -> list[Doc]:
    """What never changes between cases: namespaces, the clients, pod c-0 and the waypoint."""
    return [
        _namespace("istio-system", ambient=False),
        _namespace("ns1"),
        _namespace("ns2"),
        _pod("a-0", "ns1", "a", NS1_A_IP, {"app": "a"}),
        _pod("a-0", "ns2", "a", NS2_A_IP, {"app": "a"}),
        _pod("c-0", "ns1", "c", C_IP, {"app": "c"}),
        {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "ns1", "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                     "addresses": [{"type": "IPAddress", "value": WAYPOINT_IP}]},
        },
    ]


def case_docs(labels: Mapping[str, str], protocols: Mapping[int, str], policies: list[Doc]) -> list[Doc]:
    """What a case decides: b-0's labels, its ports' protocols, and the policies in force."""
    return [
        _pod("b-0", "ns1", "b", B_IP, labels),
        _service("b", B_VIP, protocols),
        _service("c", C_VIP, {18080: "http"}),
        *policies,
    ]


def write(path: Path, docs: list[Doc]) -> None:
    """Replace ``path`` in one step (a dot-file renamed over it): the product's folder watcher
    skips dot-files, so it never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)
