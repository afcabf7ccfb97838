"""L4 benchmark: plain TCP, Envoy → Envoy HBONE, and our ztunnel → ztunnel, in one run.

    .venv/bin/python -m bench.l4 [--seconds 3] [--only plain,envoy,ours]

Each scenario carries bulk bytes (1 and 8 streams) and 64-byte round trips from this process,
through the proxies, to a target server in this process (sink or echo). CPU is read per proxy
process over each measured window. Loopback 127.0.7.101-103 only. Our ztunnel is entered through
its SOCKS5 listener (one CONNECT per connection, before the measured window), with the load
generator bound to the client pod's address 127.0.7.102.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import uvloop

from bench import ours
from bench.common import (
    BulkResult,
    CpuMeter,
    NotAvailable,
    Running,
    TargetServer,
    _Blaster,
    _PingPong,
    fmt,
    peak_rss_mib,
    percentile,
    print_table,
    ratio,
)
from tests.support.envoy import CertPaths, EnvoyProcess, TestCA, hbone_originate, hbone_terminate

CLIENT_IP, SERVER_IP = "127.0.7.101", "127.0.7.103"
CLIENT_POD_IP = "127.0.7.102"  # ours: the load generator binds here, a pod of the source ztunnel
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


@dataclass
class L4Running(Running):
    """A scenario whose source side is reached through SOCKS5 (our ztunnel offers no plain
    listener that tunnels to a fixed destination, and 15001 capture needs iptables)."""

    socks5_to: tuple[str, int] | None = None  # CONNECT target asked of the SOCKS5 entry
    bind_ip: str | None = None  # the load generator's source address (a pod's IP)


def start_ours(setup: L4Setup) -> Running:
    """Our ztunnel → ztunnel: bench client → SOCKS5 on the source ztunnel (as the client pod) →
    HBONE → destination ztunnel on (server_ip, 15008) → target, as ``waypoint ztunnel`` runs."""
    config = ours.ztunnel_pair_config(setup.workdir, CLIENT_POD_IP, setup.server_ip)
    server = ours.start_ztunnel(
        setup.workdir, "ztunnel-server", config, "server", setup.server_certs.directory,
        f"{setup.server_ip}:15021",
    )
    try:
        client = ours.start_ztunnel(
            setup.workdir, "ztunnel-client", config, "client", setup.client_certs.directory,
            f"{setup.listen[0]}:15021", socks5=f"{setup.listen[0]}:{setup.listen[1]}",
        )
    except BaseException:
        ours.stop(server)
        raise

    def stop() -> None:
        ours.stop(client)
        ours.stop(server)

    return L4Running({"client": client.pid, "server": server.pid}, stop, setup.listen, setup.target, CLIENT_POD_IP)


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


Connect = Callable[[Callable[[], asyncio.Protocol]], Awaitable[asyncio.Transport]]


class _Socks5Then(asyncio.Protocol):
    """SOCKS5 CONNECT (no auth, IPv4, greeting and request in one write, RFC 1928), then the
    connection is handed to ``inner`` with ``set_protocol``: nothing of ours stays on its path."""

    def __init__(self, target: tuple[str, int], inner: asyncio.Protocol, ready: asyncio.Future[None]) -> None:
        self._target, self._inner, self._ready = target, inner, ready
        self._got = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ip, port = self._target
        self._transport.write(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(ip) + port.to_bytes(2, "big"))

    def data_received(self, data: bytes) -> None:
        self._got += data
        if len(self._got) < 12:  # method choice (2) + IPv4 reply (10)
            return
        if self._got[:2] != b"\x05\x00" or self._got[3] != 0:
            self._ready.set_exception(ConnectionError(f"SOCKS5 refused: {self._got[:12].hex()}"))
            self._transport.abort()
            return
        self._transport.set_protocol(self._inner)
        self._inner.connection_made(self._transport)
        if self._got[12:]:
            self._inner.data_received(self._got[12:])
        self._ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc or ConnectionError("closed during SOCKS5"))


def connector(running: Running) -> Connect:
    """How the load generator reaches the scenario's entry: plain TCP, or SOCKS5 first."""
    assert running.entry is not None
    entry = running.entry
    socks5_to = getattr(running, "socks5_to", None)
    bind = getattr(running, "bind_ip", None)
    local = (bind, 0) if bind else None

    async def connect(factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        if socks5_to is None:
            transport, _ = await loop.create_connection(factory, *entry, local_addr=local)
            return transport
        ready: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _Socks5Then(socks5_to, factory(), ready), *entry, local_addr=local
        )
        await asyncio.wait_for(ready, 10)
        return transport

    return connect


async def bulk_throughput(
    connect: Connect, target: TargetServer, streams: int, seconds: float, meter: CpuMeter, warmup: float = 0.5
) -> BulkResult:
    """``bench.common.bulk_throughput`` through a connector (the same load and window)."""
    chunk = os.urandom(256 * 1024)
    conns = [await connect(lambda: _Blaster(chunk)) for _ in range(streams)]
    await asyncio.sleep(warmup)
    start_bytes, start = target.received, time.perf_counter()
    meter.start()
    await asyncio.sleep(seconds)
    cpu = meter.stop()
    delivered, elapsed = target.received - start_bytes, time.perf_counter() - start
    for transport in conns:
        transport.abort()
    return BulkResult(delivered, elapsed, cpu)


async def ping_pong(connect: Connect, seconds: float, size: int = 64) -> list[int]:
    """``bench.common.ping_pong`` through a connector: one message at a time, one connection."""
    done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    until = time.perf_counter_ns() / 1e9 + seconds
    transport = await connect(lambda: _PingPong(size, until, done))
    try:
        return await asyncio.wait_for(done, seconds + 10)
    finally:
        transport.close()


async def run_scenario(running: Running, target: TargetServer, seconds: float) -> L4Result:
    connect = connector(running)
    meter = CpuMeter(running.pids)
    bulk1 = await bulk_throughput(connect, target, 1, seconds, meter)
    bulk8 = await bulk_throughput(connect, target, 8, seconds, meter)
    await ping_pong(connect, 0.5)  # warm-up, unmeasured: the bulk streams' tail drains first (both scenarios)
    rtt = await ping_pong(connect, seconds)
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
