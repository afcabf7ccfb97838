"""L4 benchmark: plain TCP, Envoy → Envoy HBONE, and our ztunnel → ztunnel, in one run.

    .venv/bin/python -m bench.l4 [--seconds 3] [--only plain,envoy,envoy-ztunnel-windows,ours] [--repeat 1]

All scenarios are started together, each on its own loopback addresses (ours 127.0.7.101-103,
Envoy 127.0.7.104-105, Envoy with ztunnel's windows 127.0.7.106-107, the target app on
127.0.7.103), and stay up for the whole run.

Two Envoy pairs: ``envoy`` with Envoy's own HTTP/2 flow control (16 MiB per stream, 24 MiB per
connection), and ``envoy-ztunnel-windows`` with ztunnel's (4 MiB / 16 MiB, facts §1.3), which is
what our ztunnel uses and what issue 2 asks of it. A single tunnel's cost depends on its window
(a 4 MiB window stalls a 1-stream transfer more often: in alternating runs Envoy's source side
cost 12% more per GB with it, ours 17% less with 16 MiB), so the second pair is the like-for-like
baseline; both are reported. Each round
(``--repeat`` of them) carries bulk bytes (1 and 8 streams) through one scenario at a time, so the
CPU windows never overlap, then 64-byte round trips through all of them interleaved: one on plain
TCP, one through Envoy, one through ours, repeated, so every scenario's samples see the same
machine. Plain TCP always takes part in the round trips: it is the baseline of the ADDED latency.
Figures are medians over the rounds with their range. Our ztunnel is entered through its SOCKS5
listener (one CONNECT per connection, before the measured window), with the load generator bound
to the client pod's address 127.0.7.102.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import socket
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import uvloop

from bench import ours
from bench.common import (
    CpuMeter,
    NotAvailable,
    Running,
    Spread,
    ensure_free,
    fmt,
    machine_to_ourselves,
    peak_rss_mib,
    percentile,
    print_table,
)
from bench.l4load import BulkResult, Connect, RoundRobinPings, TargetServer, bulk_throughput
from tests.support.envoy import CertPaths, EnvoyProcess, TestCA, hbone_originate, hbone_terminate
from tests.support.envoy.configs import ZTUNNEL_WINDOWS, Windows

# Ours: SOCKS5 entry on CLIENT_IP, the load generator as the client pod, HBONE to the server pod.
CLIENT_IP, SERVER_IP = "127.0.7.101", "127.0.7.103"
CLIENT_POD_IP = "127.0.7.102"  # ours: the load generator binds here, a pod of the source ztunnel
# Envoy's pairs on addresses of their own, so all pairs can listen on :15008 at the same time.
ENVOY_CLIENT_IP, ENVOY_SERVER_IP = "127.0.7.104", "127.0.7.105"
ENVOY_ZW_CLIENT_IP, ENVOY_ZW_SERVER_IP = "127.0.7.106", "127.0.7.107"
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
ROLES = ("client", "server")  # the source-side and destination-side proxy of every scenario
FIXED = [(CLIENT_IP, 15001), (CLIENT_IP, 15021), (CLIENT_POD_IP, 15008), (SERVER_IP, 15008), (SERVER_IP, 15021)]
FIXED += [(ENVOY_SERVER_IP, 15008), (ENVOY_ZW_SERVER_IP, 15008)]  # fixed ports (the rest ask for port 0)
WARMUP_S = 0.5  # unmeasured round trips before each measured window: the bulk streams' tail drains


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


def start_envoy(setup: L4Setup, windows: Windows | None = None) -> Running:
    """Envoy → Envoy HBONE; ``windows``: HTTP/2 flow control on both hops (None: Envoy's own)."""
    tag = "" if windows is None else "-zw"
    server = EnvoyProcess(
        hbone_terminate((setup.server_ip, 15008), setup.server_certs, "authority", windows=windows),
        setup.workdir, "terminate" + tag,
    ).start()
    authority = f"{setup.target[0]}:{setup.target[1]}"
    client_config = hbone_originate(
        (setup.listen[0], 0), (setup.server_ip, 15008), authority, setup.client_certs, SERVER_ID, windows=windows
    )
    try:
        client = EnvoyProcess(client_config, setup.workdir, "originate" + tag).start()
    except BaseException:
        server.stop()
        raise

    def stop() -> None:
        client.stop()
        server.stop()

    return Running({"client": client.pid, "server": server.pid}, stop, client.listener_address("originate"))


def start_envoy_ztunnel_windows(setup: L4Setup) -> Running:
    return start_envoy(setup, ZTUNNEL_WINDOWS)


SCENARIOS: dict[str, Callable[[L4Setup], Running]] = {
    "plain": start_plain,
    "envoy": start_envoy,
    "envoy-ztunnel-windows": start_envoy_ztunnel_windows,
    "ours": start_ours,
}
ENVOYS = {"envoy": "Envoy", "envoy-ztunnel-windows": "Envoy with ztunnel's windows"}


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


@dataclass
class Figures:
    """What one scenario measured, one entry per round; round ``k`` of every scenario ran in the
    same stretch of time (bulk back to back, round trips interleaved ping by ping)."""

    bulk1: list[BulkResult] = field(default_factory=list)
    bulk8: list[BulkResult] = field(default_factory=list)
    rtt_ns: list[list[int]] = field(default_factory=list)  # ping i of round k pairs with plain's
    rtt_cpu_us: list[dict[str, float]] = field(default_factory=list)  # per process, per round trip
    rss_mib: dict[str, float] = field(default_factory=dict)


async def bulk_phases(connect: Connect, running: Running, target: TargetServer, seconds: float, into: Figures) -> None:
    """1 then 8 streams through one scenario, its processes metered; nothing else carries traffic."""
    meter = CpuMeter(running.pids)
    into.bulk1.append(await bulk_throughput(connect, target, 1, seconds, meter))
    into.bulk8.append(await bulk_throughput(connect, target, 8, seconds, meter))


async def round_trip_phase(
    pings: RoundRobinPings, running: dict[str, Running], seconds: float, figures: dict[str, Figures]
) -> None:
    """Interleaved 64-byte round trips through every scenario (``running`` order, as added to
    ``pings``), after an unmeasured warm-up. Each process's CPU over the window is its own pings'
    alone, since only one ping is ever in flight."""
    await pings.run(WARMUP_S)
    meter = CpuMeter({f"{name} {role}": pid for name, run in running.items() for role, pid in run.pids.items()})
    meter.start()
    samples = await pings.run(seconds)
    cpu = meter.stop()
    for (name, run), rtts in zip(running.items(), samples, strict=True):
        figures[name].rtt_ns.append(rtts)
        figures[name].rtt_cpu_us.append({role: cpu[f"{name} {role}"] / len(rtts) * 1e6 for role in run.pids})


def _paired_added_us(proxied: Sequence[int], plain: Sequence[int]) -> float:
    """The median of per-round differences (proxied ping minus the plain ping just before it)."""
    return statistics.median(p - q for p, q in zip(proxied, plain, strict=True)) / 1e3 if plain else float("nan")


def series(fig: Figures, plain: Figures | None) -> dict[str, list[float]]:
    """Every figure of one scenario, one value per round; ``plain`` gives the added latency."""
    out: dict[str, list[float]] = {
        "gbit1": [b.gbit_per_s for b in fig.bulk1],
        "gbit8": [b.gbit_per_s for b in fig.bulk8],
        "p50": [percentile(r, 50) / 1e3 for r in fig.rtt_ns],
        "p99": [percentile(r, 99) / 1e3 for r in fig.rtt_ns],
    }
    if plain is not None and plain is not fig:
        base50 = [percentile(r, 50) / 1e3 for r in plain.rtt_ns]
        base99 = [percentile(r, 99) / 1e3 for r in plain.rtt_ns]
        out["added p50"] = [a - b for a, b in zip(out["p50"], base50, strict=True)]
        out["added p99"] = [a - b for a, b in zip(out["p99"], base99, strict=True)]
        out["added paired"] = [_paired_added_us(a, b) for a, b in zip(fig.rtt_ns, plain.rtt_ns, strict=True)]
    for role in fig.rss_mib:
        out[f"cpu1 {role}"] = [b.cpu_s_per_gb(role) for b in fig.bulk1]
        out[f"cpu8 {role}"] = [b.cpu_s_per_gb(role) for b in fig.bulk8]
        out[f"cpu rtt {role}"] = [c[role] for c in fig.rtt_cpu_us]
        out[f"rss {role}"] = [fig.rss_mib[role]]
    return out


def _cells(values: dict[str, list[float]], keys: Sequence[str], digits: int) -> list[str]:
    return [Spread.of(values.get(key, [])).fmt(digits) for key in keys]


def _ratio_row(label: str, ours_values: list[float], envoy_values: list[float]) -> list[str]:
    """ours / Envoy of the medians, and the range of the per-round ratios (round k against round k).
    A ratio of an added latency that Envoy's side does not show (<= 0) is meaningless: "-"."""
    ours_median, envoy_median = Spread.of(ours_values).median, Spread.of(envoy_values).median
    of_medians = ours_median / envoy_median if envoy_median > 0 else float("nan")
    per_round = Spread.of(o / e if e > 0 else float("nan") for o, e in zip(ours_values, envoy_values, strict=False))
    spread = f"{fmt(per_round.low)}..{fmt(per_round.high)}" if len(ours_values) > 1 else "-"
    return [label, "-" if of_medians != of_medians else f"{of_medians:.2f}x", spread]


RATIO_LABELS = {
    "gbit1": "throughput 1 stream (higher is better)",
    "gbit8": "throughput 8 streams (higher is better)",
    "p50": "RTT p50 (total)",
    "p99": "RTT p99 (total)",
    "added p50": "ADDED RTT p50 (goal: <= 1.5x)",
    "added p99": "ADDED RTT p99",
    "added paired": "ADDED RTT, per-round median",
}
for _role in ROLES:
    RATIO_LABELS |= {f"cpu1 {_role}": f"{_role} CPU-s/GB 1 stream", f"cpu8 {_role}": f"{_role} CPU-s/GB 8 streams"}
    RATIO_LABELS |= {f"cpu rtt {_role}": f"{_role} CPU us/round trip", f"rss {_role}": f"{_role} peak RSS"}


def _ratio_table(title: str, o: dict[str, list[float]], e: dict[str, list[float]]) -> None:
    rows = [_ratio_row(label, o[key], e[key]) for key, label in RATIO_LABELS.items() if key in o and key in e]
    header = ["metric", "ratio", "per-round range"]
    print_table(f"{title}, ratio of the medians (below 1x is better unless marked)", header, rows)


def report(figures: dict[str, Figures], bulk: list[str], notes: dict[str, str], seconds: float, repeat: int) -> None:
    plain = figures.get("plain")
    table = {name: series(fig, plain) for name, fig in figures.items()}
    of = f"median [min..max] of {repeat} rounds" if repeat > 1 else "one round"
    rows = [[name, *_cells(table[name], ["gbit1", "gbit8"], 2)] for name in bulk]
    print_table(f"L4 throughput, Gbit/s ({seconds:g} s per phase; {of})", ["scenario", "1 stream", "8 streams"], rows)

    pings = len(next(iter(figures.values())).rtt_ns[0]) if figures else 0
    keys = ["p50", "p99", "added p50", "added p99", "added paired"]
    rows = [[name, *_cells(table[name], keys, 0)] for name in figures]
    header = ["scenario", "p50", "p99", "added p50", "added p99", "added per-round median"]
    print_table(
        f"64-byte round trips, us: {' -> '.join(figures)} interleaved, {pings} each in round 1 ({of}); "
        "added = proxied - plain",
        header,
        rows,
    )

    rows = []
    for name, fig in figures.items():
        for role in fig.rss_mib:
            cells = _cells(table[name], [f"cpu1 {role}", f"cpu8 {role}"], 2) if name in bulk else ["-", "-"]
            rows.append([f"{name} {role}", *cells, *_cells(table[name], [f"cpu rtt {role}", f"rss {role}"], 0)])
    header = ["proxy process", "CPU-s/GB 1 stream", "CPU-s/GB 8 streams", "CPU us/round trip", "peak RSS MiB"]
    print_table("Per proxy process (lower is better)", header, rows)

    for name, title in ENVOYS.items():
        if "ours" in figures and name in figures:
            _ratio_table(f"Ours / {title}", table["ours"], table[name])
    for name, why in notes.items():
        print(f"{name}: {why}")


async def start_target(prefix: str) -> tuple[L4Setup, TargetServer]:
    """The target app, the two identities' certificate folders, and our scenario's setup (the
    Envoy scenarios are this setup on their own addresses)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    ca = TestCA()
    client_certs = ca.write_cert_dir(workdir / "client", CLIENT_ID)
    server_certs = ca.write_cert_dir(workdir / "server", SERVER_ID)
    target = TargetServer()
    target_addr = await target.start(SERVER_IP)
    return L4Setup((CLIENT_IP, 15001), target_addr, SERVER_IP, client_certs, server_certs, workdir), target


async def main(seconds: float, only: list[str], repeat: int) -> int:
    ensure_free(FIXED)
    ours_setup, target = await start_target("bench-l4-")
    setups = {
        "plain": ours_setup,
        "ours": ours_setup,
        "envoy": dataclasses.replace(ours_setup, listen=(ENVOY_CLIENT_IP, 0), server_ip=ENVOY_SERVER_IP),
        "envoy-ztunnel-windows": dataclasses.replace(
            ours_setup, listen=(ENVOY_ZW_CLIENT_IP, 0), server_ip=ENVOY_ZW_SERVER_IP
        ),
    }
    running: dict[str, Running] = {}
    notes: dict[str, str] = {}
    figures: dict[str, Figures] = {}
    pings = RoundRobinPings()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(target.close)
        for name in (n for n in SCENARIOS if n == "plain" or n in only):  # plain: the RTT baseline
            try:
                running[name] = SCENARIOS[name](setups[name])
            except NotAvailable as why:
                notes[name] = f"not run: {why}"
                continue
            stack.callback(running[name].stop)
        connects = {name: connector(run) for name, run in running.items()}
        for connect in connects.values():
            await pings.add(connect)
        stack.callback(pings.close)
        figures = {name: Figures() for name in running}
        bulk = [name for name in only if name in running]
        for _ in range(repeat):
            for name in bulk:  # alternating: envoy, ours, envoy, ours...
                await bulk_phases(connects[name], running[name], target, seconds, figures[name])
            await round_trip_phase(pings, running, seconds, figures)
        for name, run in running.items():
            figures[name].rss_mib = {role: peak_rss_mib(pid) for role, pid in run.pids.items()}
    report(figures, bulk, notes, seconds, repeat)
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured phase")
    parser.add_argument("--only", default="plain,envoy,envoy-ztunnel-windows,ours", help="comma-separated scenarios")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; figures are their medians")
    args = parser.parse_args()
    only = args.only.split(",")
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    with machine_to_ourselves():  # another bench run would bind our addresses and skew our CPU windows
        try:
            return uvloop.run(main(args.seconds, only, args.repeat))
        except NotAvailable as why:
            parser.exit(2, f"bench.l4: {why}\n")


if __name__ == "__main__":
    raise SystemExit(cli())
