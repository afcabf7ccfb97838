"""The destination a captured connection was meant for, as ztunnel reads it.

iptables REDIRECT rewrites the destination to our 15001 (or 15006) listener; the kernel
keeps the original in conntrack, readable with ``getsockopt(SOL_IP, SO_ORIGINAL_DST)``
(IPv4) or ``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (IPv6). When neither answers (the
connection was not redirected, e.g. a client dialled 15001 directly) the socket's own local
address is the destination. Order and fallback as ``ZT:src/socket.rs`` L63-86
(``orig_dst_addr_or_default``).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)  # IPPROTO_IPV6
_SOCKADDR_IN_LEN = 16
_SOCKADDR_IN6_LEN = 28


def _ipv4(sock: socket.socket) -> tuple[str, int] | None:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_LEN)
    except OSError:
        return None
    # struct sockaddr_in: family (host order), port (network order), 4-byte address
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


def _ipv6(sock: socket.socket) -> tuple[str, int] | None:
    try:
        raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_LEN)
    except OSError:
        return None
    # struct sockaddr_in6: family, port, flowinfo, 16-byte address, scope id
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


def _canonical(ip: str) -> str:
    """``::ffff:10.0.0.1`` → ``10.0.0.1`` (ztunnel's ``to_canonical``)."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[len("::ffff:") :]
    return ip


def original_destination(sock: socket.socket | Any) -> tuple[str, int]:
    """The (ip, port) the client dialled before a REDIRECT; the local address if none."""
    found = _ipv4(sock)
    if found is None:
        found = _ipv6(sock)
    if found is None:
        local = sock.getsockname()
        found = (local[0], local[1])
    return _canonical(found[0]), found[1]
