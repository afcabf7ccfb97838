"""Original source preservation: the app sees the client's IP, not ztunnel's.

ztunnel's inbound app dials (``ZT:src/proxy/inbound.rs``: ``upstream_src_ip =
enable_original_source.then_some(ri.rbac_ctx.conn.src.ip())``; ``ZT:src/proxy/
inbound_passthrough.rs``: ``orig_src = source_addr.ip()`` when ``enable_orig_src``) go through
``freebind_connect`` (``ZT:src/proxy.rs``): a socket with ``IP_TRANSPARENT`` + ``IP_FREEBIND``
(``ZT:src/socket.rs`` ``set_freebind_and_transparent``; the IPv6 pair for IPv6) bound to
``(client IP, 0)`` before connecting. The kernel then sends the SYN from an address this netns
does not own; the app's replies find their way back because ztunnel's socket carries mark 0x539,
istio-cni's mangle rule turns that into connmark 0x111, the app's replies get it restored, and
``ip rule fwmark 0x111/0xfff lookup 100`` + ``local 0.0.0.0/0 dev lo table 100`` deliver them
locally, to the transparent socket (facts §1.7).

Whether to do it is ztunnel's ``maybe_set_transparent`` (``ZT:src/proxy.rs``): explicitly on
(``ENABLE_ORIG_SRC=true``) fails at start when the kernel refuses, explicitly off never tries,
unset is best effort. ``waypoint ztunnel --original-source auto|on|off`` says the same; the
decision is pure (:func:`choose_original_source`, the probe injected) and made once at start.
Setting ``IP_TRANSPARENT`` needs ``CAP_NET_ADMIN`` (or ``CAP_NET_RAW``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Literal

from waypoint.errors import WaypointError

Auto = Literal["auto"]

# <linux/in.h> IP_TRANSPARENT 19, IP_FREEBIND 15; <linux/in6.h> IPV6_TRANSPARENT 75, IPV6_FREEBIND 78
# (Python names only some of them).
_OPTIONS: dict[int, tuple[tuple[int, int, str], ...]] = {
    socket.AF_INET: ((socket.IPPROTO_IP, 19, "IP_TRANSPARENT"), (socket.IPPROTO_IP, 15, "IP_FREEBIND")),
    socket.AF_INET6: ((socket.IPPROTO_IPV6, 75, "IPV6_TRANSPARENT"), (socket.IPPROTO_IPV6, 78, "IPV6_FREEBIND")),
}


class OriginalSourceError(WaypointError, OSError):
    """The kernel refused IP_TRANSPARENT (no ``CAP_NET_ADMIN``). An OSError too, so a dial that
    hits it fails like any other dial (503) instead of escaping as a crash."""


def make_transparent(sock: socket.socket) -> None:
    """``IP_TRANSPARENT`` + ``IP_FREEBIND`` (or the IPv6 pair) on an unbound socket, so it may
    bind to an address this netns does not own and receive its replies."""
    for level, option, name in _OPTIONS.get(sock.family, ()):
        try:
            sock.setsockopt(level, option, 1)
        except OSError as exc:
            raise OriginalSourceError(exc.errno, f"{name}: {exc.strerror} (needs CAP_NET_ADMIN)") from exc


def probe_transparent() -> OriginalSourceError | None:
    """Try :func:`make_transparent` once on a throwaway socket: None when this process may."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            make_transparent(sock)
        except OriginalSourceError as exc:
            return exc
    return None


def parse_original_source(text: str) -> bool | Auto:
    """``--original-source``: ``auto``, ``on`` (``true``/``yes``/``1``) or ``off`` (``false``/``no``/``0``)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{text!r}: expected auto, on or off")


def choose_original_source(
    requested: bool | Auto, probe: Callable[[], OriginalSourceError | None] = probe_transparent
) -> tuple[bool, str | None]:
    """Whether to spoof, and why ``auto`` could not (one log line). ``on`` is returned as is: its
    failure is the caller's error at start (:func:`check_original_source`), never dropped."""
    if requested != "auto":
        return requested, None
    failed = probe()
    if failed is None:
        return True, None
    return False, (f"original source off: {failed.strerror} setting IP_TRANSPARENT (needs CAP_NET_ADMIN); "
                   "apps see ztunnel's address, not the client's")


def check_original_source(enabled: bool) -> None:
    """Raise :class:`OriginalSourceError` now if spoofing is asked for and cannot be had."""
    if enabled:
        failed = probe_transparent()
        if failed is not None:
            raise failed


def app_dial_source(
    client_ip: str, upstream_ip: str, *, original_source: bool, bind_loopback: bool
) -> tuple[tuple[str, int] | None, bool]:
    """Where the inbound app dial leaves from: ``(local_addr or None, transparent)``.

    * original source on: ``(client IP, 0)``, transparent, unless the client is the app itself
      (``freebind_connect``: "dest and source are the same, connect directly");
    * else, on one host (``waypoint dev``), the client pod's own 127/8 address, which needs no
      privilege (``bind_loopback``);
    * else ztunnel's own address (the kernel picks it).
    """
    if original_source and client_ip != upstream_ip:
        return (client_ip, 0), True
    if bind_loopback and client_ip.startswith("127."):
        return (client_ip, 0), False
    return None, False
