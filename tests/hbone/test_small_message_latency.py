"""A small message is never held back: TCP_NODELAY on both ends of an HBONE connection, a
stream write handed to TLS within one loop turn, and a read of DATA alone schedules no flush
(the L4 bench's 64-byte round trip, bench/README.md; Nagle would add up to 40 ms per hop)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tests.hbone.test_tls_loopback import Mesh, Sink, until
from waypoint.hbone.connection import HboneConnection


def _owner(stream: Any) -> Any:
    """The HboneConnectionProtocol carrying a stream (its TLS transport holds the socket)."""
    return stream._owner


def _nodelay(owner: Any) -> int:
    sock = owner.transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


async def test_both_hbone_sockets_have_tcp_nodelay(mesh: Mesh) -> None:
    stream, sink = await mesh.open()
    stream.write(b"x")
    await until(lambda: bytes(sink.received) == b"x")
    assert _nodelay(_owner(stream)) == 1  # pool's dialled socket
    server_stream = mesh.accepted[0].transport  # type: ignore[attr-defined]
    assert _nodelay(_owner(server_stream)) == 1  # server's accepted (dup'd) socket
    stream.close()


async def test_small_write_is_handed_to_tls_within_one_loop_turn(mesh: Mesh) -> None:
    stream, sink = await mesh.open()
    owner = _owner(stream)
    stream.write(b"p" * 64)
    await asyncio.sleep(0)  # one turn: the coalesced flush has run, nothing waits for a timer
    assert not owner.conn.has_output()
    await until(lambda: bytes(sink.received) == b"p" * 64)
    stream.close()


async def test_a_read_of_data_alone_schedules_no_flush(mesh: Mesh) -> None:
    seen: list[bool] = []

    class Probe(Sink):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            owner = _owner(self.transport)
            # runs after the rest of this read is processed, before any flush it scheduled
            asyncio.get_running_loop().call_soon(lambda: seen.append(owner._flush_scheduled))

    stream, _sink = await mesh.open(proto=Probe())
    await asyncio.sleep(0.01)  # settle SETTINGS ACKs and the answer's own flushes
    stream.write(b"ping")
    await until(lambda: bool(seen))
    assert seen == [False]
    stream.close()


def test_has_output_only_when_something_is_queued() -> None:
    client, server = HboneConnection(True), HboneConnection(False)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    sid = client.open_tunnel("10.0.0.1:80")
    server.receive_data(client.data_to_send())
    server.accept(sid)
    client.receive_data(server.data_to_send())
    client.data_to_send()
    server.data_to_send()
    assert not server.has_output()
    client.send(sid, b"p" * 64)
    server.receive_data(client.data_to_send())
    server.consumed(sid, 64)
    assert not server.has_output()  # DATA read and consumed: nothing to answer
    server.consumed(sid, server.settings.stream_window)
    assert server.has_output()  # past half a window: a WINDOW_UPDATE is due
