"""What runs inside one tunnel at the waypoint: HTTP through the filter chain, or opaque TCP.

The decision comes from the destination port's protocol (Istio's ``appProtocol`` / port-name
rules, ``waypoint.mesh.state.port_protocol``); when that is unknown, the first bytes decide, as
Envoy's ``http_inspector`` does. A client that says nothing within ``sniff_timeout_s`` is taken
for a server-first protocol and relayed as TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from waypoint.l7.sniff import detect_protocol


class SniffingProtocol(asyncio.Protocol):
    """Holds the first bytes, then hands the transport to the protocol they call for."""

    def __init__(
        self, choose: Callable[[str], asyncio.BaseProtocol], sniff_timeout_s: float | None = 0.5
    ) -> None:
        self._choose = choose
        self._timeout = sniff_timeout_s
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        if self._timeout is not None:  # None: the port is declared HTTP, wait for the client
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._hand_over, "tcp")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        found = detect_protocol(self._buffer)
        if found is not None:
            self._hand_over(found)

    def eof_received(self) -> bool:
        self._eof = True
        self._hand_over(detect_protocol(self._buffer) or "tcp")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _hand_over(self, protocol: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._transport = None
        chosen = self._choose(protocol)
        transport.set_protocol(chosen)
        chosen.connection_made(transport)
        # every candidate takes data_received, the relay's end too (it also reads buffered)
        chosen = cast(asyncio.Protocol, chosen)
        if self._buffer:
            chosen.data_received(self._buffer)
        if self._eof:
            chosen.eof_received()
