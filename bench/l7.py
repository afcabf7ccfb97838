"""L7 benchmark: the waypoint alone is swapped (Envoy's, then ours); everything around it is Envoy.

    .venv/bin/python -m bench.l7 [--seconds 3] [--only no-waypoint,envoy,ours]

Chain: wrk/h2load → Envoy originate (source ztunnel, 127.0.7.111) → waypoint (127.0.7.112:15008)
→ Envoy terminate (destination ztunnel, 127.0.7.113:15008) → Envoy direct-response backend
(127.0.7.113). ``no-waypoint`` skips the middle hop, to show what the rest of the chain costs.
Phases: HTTP/1.1 keep-alive small requests (wrk, 50 connections), h2c small requests (h2load,
10 connections x 10 streams), a 1 MiB response body (wrk, 8 connections). The waypoint's CPU per
request (and per GB for the large body) is the figure to compare.
"""

from __future__ import annotations

import argparse
import http.client
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import ours
from bench.common import (
    GB,
    CpuMeter,
    NotAvailable,
    Running,
    ensure_free,
    fmt,
    machine_to_ourselves,
    peak_rss_mib,
    print_table,
    ratio,
)
from bench.l7load import HttpResult, run_h2load, run_wrk
from tests.support.envoy import (
    CertPaths,
    EnvoyProcess,
    TestCA,
    hbone_originate,
    hbone_terminate,
    http_backend,
    waypoint_chain,
)

SOURCE_IP, WAYPOINT_IP, DEST_IP = "127.0.7.111", "127.0.7.112", "127.0.7.113"
WAYPOINT_ID = "spiffe://cluster.local/ns/bench/sa/waypoint"
DEST_ID = "spiffe://cluster.local/ns/bench/sa/backend"
SOURCE_ID = "spiffe://cluster.local/ns/bench/sa/client"
LARGE = 1 << 20
# The addresses with fixed ports (the rest ask for port 0): the destination's and the waypoint's
# HBONE, and our waypoint's readiness and admin (bench/ours.py start_waypoint).
FIXED = [(DEST_IP, 15008), (WAYPOINT_IP, 15008), (WAYPOINT_IP, 15021), (WAYPOINT_IP, 15000)]


@dataclass
class L7Setup:
    """What a waypoint under test gets; the Envoys around it are started by the bench."""

    waypoint_ip: str  # listen on (waypoint_ip, 15008): HBONE, TLS 1.3, client cert required
    waypoint_certs: CertPaths  # identity WAYPOINT_ID; the destination presents DEST_ID
    destination: tuple[str, int]  # the app; arrives as :authority, re-originate to (ip, 15008)
    workdir: Path


# ----------------------------------------------------------------------------------------------
# OURS: TO BE FILLED IN BY THE LEAD once our waypoint role exists.
# Start our waypoint on (setup.waypoint_ip, 15008) with setup.waypoint_certs, doing the same L7
# work as tests/support/envoy/waypoint_chain.py (header-matched route + default route, one request
# header per route, one response header, x-request-id), re-originating HBONE to the :authority's
# IP on 15008; wait until it accepts; return Running(pids={"waypoint": pid}, stop=...).
# ----------------------------------------------------------------------------------------------
def start_ours(setup: L7Setup) -> Running:
    proc = ours.start_waypoint(setup.workdir, setup.waypoint_ip, setup.waypoint_certs.directory, setup.destination)
    return Running({"waypoint": proc.pid}, lambda: ours.stop(proc))


def start_envoy(setup: L7Setup) -> Running:
    proc = EnvoyProcess(
        waypoint_chain((setup.waypoint_ip, 15008), setup.waypoint_certs), setup.workdir, "waypoint"
    )
    proc.start()
    return Running({"waypoint": proc.pid}, proc.stop)


def start_none(setup: L7Setup) -> Running:
    return Running({}, lambda: None)


SCENARIOS: dict[str, Callable[[L7Setup], Running]] = {
    "no-waypoint": start_none,
    "envoy": start_envoy,
    "ours": start_ours,
}


@dataclass
class Phase:
    name: str
    result: HttpResult
    cpu: dict[str, float]
    bulk: bool  # a large-body phase: CPU per GB is the figure, not per request
    rss_mib: dict[str, float]  # VmHWM after the phase: the peak so far

    def cpu_us_per_request(self, process: str) -> float:
        return self.cpu[process] / self.result.requests * 1e6 if self.result.requests else float("nan")

    def cpu_s_per_gb(self, process: str) -> float:
        return self.cpu[process] / (self.result.bytes_read / GB)


class Around:
    """The Envoys around the waypoint: backend, destination terminate, source originate."""

    def __init__(self, workdir: Path, ca: TestCA) -> None:
        self.workdir = workdir
        self.ca = ca
        self.procs: list[EnvoyProcess] = []

    def start_backend(self) -> tuple[str, int]:
        large = self.workdir / "large.bin"
        large.write_bytes(os.urandom(LARGE))
        backend = self._start(http_backend((DEST_IP, 0), large), "backend")
        dest_certs = self.ca.write_cert_dir(self.workdir / "dest", DEST_ID)
        self._start(hbone_terminate((DEST_IP, 15008), dest_certs, "authority"), "destination")
        return backend.listener_address("backend")

    def start_source(self, backend: tuple[str, int], via_waypoint: bool) -> EnvoyProcess:
        certs = self.ca.write_cert_dir(self.workdir / "source", SOURCE_ID)
        peer, peer_id = ((WAYPOINT_IP, 15008), WAYPOINT_ID) if via_waypoint else ((DEST_IP, 15008), DEST_ID)
        config = hbone_originate((SOURCE_IP, 0), peer, f"{backend[0]}:{backend[1]}", certs, peer_id)
        return self._start(config, "source")

    def _start(self, config: dict[str, object], name: str) -> EnvoyProcess:
        proc = EnvoyProcess(config, self.workdir, name).start()
        self.procs.append(proc)
        return proc

    def stop_source(self) -> None:
        for proc in [p for p in self.procs if p.name == "source"]:
            proc.stop()
            self.procs.remove(proc)

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def run_phases(url: str, pids: dict[str, int], seconds: float) -> list[Phase]:
    loads: list[tuple[str, bool, Callable[[], HttpResult]]] = [
        ("http/1.1 small", False, lambda: run_wrk(url + "/", seconds, 50)),
        ("h2c small", False, lambda: run_h2load(url + "/", seconds, 10, 10)),
        ("http/1.1 1 MiB body", True, lambda: run_wrk(url + "/large", seconds, 8)),
    ]
    phases = []
    for name, bulk, load in loads:
        meter = CpuMeter(pids)
        meter.start()
        try:
            result = load()
        except NotAvailable as why:
            print(f"  {name}: not run: {why}")
            continue
        cpu = meter.stop()
        phases.append(Phase(name, result, cpu, bulk, {p: peak_rss_mib(pid) for p, pid in pids.items()}))
    return phases


def warm_up(ip: str, port: int) -> None:
    """One request through the chain before any load, so every phase measures the steady state.

    Without it the first phase opens 50 connections at once toward a destination the waypoint has
    not seen: Envoy's ORIGINAL_DST load balancer creates its host on the worker and adds it to the
    cluster later, on the main thread, so each of the 50 concurrent lookups misses and makes its own
    host, each with its own HBONE connection pool: 50 TLS connections with one CONNECT each instead
    of 50 streams on one connection (seen as ``cluster.hbone_upstream.membership_total`` 50). A
    waypoint that has been serving for a while never pays that, and neither should the baseline.
    """
    conn = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise NotAvailable(f"warm-up request through the chain got {response.status}")
    finally:
        conn.close()


def run_scenario(
    name: str, setup: L7Setup, around: Around, backend: tuple[str, int], seconds: float
) -> list[Phase]:
    waypoint = SCENARIOS[name](setup)
    try:
        source = around.start_source(backend, via_waypoint=name != "no-waypoint")
        ip, port = source.listener_address("originate")
        warm_up(ip, port)
        pids = {**around.pids(), **waypoint.pids}
        return run_phases(f"http://{ip}:{port}", pids, seconds)
    finally:
        around.stop_source()
        waypoint.stop()


def report(results: dict[str, list[Phase]], notes: list[str], seconds: float) -> None:
    rows = []
    for name, phases in results.items():
        for ph in phases:
            r = ph.result
            wp = "waypoint" if "waypoint" in ph.cpu else None
            rows.append(
                [
                    f"{name}: {ph.name}",
                    fmt(r.requests_per_s, 0),
                    fmt(r.p50_ms if r.p50_ms == r.p50_ms else r.mean_ms),
                    fmt(r.p99_ms),
                    fmt(ph.cpu_us_per_request(wp), 1) if wp else "-",
                    fmt(ph.cpu_s_per_gb(wp)) if wp and ph.bulk else "-",
                    fmt(ph.rss_mib[wp], 0) if wp else "-",
                    "  ".join(f"{p}={c / seconds:.0%}" for p, c in ph.cpu.items()),
                ]
            )
    header = [
        "scenario: phase",
        "req/s",
        "p50 ms*",
        "p99 ms",
        "waypoint CPU us/req",
        "waypoint CPU-s/GB",
        "waypoint RSS MiB",
        "CPU share per process",
    ]
    print_table(f"L7 through the chain ({seconds:g} s per phase; *h2load reports the mean)", header, rows)
    ours, envoy = results.get("ours"), results.get("envoy")
    if ours and envoy:
        pairs = [(o, e) for o in ours for e in envoy if o.name == e.name]
        rows = [
            [
                o.name,
                ratio(o.cpu_us_per_request("waypoint"), e.cpu_us_per_request("waypoint")),
                ratio(o.result.requests_per_s, e.result.requests_per_s),
            ]
            for o, e in pairs
        ]
        print_table("Ours / Envoy waypoint", ["phase", "CPU per request (lower is better)", "req/s"], rows)
    for note in notes:
        print(note)


def main(seconds: float, only: list[str]) -> int:
    ensure_free(FIXED)
    workdir = Path(tempfile.mkdtemp(prefix="bench-l7-"))
    ca = TestCA()
    around = Around(workdir, ca)
    results: dict[str, list[Phase]] = {}
    notes: list[str] = []
    try:
        backend = around.start_backend()
        setup = L7Setup(WAYPOINT_IP, ca.write_cert_dir(workdir / "waypoint", WAYPOINT_ID), backend, workdir)
        for name in only:
            try:
                results[name] = run_scenario(name, setup, around, backend, seconds)
            except NotAvailable as why:
                notes.append(f"{name}: not run: {why}")
    finally:
        around.stop()
    report(results, notes, seconds)
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured phase")
    parser.add_argument("--only", default="no-waypoint,envoy,ours", help="comma-separated scenarios")
    args = parser.parse_args()
    only = args.only.split(",")
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    with machine_to_ourselves():  # another bench run would bind our addresses and skew our CPU windows
        try:
            return main(args.seconds, only)
        except NotAvailable as why:
            parser.exit(2, f"bench.l7: {why}\n")


if __name__ == "__main__":
    raise SystemExit(cli())
