"""gRPC end to end: a real grpcio client and server with our proxy between them (inner h2c both ways).

grpcio runs its own threads, so calls are made with ``asyncio.to_thread`` while the proxy serves
on the test's loop. Methods are generic (bytes in, bytes out): no generated code needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from waypoint.l7.routing.decision import DecisionKind, RouteDecision

from .support import BACKEND_IP, PROXY_IP, StaticResolver, start_proxy

pytestmark = pytest.mark.timeout(60)
_ident = (lambda b: b, lambda b: b)


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"item-%d" % i


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-detail", "why"), ("x-bin-bin", b"\x00\x01")))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today: " + request.decode())
    raise AssertionError("abort raises")


@pytest.fixture
def grpc_backend() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, *_ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, *_ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, *_ident),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail, *_ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port(f"{BACKEND_IP}:0")
    server.start()
    yield port
    server.stop(None)


def _call(port: int, fn: Any) -> Any:
    with grpc.insecure_channel(f"{PROXY_IP}:{port}") as channel:
        return fn(channel)


async def call(port: int, fn: Any) -> Any:
    return await asyncio.to_thread(_call, port, fn)


async def test_unary_server_streaming_and_bidi(grpc_backend: int) -> None:
    proxy = await start_proxy(grpc_backend)
    try:

        def run(ch: grpc.Channel) -> tuple[Any, ...]:
            unary = ch.unary_unary("/test.Echo/Unary", *_ident)
            stream = ch.unary_stream("/test.Echo/ServerStream", *_ident)
            bidi = ch.stream_stream("/test.Echo/Bidi", *_ident)
            one, call = unary.with_call(b"hi", metadata=(("x-req", "1"),))
            items = list(stream(b"25"))
            upper = list(bidi(iter([b"a", b"bb", b"ccc" * 10000])))
            return one, call.code(), items, upper

        one, code, items, upper = await call(proxy.port, run)
        assert (one, code) == (b"echo:hi", grpc.StatusCode.OK)
        assert items == [b"item-%d" % i for i in range(25)]
        assert upper == [b"A", b"BB", b"CCC" * 10000]
        assert proxy.pool.h2.opened == 1  # three RPCs, one upstream connection
    finally:
        await proxy.close()


async def test_error_status_message_and_trailing_metadata_pass_through(grpc_backend: int) -> None:
    proxy = await start_proxy(grpc_backend)
    try:

        def run(ch: grpc.Channel) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/test.Echo/Fail", *_ident)(b"x")
            return info.value

        err: Any = await call(proxy.port, run)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "not today: x"
        trailers = dict(err.trailing_metadata())
        assert trailers["x-detail"] == "why"
        assert trailers["x-bin-bin"] == b"\x00\x01"
    finally:
        await proxy.close()


@pytest.mark.parametrize(
    ("decision", "code"),
    [
        (None, grpc.StatusCode.UNAVAILABLE),  # no endpoint: 503 → 14 (Envoy httpToGrpcStatus)
        (RouteDecision(DecisionKind.LOCAL, status=404, body=b"no route"), grpc.StatusCode.UNIMPLEMENTED),
        (RouteDecision(DecisionKind.LOCAL, status=403, body=b"denied"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_local_reply_is_trailers_only_grpc_status(decision: RouteDecision | None, code: grpc.StatusCode) -> None:
    resolver = StaticResolver({"/test.": decision}) if decision is not None else None
    proxy = await start_proxy(None, resolver=resolver)
    try:

        def run(ch: grpc.Channel) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/test.Echo/Unary", *_ident)(b"x", timeout=10)
            return info.value

        err: Any = await call(proxy.port, run)
        assert err.code() == code
        assert err.details() == (decision.body.decode() if decision else "no healthy upstream")
    finally:
        await proxy.close()
