"""Small loopback backends for the far end of a tunnel: a TCP echo and an HTTP/1.1 header echo.

The HTTP backend answers every request with 200 and a JSON body describing what arrived (method,
path, headers, body length), so a test can see what a proxy in the middle added or routed.
Keep-alive, httptools (llhttp) for parsing; not meant for benchmarks.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support.apps import HttpApp, tcp_echo


async def start_tcp_echo(host: str, port: int = 0) -> asyncio.Server:
    """A TCP server that sends back every byte it gets; the port is ``server.sockets[0]``."""
    return await asyncio.start_server(tcp_echo, host, port)


class _HeaderEcho(HttpApp):
    def on_message_complete(self) -> None:
        seen: dict[str, Any] = {
            "method": self.parser.get_method().decode(),
            "path": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_length": self.n,
            "peer": self.t.get_extra_info("peername")[0],
        }
        body = json.dumps(seen).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        self.t.write(head.encode() + body)
        if not self.parser.should_keep_alive():
            self.t.close()


async def start_http_echo(host: str, port: int = 0) -> asyncio.Server:
    """An HTTP/1.1 server answering every request with the JSON description of that request."""
    return await asyncio.get_running_loop().create_server(_HeaderEcho, host, port)
