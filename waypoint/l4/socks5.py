"""SOCKS5 server handshake (RFC 1928), sans-I/O, plus its thin asyncio adapter.

ztunnel serves SOCKS5 on 15080 for local traffic that is not captured (facts §1.1,
``ZT:src/proxy/socks5.rs``): no authentication, CONNECT only. We also accept domain names
(``echo.default.svc.cluster.local``, ``echo.default``), which the role resolves against the
mesh first (ztunnel leaves a TODO there).

The state machine follows h2's shape: bytes go in through :meth:`Socks5Server.receive_data`
and come out as events; what to send is drained with :meth:`Socks5Server.data_to_send`. The
success reply (REP 0x00) is sent only when the caller says the upstream is connected.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from waypoint.l4.relay import Relay

log = logging.getLogger(__name__)

VERSION = 0x05
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01


class Reply(enum.IntEnum):
    """REP codes of RFC 1928 §6."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # "connection not allowed by ruleset": identity or policy refusal
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04  # name not resolvable, no healthy endpoint
    CONNECTION_REFUSED = 0x05  # dial refused / tunnel answered 503
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The client asked to CONNECT to ``host:port`` (an IP literal or a domain name)."""

    host: str
    port: int
    address_type: AddressType


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake cannot go on; a reply (if any) is queued. Flush, then close."""

    reason: str
    reply: Reply | None


Event = ConnectRequested | HandshakeFailed


class State(enum.Enum):
    GREETING = "greeting"
    REQUEST = "request"
    AWAITING_REPLY = "awaiting_reply"
    ESTABLISHED = "established"
    FAILED = "failed"


def encode_reply(reply: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6)."""
    addr = ipaddress.ip_address(bound[0])
    atyp = AddressType.IPV4 if addr.version == 4 else AddressType.IPV6
    return bytes((VERSION, reply, 0x00, atyp)) + addr.packed + struct.pack("!H", bound[1])


class Socks5Server:
    """One client's handshake. Events come out of :meth:`receive_data`; replies are queued."""

    def __init__(self) -> None:
        self.state = State.GREETING
        self._buffer = b""
        self._out = bytearray()
        self.leftover = b""
        """Bytes the client sent after its CONNECT request (early data for the upstream)."""

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state in (State.AWAITING_REPLY, State.ESTABLISHED):
            self.leftover += data
            return []
        if self.state is State.FAILED:
            return []
        self._buffer += data
        events: list[Event] = []
        while True:
            event = self._step()
            if event is None:
                return events
            events.append(event)
            if isinstance(event, HandshakeFailed) or self._awaiting_reply():
                return events

    def _awaiting_reply(self) -> bool:
        return self.state is State.AWAITING_REPLY

    def reply(self, reply: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        """Answer the pending CONNECT: SUCCEEDED once the upstream is up, else a failure code."""
        if self.state is not State.AWAITING_REPLY:
            raise RuntimeError(f"no CONNECT awaiting a reply (state {self.state.value})")
        self._out += encode_reply(reply, bound)
        self.state = State.ESTABLISHED if reply is Reply.SUCCEEDED else State.FAILED

    # -- parsing ----------------------------------------------------------------------------
    def _fail(self, reason: str, reply: Reply | None) -> HandshakeFailed:
        self.state = State.FAILED
        if reply is not None:
            self._out += encode_reply(reply)
        return HandshakeFailed(reason, reply)

    def _step(self) -> Event | None:
        buf = self._buffer
        if self.state is State.GREETING:
            return self._greeting(buf)
        if self.state is State.REQUEST:
            return self._request(buf)
        return None

    def _greeting(self, buf: bytes) -> Event | None:
        if len(buf) < 2:
            return None
        if buf[0] != VERSION:
            return self._fail(f"unsupported version {buf[0]}", None)  # not SOCKS5: no reply
        nmethods = buf[1]
        if len(buf) < 2 + nmethods:
            return None
        methods = buf[2 : 2 + nmethods]
        self._buffer = buf[2 + nmethods :]
        if METHOD_NO_AUTH not in methods:
            self.state = State.FAILED
            self._out += bytes((VERSION, METHOD_NONE_ACCEPTABLE))
            return HandshakeFailed("no acceptable authentication method", None)
        self._out += bytes((VERSION, METHOD_NO_AUTH))
        self.state = State.REQUEST
        # an empty step result lets receive_data continue with the request in the same data
        return self._request(self._buffer)

    def _request(self, buf: bytes) -> Event | None:
        if len(buf) < 4:
            return None
        if buf[0] != VERSION:
            return self._fail(f"unsupported version {buf[0]} in request", Reply.GENERAL_FAILURE)
        if buf[1] != CMD_CONNECT:
            return self._fail(f"unsupported command {buf[1]}", Reply.COMMAND_NOT_SUPPORTED)
        atyp = buf[3]
        if atyp == AddressType.IPV4:
            end = 4 + 4
            if len(buf) < end + 2:
                return None
            host = str(ipaddress.IPv4Address(buf[4:end]))
        elif atyp == AddressType.IPV6:
            end = 4 + 16
            if len(buf) < end + 2:
                return None
            host = str(ipaddress.IPv6Address(buf[4:end]))
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
            if len(buf) < end + 2:
                return None
            try:
                host = buf[5:end].decode("ascii")
            except UnicodeDecodeError:
                return self._fail("domain name is not ASCII", Reply.GENERAL_FAILURE)
            if not host:
                return self._fail("empty domain name", Reply.GENERAL_FAILURE)
        else:
            return self._fail(f"unsupported address type {atyp}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        (port,) = struct.unpack("!H", buf[end : end + 2])
        self.leftover = buf[end + 2 :]
        self._buffer = b""
        self.state = State.AWAITING_REPLY
        return ConnectRequested(host, port, AddressType(atyp))


# -- asyncio adapter --------------------------------------------------------------------------


class Socks5Connect:
    """A CONNECT that the role must answer: :meth:`succeed` with a relay, or :meth:`refuse`."""

    def __init__(self, protocol: Socks5Protocol, request: ConnectRequested) -> None:
        self._protocol = protocol
        self.request = request
        transport = protocol.transport
        assert transport is not None
        self.peername: tuple[str, int] = transport.get_extra_info("peername")[:2]
        self.sockname: tuple[str, int] = transport.get_extra_info("sockname")[:2]

    def succeed(self, relay: Relay, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bool:
        """Send REP 0x00 and splice the client into ``relay`` (its downstream side).

        Returns False (and fails the relay) when the client left while we were connecting.
        """
        p = self._protocol
        if p.lost or p.transport is None:
            relay.fail()
            return False
        p.handshake.reply(Reply.SUCCEEDED, bound)
        p.transport.write(p.handshake.data_to_send())
        p.transport.resume_reading()
        relay.adopt(relay.downstream, p.transport, p.handshake.leftover)
        if p.eof:
            relay.downstream.eof_received()
        return True

    def refuse(self, reply: Reply) -> None:
        p = self._protocol
        if p.lost or p.transport is None:
            return
        p.handshake.reply(reply)
        p.transport.write(p.handshake.data_to_send())
        p.transport.close()


class Socks5Protocol(asyncio.Protocol):
    """Runs the handshake on an accepted connection, then hands it to ``on_connect``.

    ``on_connect`` is called once per connection (synchronously; it starts whatever async
    work it needs). Reading pauses while the role decides: early data waits in the kernel.
    ``on_failed(reason, peername)`` reports a broken handshake (for logs and metrics).
    """

    def __init__(
        self,
        on_connect: Callable[[Socks5Connect], None],
        on_failed: Callable[[str, tuple[str, int] | None], None] | None = None,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self.handshake = Socks5Server()
        self._on_connect = on_connect
        self._on_failed = on_failed
        self._timeout_s = handshake_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it
        self.transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        events = self.handshake.receive_data(data)
        out = self.handshake.data_to_send()
        if out:
            self.transport.write(out)
        for event in events:
            self._cancel_timer()
            if isinstance(event, HandshakeFailed):
                self._report(event.reason)
                self.transport.close()
            else:
                self.transport.pause_reading()
                self._on_connect(Socks5Connect(self, event))

    def eof_received(self) -> bool:
        if self.handshake.state in (State.GREETING, State.REQUEST):
            self._report("client closed during handshake")
            return False
        self.eof = True  # half-closed after CONNECT: the relay delivers EOF once spliced
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._cancel_timer()

    def _timed_out(self) -> None:
        self._timer = None
        if self.handshake.state in (State.GREETING, State.REQUEST) and self.transport is not None:
            self._report("handshake timeout")
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _report(self, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("socks5 refused reason=%r peer=%s", reason, peer)
        if self._on_failed is not None:
            self._on_failed(reason, peer[:2] if peer else None)
