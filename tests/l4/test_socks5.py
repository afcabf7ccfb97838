"""SOCKS5 handshake tables (RFC 1928 §3-§6), bytes in, events and replies out, no sockets."""

from __future__ import annotations

import struct

import pytest

from waypoint.l4.socks5 import (
    AddressType,
    ConnectRequested,
    HandshakeFailed,
    Reply,
    Socks5Server,
    State,
    encode_reply,
)

GREETING = b"\x05\x01\x00"


def request(atyp: int, addr: bytes, port: int, cmd: int = 1) -> bytes:
    return bytes((5, cmd, 0, atyp)) + addr + struct.pack("!H", port)


def domain(name: bytes) -> bytes:
    return bytes((len(name),)) + name


@pytest.mark.parametrize(
    ("req", "host", "port", "atyp"),
    [
        (request(1, bytes((127, 0, 8, 5)), 8080), "127.0.8.5", 8080, AddressType.IPV4),
        (request(3, domain(b"echo.default.svc.cluster.local"), 80), "echo.default.svc.cluster.local", 80,
         AddressType.DOMAIN),
        (request(3, domain(b"echo.default"), 9090), "echo.default", 9090, AddressType.DOMAIN),
        (request(4, bytes(15) + b"\x01", 443), "::1", 443, AddressType.IPV6),
    ],
)
def test_connect_request_parsed(req: bytes, host: str, port: int, atyp: AddressType) -> None:
    server = Socks5Server()
    events = server.receive_data(GREETING + req)
    assert events == [ConnectRequested(host, port, atyp)]
    assert server.data_to_send() == b"\x05\x00"  # method selection only; no reply before the upstream
    assert server.state is State.AWAITING_REPLY


def test_byte_at_a_time_and_early_data_kept() -> None:
    server = Socks5Server()
    data = GREETING + request(1, bytes((10, 0, 0, 1)), 80) + b"GET / HTTP/1.1\r\n"
    events = []
    for i in range(len(data)):
        events += server.receive_data(data[i : i + 1])
    assert events == [ConnectRequested("10.0.0.1", 80, AddressType.IPV4)]
    assert server.leftover == b"GET / HTTP/1.1\r\n"


def test_success_reply_only_when_told() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + request(1, bytes(4), 1))
    server.data_to_send()
    server.reply(Reply.SUCCEEDED, ("127.0.8.1", 4242))
    assert server.data_to_send() == b"\x05\x00\x00\x01\x7f\x00\x08\x01" + struct.pack("!H", 4242)
    assert server.state is State.ESTABLISHED
    with pytest.raises(RuntimeError):
        server.reply(Reply.SUCCEEDED)


@pytest.mark.parametrize(
    "code",
    [Reply.GENERAL_FAILURE, Reply.NOT_ALLOWED, Reply.HOST_UNREACHABLE, Reply.CONNECTION_REFUSED],
)
def test_failure_replies_carry_code(code: Reply) -> None:
    server = Socks5Server()
    server.receive_data(GREETING + request(3, domain(b"nope.default"), 80))
    server.data_to_send()
    server.reply(code)
    assert server.data_to_send() == bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))
    assert server.state is State.FAILED


@pytest.mark.parametrize(
    ("data", "reply", "sent"),
    [
        (GREETING + request(1, bytes(4), 80, cmd=2), Reply.COMMAND_NOT_SUPPORTED, b"\x05\x00"),  # BIND
        (GREETING + request(1, bytes(4), 80, cmd=3), Reply.COMMAND_NOT_SUPPORTED, b"\x05\x00"),  # UDP
        (GREETING + request(9, bytes(4), 80), Reply.ADDRESS_TYPE_NOT_SUPPORTED, b"\x05\x00"),
        (GREETING + b"\x04\x01\x00\x01" + bytes(6), Reply.GENERAL_FAILURE, b"\x05\x00"),
        (GREETING + request(3, domain(b""), 80), Reply.GENERAL_FAILURE, b"\x05\x00"),
        (GREETING + request(3, domain("é".encode()), 80), Reply.GENERAL_FAILURE, b"\x05\x00"),
    ],
)
def test_request_refusals(data: bytes, reply: Reply, sent: bytes) -> None:
    server = Socks5Server()
    events = server.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], HandshakeFailed)
    assert events[0].reply is reply
    assert server.data_to_send() == sent + encode_reply(reply)
    assert server.state is State.FAILED
    assert server.receive_data(b"more") == []


def test_no_acceptable_method() -> None:
    server = Socks5Server()
    events = server.receive_data(b"\x05\x01\x02")  # username/password only
    assert isinstance(events[0], HandshakeFailed) and events[0].reply is None
    assert server.data_to_send() == b"\x05\xff"


def test_not_socks5_gets_no_reply() -> None:
    server = Socks5Server()
    events = server.receive_data(b"GET / HTTP/1.1\r\n")
    assert isinstance(events[0], HandshakeFailed)
    assert server.data_to_send() == b""


def test_incomplete_yields_nothing() -> None:
    server = Socks5Server()
    assert server.receive_data(b"\x05") == []
    assert server.receive_data(b"\x02\x00") == []  # 2 methods announced, 1 given
    assert server.receive_data(b"\x01" + b"\x05\x01\x00\x03\x0a") == []
    assert server.data_to_send() == b"\x05\x00"
