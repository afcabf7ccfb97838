"""SO_MARK on our own sockets (waypoint/packet_mark.py), as in-pod ztunnel sets it
(ZT:src/inpod/config.rs L84-120; mark 1337 = istio-cni's InpodMark 0x539, facts §1.7), and the
transparent app dial of original source preservation (waypoint/original_source.py, ztunnel's
``freebind_connect`` in ZT:src/proxy.rs, ``maybe_set_transparent`` for auto/on/off).

The mark itself is read back from real sockets; the capture rules it exists for are exercised
in tests/ztunnel/test_capture.py. Without CAP_NET_ADMIN (a root run drops it with ``setpriv``)
``--packet-mark auto`` turns the mark off with one log line and an explicit mark fails at start;
``--original-source`` likewise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waypoint.original_source import (
    OriginalSourceError,
    app_dial_source,
    choose_original_source,
    make_transparent,
    parse_original_source,
)
from waypoint.packet_mark import (
    INPOD_MARK,
    PacketMarkError,
    apply_mark,
    choose_mark,
    connect,
    listening_socket,
    parse_mark,
    probe_mark,
)

PRIVILEGED = probe_mark() is None
IP_TRANSPARENT, IP_FREEBIND = 19, 15  # <linux/in.h>
REPO = Path(__file__).resolve().parents[2]


def mark_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)


@pytest.mark.parametrize(("text", "mark"), [
    ("auto", "auto"), ("AUTO", "auto"), ("off", None), ("none", None), ("", None), ("0", None),
    ("1337", 1337), ("0x539", 1337), ("4294967295", 0xFFFFFFFF),
])
def test_parse_mark(text: str, mark: object) -> None:
    assert parse_mark(text) == mark


@pytest.mark.parametrize("text", ["-1", "4294967296", "mark", "0x"])
def test_parse_mark_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mark(text)


def test_choose_mark_auto_follows_the_probe() -> None:
    assert choose_mark("auto", lambda mark: None) == (INPOD_MARK, None)
    mark, why = choose_mark("auto", lambda mark: PacketMarkError(1, "Operation not permitted"))
    assert mark is None and why is not None and "Operation not permitted" in why


def test_choose_mark_explicit_is_kept_even_if_the_probe_would_fail() -> None:
    refused = PacketMarkError(1, "Operation not permitted")
    assert choose_mark(1337, lambda mark: refused) == (1337, None)  # the role fails at start instead
    assert choose_mark(None, lambda mark: refused) == (None, None)


def test_apply_mark_sets_so_mark_or_says_why() -> None:
    with socket.socket() as sock:
        if PRIVILEGED:
            apply_mark(sock, INPOD_MARK)
            assert mark_of(sock) == 0x539
        else:
            with pytest.raises(PacketMarkError, match="CAP_NET_ADMIN"):
                apply_mark(sock, INPOD_MARK)


async def test_connect_marks_the_dial_and_a_listener_marks_what_it_accepts() -> None:
    if not PRIVILEGED:
        pytest.skip("needs CAP_NET_ADMIN (the unprivileged path is tested by the auto/explicit CLI tests)")
    loop = asyncio.get_running_loop()
    accepted: list[socket.socket] = []

    def on_accept() -> asyncio.Protocol:
        class Keep(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.append(transport.get_extra_info("socket"))

        return Keep()

    server = await loop.create_server(on_accept, sock=listening_socket("127.0.0.1", 0, 0x539))
    port = server.sockets[0].getsockname()[1]
    try:
        marked, _ = await connect(asyncio.Protocol, "127.0.0.1", port, mark=0x539, local_addr=("127.0.0.2", 0))
        plain, _ = await connect(asyncio.Protocol, "localhost", port, mark=None)
        by_name, _ = await connect(asyncio.Protocol, "localhost", port, mark=7)
        assert mark_of(marked.get_extra_info("socket")) == 0x539
        assert marked.get_extra_info("sockname")[0] == "127.0.0.2"
        assert mark_of(plain.get_extra_info("socket")) == 0
        assert mark_of(by_name.get_extra_info("socket")) == 7
        assert mark_of(server.sockets[0]) == 0x539
        deadline = time.monotonic() + 5
        while len(accepted) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [mark_of(s) for s in accepted] == [0x539] * 3  # accepted sockets inherit the listener's
        for transport in (marked, plain, by_name):
            transport.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_connect_refused_is_an_oserror_and_leaks_no_socket() -> None:
    if not PRIVILEGED:
        pytest.skip("needs CAP_NET_ADMIN")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConnectionRefusedError):
        await connect(asyncio.Protocol, "127.0.0.1", port, mark=0x539)
    assert len(os.listdir("/proc/self/fd")) == before


# -- original source (IP_TRANSPARENT) ------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("auto", "auto"), (" Auto ", "auto"), ("on", True), ("true", True), ("1", True), ("yes", True),
    ("off", False), ("false", False), ("0", False), ("no", False),
])
def test_parse_original_source(text: str, value: object) -> None:
    assert parse_original_source(text) == value


@pytest.mark.parametrize("text", ["", "maybe", "2"])
def test_parse_original_source_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        parse_original_source(text)


def test_choose_original_source_is_ztunnel_maybe_set_transparent() -> None:
    """ZT:src/proxy.rs maybe_set_transparent: unset = best effort, explicit on/off kept as asked."""
    refused = OriginalSourceError(1, "Operation not permitted")
    assert choose_original_source("auto", lambda: None) == (True, None)
    enabled, why = choose_original_source("auto", lambda: refused)
    assert enabled is False and why is not None and why.startswith("original source off: Operation not permitted")
    assert choose_original_source(True, lambda: refused) == (True, None)  # the role fails at start instead
    assert choose_original_source(False, lambda: None) == (False, None)  # off never tries


@pytest.mark.parametrize(("client", "upstream", "original_source", "bind_loopback", "expected"), [
    # on: bind the client's IP, transparent (freebind_connect's Some(src))
    ("10.88.8.10", "10.88.9.10", True, False, (("10.88.8.10", 0), True)),
    ("10.88.8.10", "10.88.9.10", True, True, (("10.88.8.10", 0), True)),
    ("127.0.10.5", "127.0.10.6", True, True, (("127.0.10.5", 0), True)),
    ("fd00::8", "fd00::9", True, False, (("fd00::8", 0), True)),
    # the client is the app itself: "dest and source are the same, connect directly"
    ("10.88.9.10", "10.88.9.10", True, True, (None, False)),
    # off: the 127/8 trick of one host (waypoint dev), else the kernel's choice
    ("127.0.10.5", "127.0.10.6", False, True, (("127.0.10.5", 0), False)),
    ("127.0.10.5", "127.0.10.6", False, False, (None, False)),
    ("10.88.8.10", "10.88.9.10", False, True, (None, False)),
])
def test_app_dial_source(
    client: str, upstream: str, original_source: bool, bind_loopback: bool, expected: object
) -> None:
    assert app_dial_source(client, upstream, original_source=original_source, bind_loopback=bind_loopback) == expected


def test_make_transparent_sets_transparent_and_freebind_or_says_why() -> None:
    with socket.socket() as sock:
        if PRIVILEGED:
            make_transparent(sock)
            assert sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 1
            assert sock.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) == 1
        else:
            with pytest.raises(OriginalSourceError, match=r"IP_TRANSPARENT.*CAP_NET_ADMIN"):
                make_transparent(sock)


async def test_transparent_connect_binds_the_given_source_with_or_without_a_mark() -> None:
    """The spoofed dial itself across netns is tests/ztunnel/test_capture.py; here, on loopback,
    the socket options and the bound source address of both paths (mark None and marked)."""
    if not PRIVILEGED:
        pytest.skip("needs CAP_NET_ADMIN (the unprivileged path is tested by the CLI tests below)")
    loop = asyncio.get_running_loop()
    peers: list[str] = []

    def on_accept() -> asyncio.Protocol:
        class Keep(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                peers.append(transport.get_extra_info("peername")[0])

        return Keep()

    server = await loop.create_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        plain, _ = await connect(asyncio.Protocol, "127.0.0.1", port, mark=None,
                                 local_addr=("127.0.0.7", 0), transparent=True)
        marked, _ = await connect(asyncio.Protocol, "127.0.0.1", port, mark=0x539,
                                  local_addr=("127.0.0.8", 0), transparent=True)
        for transport in (plain, marked):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 1
            assert sock.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) == 1
        assert mark_of(marked.get_extra_info("socket")) == 0x539 and mark_of(plain.get_extra_info("socket")) == 0
        deadline = time.monotonic() + 5
        while len(peers) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sorted(peers) == ["127.0.0.7", "127.0.0.8"]
        plain.close()
        marked.close()
    finally:
        server.close()
        await server.wait_closed()


# -- the CLI without CAP_NET_ADMIN ----------------------------------------------------------------
def unprivileged(*args: str) -> list[str]:
    """``waypoint ztunnel`` with no listener that could collide, as a process without CAP_NET_ADMIN."""
    cmd = [sys.executable, "-m", "waypoint", "ztunnel", *args] + [
        f"--listen-{name}=off" for name in ("outbound", "socks5", "inbound-plaintext", "readiness", "metrics", "admin")
    ]
    if not PRIVILEGED:
        return cmd
    if shutil.which("setpriv") is None:
        if os.environ.get("CI"):
            pytest.fail("setpriv (util-linux) is needed to drop CAP_NET_ADMIN")
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_ADMIN")
    drop = "-net_admin,-net_raw"  # SO_MARK: CAP_NET_ADMIN, or CAP_NET_RAW on Linux >= 5.17
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *cmd]


@pytest.mark.timeout(60)
def test_explicit_mark_without_the_capability_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    done = subprocess.run(
        unprivileged("--config", str(tmp_path / "mesh"), "--ca-dir", str(tmp_path / "ca"), "--packet-mark", "1337"),
        capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "SO_MARK 0x539" in done.stderr and "ztunnel started" not in done.stderr


@pytest.mark.timeout(60)
def test_original_source_on_without_the_capability_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    done = subprocess.run(
        unprivileged("--config", str(tmp_path / "mesh"), "--ca-dir", str(tmp_path / "ca"),
                     "--packet-mark", "off", "--original-source", "on"),
        capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot start: " in done.stderr and "IP_TRANSPARENT" in done.stderr, done.stderr[-2000:]
    assert "ztunnel started" not in done.stderr


@pytest.mark.timeout(60)
def test_auto_mark_without_the_capability_runs_unmarked_and_says_so_once(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    proc = subprocess.Popen(
        unprivileged("--config", str(tmp_path / "mesh"), "--ca-dir", str(tmp_path / "ca")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the process dies; pytest-timeout bounds it
            lines.append(line)
            if "ztunnel started" in line:
                break
        assert any("ztunnel started" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    notes = [line for line in lines if "packet mark off" in line]
    assert len(notes) == 1 and "CAP_NET_ADMIN" in notes[0], "".join(lines)
    # --original-source auto, the default: off the same way, one line
    notes = [line for line in lines if "original source off" in line]
    assert len(notes) == 1 and "CAP_NET_ADMIN" in notes[0], "".join(lines)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--packet-mark", "banana", "expected auto, off or a mark"),
        ("--original-source", "maybe", "expected auto, on or off"),
    ],
)
def test_a_bad_option_value_is_named_with_what_is_expected(option: str, value: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "waypoint", "ztunnel", "--config", ".", option, value],
        capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
    )
    assert done.returncode == 2
    assert f"argument {option}: '{value}': {says}" in done.stderr, done.stderr[-2000:]
