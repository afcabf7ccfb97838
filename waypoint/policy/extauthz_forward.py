"""A loopback door into the mesh for the ext-authz clients: each in-mesh provider endpoint gets a
listener on ``127.0.0.1:0`` whose accepted connections are relayed through the waypoint's connector.

Why: istiod gives the waypoint's ext_authz cluster (``outbound|<port>||<provider host>``,
``IS:pilot/pkg/security/authz/builder/extauthz.go`` ``LookupCluster``) as one of its ordinary
outbound clusters (``IS:pilot/pkg/model/push_context.go`` ``extraServicesForProxy`` adds the
``envoyExtAuthzHttp``/``envoyExtAuthzGrpc`` services to the waypoint's outbound set,
``pilot/pkg/networking/core/cluster.go`` ``case model.Waypoint``), so a check to an ambient pod
leaves as HBONE (``connect_originate``: ``<pod IP>:15008``, ``:authority <pod IP>:<target port>``,
the waypoint's certificate, the pod's identity as the only SAN), and plain TCP only to an endpoint
outside the mesh. Plain TCP to an ambient pod would land on its ztunnel's 15006, which
PeerAuthentication STRICT closes.

httpx and grpc.aio open their own sockets (grpc's C core cannot be given a transport), so the
clients dial this listener and the bytes go on through the connector (``HboneConnector``: the
pooled HBONE connection to the pod's ztunnel, one CONNECT stream per client connection). The
relay is the L4 one (:mod:`waypoint.l4.relay`). One listener per endpoint keeps each client's own
per-request round robin over endpoints; the clients pool their connections, so the relay and the
CONNECT are paid once per connection, not per check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from waypoint.l4.relay import Relay
from waypoint.l7.upstream import UpstreamTarget

log = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.BaseProtocol)

LOOPBACK = "127.0.0.1"


class Connector(Protocol):
    """The waypoint's upstream seam (``waypoint.roles.hbone_connector.HboneConnector``)."""

    async def connect(
        self, target: UpstreamTarget, protocol_factory: Callable[[], P]
    ) -> tuple[asyncio.Transport, P]: ...


class Forwarder:
    """``127.0.0.1:<port>`` -> ``target`` through ``connector``, one relay per accepted connection.

    The socket is bound and listening from construction (the clients may be pointed at
    :attr:`address` at once; the kernel queues what connects before :meth:`serve`)."""

    def __init__(self, connector: Connector, target: UpstreamTarget) -> None:
        self.target = target
        self._connector = connector
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(128)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._server: asyncio.AbstractServer | None = None
        self._relays: set[Relay] = set()
        self._dials: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted so far (config dump, tests)

    async def serve(self) -> None:
        """Start accepting (idempotent; the first check calls it)."""
        if self._server is None:
            self._server = await asyncio.get_running_loop().create_server(self._accept, sock=self._sock)

    def _accept(self) -> asyncio.BaseProtocol:
        relay = Relay(self._relays.discard, on_accept=self._dial_later)
        self._relays.add(relay)
        self.connections += 1
        return relay.downstream

    def _dial_later(self, relay: Relay, _transport: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._dial(relay))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(self, relay: Relay) -> None:
        target = self.target
        try:
            await self._connector.connect(target, lambda: relay.upstream)
        except (OSError, TimeoutError) as exc:  # the client sees its connection closed: a check error
            log.info("ext-authz provider %s:%d unreachable: %s", target.address, target.port, exc)
            relay.fail(exc)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        else:
            self._sock.close()
        for task in list(self._dials):
            task.cancel()
        for relay in list(self._relays):  # the client closed its side first: finish with a FIN, not a reset
            transport = relay.downstream.transport
            if transport is not None:
                transport.close()
            else:
                relay.abort()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
