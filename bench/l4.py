"""L4 benchmark: plain TCP, Envoy → Envoy HBONE, and our ztunnel → ztunnel, in one run.

    .venv/bin/python -m bench.l4 [--seconds 3] [--only plain,envoy,ours]

Each scenario carries bulk bytes (1 and 8 streams) and 64-byte round trips from this process,
through the proxies, to a target server in this process (sink or echo). CPU is read per proxy
process over each measured window. Loopback 127.0.7.101-103 only.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.common import (
    BulkResult,
    CpuMeter,
    NotAvailable,
    Running,
    TargetServer,
    bulk_throughput,
    fmt,
    peak_rss_mib,
    percentile,
    ping_pong,
    print_table,
    ratio,
)
from tests.support.envoy import CertPaths, EnvoyProcess, TestCA, hbone_originate, hbone_terminate

CLIENT_IP, SERVER_IP = "127.0.7.101", "127.0.7.103"
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
ROLES = ("client", "server")  # the source-side and destination-side proxy of every scenario


@dataclass
class L4Setup:
    """Everything a scenario needs to wire its proxies between the bench client and the target."""

    listen: tuple[str, int]  # where the source side listens for the bench client
    target: tuple[str, int]  # the destination application (sink/echo server)
    server_ip: str  # the destination side's HBONE address is (server_ip, 15008)
    client_certs: CertPaths  # identity CLIENT_ID
    server_certs: CertPaths  # identity SERVER_ID
    workdir: Path


# ----------------------------------------------------------------------------------------------
# OURS: TO BE FILLED IN BY THE LEAD once `waypoint ztunnel` / `waypoint dev` exist.
# Start our source-side ztunnel listening on setup.listen (tunnelling every connection to
# setup.target with :authority "ip:port") and our destination-side ztunnel on
# (setup.server_ip, 15008) with setup.server_certs; wait until both accept connections; return
# Running(pids={"client": ..., "server": ...}, stop=..., entry=<address the bench connects to>).
# ----------------------------------------------------------------------------------------------
def start_ours(setup: L4Setup) -> Running:
    raise NotAvailable("our ztunnel role is not wired in yet (bench/l4.py start_ours)")


def start_plain(setup: L4Setup) -> Running:
    return Running(pids={}, stop=lambda: None, entry=setup.target)


def start_envoy(setup: L4Setup) -> Running:
    server = EnvoyProcess(
        hbone_terminate((setup.server_ip, 15008), setup.server_certs, "authority"), setup.workdir, "terminate"
    ).start()
    authority = f"{setup.target[0]}:{setup.target[1]}"
    client_config = hbone_originate(
        (setup.listen[0], 0), (setup.server_ip, 15008), authority, setup.client_certs, SERVER_ID
    )
    try:
        client = EnvoyProcess(client_config, setup.workdir, "originate").start()
    except BaseException:
        server.stop()
        raise

    def stop() -> None:
        client.stop()
        server.stop()

    return Running({"client": client.pid, "server": server.pid}, stop, client.listener_address("originate"))


SCENARIOS = {"plain": start_plain, "envoy": start_envoy, "ours": start_ours}


@dataclass
class L4Result:
    bulk1: BulkResult
    bulk8: BulkResult
    rtt_ns: list[int]
    rss_mib: dict[str, float]


async def run_scenario(running: Running, target: TargetServer, seconds: float) -> L4Result:
    assert running.entry is not None
    meter = CpuMeter(running.pids)
    bulk1 = await bulk_throughput(running.entry, target, 1, seconds, meter)
    bulk8 = await bulk_throughput(running.entry, target, 8, seconds, meter)
    rtt = await ping_pong(running.entry, seconds)
    return L4Result(bulk1, bulk8, rtt, {role: peak_rss_mib(pid) for role, pid in running.pids.items()})


def report(results: dict[str, L4Result | str], seconds: float) -> None:
    rows = []
    for name, res in results.items():
        if isinstance(res, str):
            rows.append([name, "-", "-", "-", "-"])
            continue
        p50, p99 = percentile(res.rtt_ns, 50) / 1e3, percentile(res.rtt_ns, 99) / 1e3
        rows.append([name, fmt(res.bulk1.gbit_per_s), fmt(res.bulk8.gbit_per_s), fmt(p50, 0), fmt(p99, 0)])
    header = ["scenario", "Gbit/s 1 stream", "Gbit/s 8 streams", "RTT p50 us", "RTT p99 us"]
    print_table(f"L4 throughput and latency ({seconds:g} s per phase)", header, rows)

    rows = []
    for name, res in results.items():
        if isinstance(res, str):
            continue
        for role in res.rss_mib:
            rows.append(
                [
                    f"{name} {role}",
                    fmt(res.bulk1.cpu_s_per_gb(role)),
                    fmt(res.bulk8.cpu_s_per_gb(role)),
                    fmt(res.rss_mib[role], 0),
                ]
            )
    header = ["proxy process", "CPU-s/GB 1 stream", "CPU-s/GB 8 streams", "peak RSS MiB"]
    print_table("Per proxy process (lower is better)", header, rows)

    ours, envoy = results.get("ours"), results.get("envoy")
    if isinstance(ours, L4Result) and isinstance(envoy, L4Result):
        rows = [
            ["throughput 1 stream (higher is better)", ratio(ours.bulk1.gbit_per_s, envoy.bulk1.gbit_per_s)],
            ["throughput 8 streams (higher is better)", ratio(ours.bulk8.gbit_per_s, envoy.bulk8.gbit_per_s)],
            ["RTT p50", ratio(percentile(ours.rtt_ns, 50), percentile(envoy.rtt_ns, 50))],
            ["RTT p99", ratio(percentile(ours.rtt_ns, 99), percentile(envoy.rtt_ns, 99))],
        ]
        for role in ROLES:
            rows.append(
                [
                    f"{role} CPU-s/GB 8 streams",
                    ratio(ours.bulk8.cpu_s_per_gb(role), envoy.bulk8.cpu_s_per_gb(role)),
                ]
            )
            rows.append([f"{role} peak RSS", ratio(ours.rss_mib[role], envoy.rss_mib[role])])
        print_table("Ours / Envoy (below 1x is better unless marked)", ["metric", "ratio"], rows)
    for name, res in results.items():
        if isinstance(res, str):
            print(f"{name}: {res}")


async def main(seconds: float, only: list[str]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-l4-"))
    ca = TestCA()
    client_certs = ca.write_cert_dir(workdir / "client", CLIENT_ID)
    server_certs = ca.write_cert_dir(workdir / "server", SERVER_ID)
    target = TargetServer()
    target_addr = await target.start(SERVER_IP)
    setup = L4Setup((CLIENT_IP, 15001), target_addr, SERVER_IP, client_certs, server_certs, workdir)
    results: dict[str, L4Result | str] = {}
    try:
        for name in only:
            try:
                running = SCENARIOS[name](setup)
            except NotAvailable as why:
                results[name] = f"not run: {why}"
                continue
            try:
                results[name] = await run_scenario(running, target, seconds)
            finally:
                running.stop()
    finally:
        await target.close()
    report(results, seconds)
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured phase")
    parser.add_argument("--only", default="plain,envoy,ours", help="comma-separated scenarios")
    args = parser.parse_args()
    return uvloop.run(main(args.seconds, args.only.split(",")))


if __name__ == "__main__":
    raise SystemExit(cli())
