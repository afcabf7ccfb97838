"""SO_MARK 1337 on the ztunnel's own sockets, so istio-cni's capture rules let them pass.

istio-cni redirects every TCP connection a pod opens to ztunnel's 15001 unless its packets
carry the mark ``0x539/0xfff`` (``ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark
0x539/0xfff -j REDIRECT --to-ports 15001``, facts §1.7, ``IS:cni/pkg/iptables/testdata/
default.golden``). ztunnel's own dials leave from inside that same netns (HBONE to the peer,
passthrough, the inbound dial to the app), so without the mark they would be captured again and
loop into ztunnel. ztunnel therefore marks every socket it makes in a pod's netns, listeners
included (``ZT:src/inpod/config.rs`` L84-120, ``InPodSocketFactory::configure``; ``PACKET_MARK``
defaults to 1337, ``ZT:src/config.rs`` L108). This module is the one place that knows how.

Setting SO_MARK needs ``CAP_NET_ADMIN``: :func:`probe_mark` tries it once on a throwaway socket
so a caller can decide at start (``waypoint ztunnel``'s ``--packet-mark auto``) instead of
finding out on the first connection. :func:`connect` and :func:`listening_socket` are the
socket-creating edges; with no mark they are exactly ``create_connection``/``create_server``'s
own paths, so the unmarked case costs nothing. :func:`connect`'s ``transparent`` is ztunnel's
``freebind_connect`` for original source preservation (:mod:`waypoint.original_source`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
from collections.abc import Callable
from typing import Literal, TypeVar

from waypoint.errors import WaypointError
from waypoint.original_source import OriginalSourceError, make_transparent

INPOD_MARK = 1337  # 0x539: IS:cni/pkg/config/config.go InpodMark (mask 0xfff)
MARK_MASK = 0xFFF

P = TypeVar("P", bound=asyncio.BaseProtocol)
Auto = Literal["auto"]


class PacketMarkError(WaypointError, OSError):
    """The kernel refused SO_MARK (no ``CAP_NET_ADMIN``). An OSError too, so a dial that hits it
    fails like any other dial (503 / connection refused) instead of escaping as a crash."""


def apply_mark(sock: socket.socket, mark: int) -> None:
    """Set ``SO_MARK`` on ``sock``; :class:`PacketMarkError` (with the errno) when refused."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except OSError as exc:
        raise PacketMarkError(exc.errno, f"SO_MARK {mark:#x}: {exc.strerror} (needs CAP_NET_ADMIN)") from exc


def probe_mark(mark: int = INPOD_MARK) -> PacketMarkError | None:
    """Try ``mark`` once on a throwaway socket: None when this process may set it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            apply_mark(sock, mark)
        except PacketMarkError as exc:
            return exc
    return None


def parse_mark(text: str) -> int | Auto | None:
    """``--packet-mark``: ``auto``, ``off`` (or ``none``/``0``), or a mark (``1337``, ``0x539``)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value in ("off", "none", ""):
        return None
    try:
        mark = int(value, 0)
    except ValueError:
        raise ValueError(f"{text!r}: expected auto, off or a mark such as 1337 or 0x539") from None
    if not 0 <= mark < 1 << 32:
        raise ValueError(f"packet mark {text!r} is not a 32-bit value")
    return mark or None


def choose_mark(
    requested: int | Auto | None, probe: Callable[[int], PacketMarkError | None] = probe_mark
) -> tuple[int | None, str | None]:
    """The mark to run with, and why it is off when ``auto`` could not have it (one log line).

    An explicit mark is returned as is: its failure is the caller's error at start
    (:func:`check_mark`), never quietly dropped.
    """
    if requested != "auto":
        return requested, None
    failed = probe(INPOD_MARK)
    if failed is None:
        return INPOD_MARK, None
    return None, f"packet mark off: {failed.strerror}; istio-cni's capture rules would loop our own dials"


def check_mark(mark: int | None) -> None:
    """Raise :class:`PacketMarkError` now if ``mark`` is asked for and cannot be set."""
    if mark is not None:
        failed = probe_mark(mark)
        if failed is not None:
            raise failed


def _numeric(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]] | None:
    """An IP literal needs no resolver (the common case: plans carry IPs)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    return None


async def _dial_socket(
    host: str, port: int, mark: int | None, local_addr: tuple[str, int] | None, transparent: bool
) -> socket.socket:
    """A connected, non-blocking TCP socket, marked and/or transparent (addresses tried in
    resolver order). Transparent: ``IP_TRANSPARENT`` + ``IP_FREEBIND`` before the bind, so
    ``local_addr`` may be an address this netns does not own (``ZT:src/proxy.rs``
    ``freebind_connect``)."""
    loop = asyncio.get_running_loop()
    targets = _numeric(host, port)
    if targets is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(family, (str(addr[0]), int(addr[1]))) for family, _t, _p, _n, addr in infos]
    errors: list[OSError] = []
    for family, addr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if mark is not None:
                apply_mark(sock, mark)
            if transparent:
                make_transparent(sock)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, addr)
        except (PacketMarkError, OriginalSourceError):
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"connect {host}:{port}: {'; '.join(str(e) for e in errors) or 'no address'}")


async def connect(
    factory: Callable[[], P],
    host: str,
    port: int,
    *,
    mark: int | None,
    local_addr: tuple[str, int] | None = None,
    transparent: bool = False,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.Transport, P]:
    """``loop.create_connection`` whose socket carries ``mark`` (and, ``transparent``, may bind
    ``local_addr`` to the client's address); neither: the loop's own path."""
    loop = asyncio.get_running_loop()
    if mark is None and not transparent:
        return await loop.create_connection(
            factory, host, port, local_addr=local_addr, ssl=ssl, server_hostname=server_hostname
        )
    sock = await _dial_socket(host, port, mark, local_addr, transparent)
    try:
        return await loop.create_connection(factory, sock=sock, ssl=ssl, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def listening_socket(host: str | None, port: int, mark: int) -> socket.socket:
    """A bound, marked listening socket for ``loop.create_server(sock=...)``.

    Unlike ``create_server(host, port)``, one socket for the first address ``host`` resolves to
    (our listeners are given as IP literals)."""
    family, _type, proto, _name, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        apply_mark(sock, mark)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
