"""Where each L4 proxy spends its CPU per GB: ``perf`` on the running proxies, samples sorted by stack.

    .venv/bin/python -m bench.l4_profile [--streams 8] [--seconds 4] [--only envoy,ours]

Issue 2's CPU goal compares CPU-s per GB with Envoy. ``bench.l4`` gives the totals; this gives the
split, so a claim about *why* ours costs more can be re-checked. Each scenario of :mod:`bench.l4`
runs a bulk phase (1 or 8 streams) while ``perf record --call-graph dwarf`` samples both proxies.
Each sample's stack is put in one bucket (first rule that matches, in :data:`BUCKETS` order): TLS
crypto (inside OpenSSL's ``EVP_EncryptUpdate``/``EVP_DecryptUpdate``), the rest of OpenSSL's record
layer (``SSL_write_ex``/``SSL_read_ex``: per-record work and the copy into its record buffer), the
memory BIO copies, socket reads and writes in the kernel, other kernel work, the Python
interpreter, and other user code. Envoy's binary has no symbols, so Envoy splits only into kernel
and user (its BoringSSL crypto is inside "user").

Needs ``perf`` (Debian's linux-perf) and the right to profile the proxies (root here). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import uvloop

from bench.common import CpuMeter, NotAvailable, machine_to_ourselves, print_table
from bench.l4 import (
    ENVOY_CLIENT_IP,
    ENVOY_SERVER_IP,
    FIXED,
    ROLES,
    SCENARIOS,
    L4Setup,
    connector,
    start_target,
)
from bench.l4load import TargetServer, bulk_throughput

Stack = list[str]  # one sample's frames, leaf first, each "symbol (dso)"


def _inside(*names: str) -> Callable[[Stack], bool]:
    return lambda stack: any(name in frame for frame in stack for name in names)


def _leaf_in(*names: str) -> Callable[[Stack], bool]:
    return lambda stack: bool(stack) and any(name in stack[0] for name in names)


def _kernel_leaf(stack: Stack) -> bool:
    return bool(stack) and "kernel" in stack[0]


BUCKETS: list[tuple[str, Callable[[Stack], bool]]] = [
    ("TLS crypto (AES-GCM)", _inside("EVP_EncryptUpdate", "EVP_DecryptUpdate")),
    ("TLS record layer, other", _inside("SSL_write_ex", "SSL_read_ex")),
    ("memory BIO copies", _inside("MemoryBIO", "BIO_write", "BIO_read")),
    ("socket writes (kernel)", _inside("ksys_write", "ksys_writev", "__sys_sendmsg", "__sys_sendto")),
    ("socket reads (kernel)", _inside("ksys_read", "ksys_readv", "__sys_recvmsg", "__sys_recvfrom")),
    ("kernel, other", _kernel_leaf),
    ("libc copies", _leaf_in("memmove", "memcpy", "memset")),
    ("Python interpreter", _leaf_in("libpython", "python3")),
    ("user, other", lambda stack: True),
]


def parse_perf_script(lines: Iterable[str]) -> Iterator[Stack]:
    """Stacks out of ``perf script`` text: a header line per sample, then indented frames."""
    stack: Stack | None = None
    for line in lines:
        if not line.strip():
            if stack is not None:
                yield stack
            stack = None
        elif not line[0].isspace():
            stack = []
        elif stack is not None:
            parts = line.split(None, 1)
            stack.append(parts[1].strip() if len(parts) > 1 else "")
    if stack is not None:
        yield stack


def bucket_shares(stacks: Iterable[Stack]) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    for stack in stacks:
        counts[next(name for name, rule in BUCKETS if rule(stack))] += 1
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name, _ in BUCKETS}


def kernel_user_shares(lines: Iterable[str]) -> dict[str, float]:
    """For a binary without symbols: kernel vs user, from ``perf report --sort dso``."""
    kernel = user = 0.0
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            share = float(parts[0].rstrip("%")) / 100
            if "kernel" in parts[1]:
                kernel += share
            else:
                user += share
    return {"kernel": kernel, "user": user}


@dataclasses.dataclass
class Profile:
    cpu_s_per_gb: float
    shares: dict[str, float]


def _perf(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["perf", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _profile_scenario(name: str, setup: L4Setup, target: TargetServer, streams: int, seconds: float,
                            workdir: Path) -> dict[str, Profile]:
    running = SCENARIOS[name](setup)
    try:
        connect = connector(running)
        meter = CpuMeter(running.pids)
        data = {role: workdir / f"{name}-{role}.data" for role in ROLES}
        dwarf = name == "ours"  # Envoy has no symbols: a plain sample is all it can give
        recorders = [
            _perf("record", "-F", "400", *(["--call-graph", "dwarf,16384"] if dwarf else []),
                  "-o", str(data[role]), "-p", str(pid), "--", "sleep", str(seconds))
            for role, pid in running.pids.items()
        ]
        result = await bulk_throughput(connect, target, streams, seconds, meter, warmup=0.3)
        for recorder in recorders:
            await asyncio.to_thread(recorder.wait)
    finally:
        running.stop()
    profiles = {}
    for role in ROLES:
        per_gb = result.cpu_s_per_gb(role)
        if dwarf:
            text = subprocess.run(["perf", "script", "-i", str(data[role])], capture_output=True, text=True).stdout
            shares = bucket_shares(parse_perf_script(text.splitlines()))
        else:
            text = subprocess.run(["perf", "report", "-i", str(data[role]), "--sort", "dso", "--stdio", "-g", "none"],
                                  capture_output=True, text=True).stdout
            shares = kernel_user_shares(text.splitlines())
        profiles[role] = Profile(per_gb, shares)
    return profiles


def report(profiles: dict[str, dict[str, Profile]], streams: int) -> None:
    for name, by_role in profiles.items():
        rows = []
        buckets: Sequence[str] = list(next(iter(by_role.values())).shares)
        for bucket in buckets:
            rows.append([bucket, *(f"{p.shares[bucket] * p.cpu_s_per_gb:.2f}  ({p.shares[bucket]:4.0%})"
                                   for p in by_role.values())])
        rows.append(["total", *(f"{p.cpu_s_per_gb:.2f}" for p in by_role.values())])
        print_table(f"{name}, {streams} stream(s): CPU-s per GB by where the samples were",
                    ["bucket", *by_role], rows)


async def main(streams: int, seconds: float, only: list[str]) -> int:
    ours_setup, target = await start_target("bench-l4-profile-")
    workdir = ours_setup.workdir
    setups = {"ours": ours_setup,
              "envoy": dataclasses.replace(ours_setup, listen=(ENVOY_CLIENT_IP, 0), server_ip=ENVOY_SERVER_IP)}
    try:
        profiles = {name: await _profile_scenario(name, setups[name], target, streams, seconds, workdir)
                    for name in only}
    finally:
        await target.close()
    report(profiles, streams)
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--only", default="envoy,ours", help="comma-separated: envoy, ours")
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := sorted(set(only) - {"envoy", "ours"}):
        parser.error(f"unknown scenario(s) {', '.join(unknown)}")
    if shutil.which("perf") is None:
        parser.exit(2, "bench.l4_profile: needs perf (apt install linux-perf)\n")
    from bench.common import ensure_free

    with machine_to_ourselves():
        ensure_free(FIXED)
        try:
            return uvloop.run(main(args.streams, args.seconds, only))
        except NotAvailable as why:
            parser.exit(2, f"bench.l4_profile: {why}\n")


if __name__ == "__main__":
    raise SystemExit(cli())
