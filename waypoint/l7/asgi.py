"""The ASGI face: a plain ASGI middleware (starlette style) run as a filter.

The middleware wraps an inner app that stands for "the rest of the chain". It may answer by itself
(a local reply: the request goes no further) or call the inner app, which resumes the chain and
hands the upstream's response head back through the middleware's ``send`` (so it may change the
status or headers on the way out). Bodies do not go through ASGI: they stream through the chain
natively; ``receive()`` yields an empty body. What the middleware sees is the request head.

Cost: a Task per request (envoy-peer.md measured ~8 µs for that alone); measure before putting
one on a hot route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from waypoint.l7.filter import CONTINUE, STOP, Filter, LocalReply, RequestContext, Result
from waypoint.l7.message import RequestHead, ResponseHead

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CTX_KEY = "waypoint.context"


class _Call:
    """One request's trip through the middleware."""

    __slots__ = ("body", "ctx", "done", "passed", "replied", "response", "start", "task")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.passed = False  # the middleware called the inner app
        self.replied = False
        self.start: Message | None = None
        self.body: list[bytes] = []
        self.response: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


def build_scope(ctx: RequestContext, head: RequestHead) -> Scope:
    path, _, query = head.path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": head.method,
        "scheme": head.scheme,
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(b"host", head.authority.encode("latin-1")), *head.headers],
        "client": ctx.info.peer_address,
        "server": ctx.info.destination,
        "extensions": {_CTX_KEY: ctx},
    }


class AsgiFilter(Filter):
    """Runs ``middleware(inner_app)`` for each request. ``middleware`` is e.g. a starlette
    middleware class with its options bound (``functools.partial(Cls, **options)``)."""

    name = "asgi"

    def __init__(self, middleware: Callable[[ASGIApp], ASGIApp], name: str = "asgi") -> None:
        self.name = name
        self._key = f"asgi:{name}:{id(self)}"
        self._app = middleware(self._inner)

    # ---- request side ----
    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        call = _Call(ctx)
        ctx.state[self._key] = call
        call.task = asyncio.get_running_loop().create_task(self._run(call, build_scope(ctx, head)))
        return STOP

    async def _run(self, call: _Call, scope: Scope) -> None:
        sent_body = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await call.done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            self._outer_send(call, message)

        try:
            await self._app(scope, receive, send)
        except Exception as exc:  # a failing middleware answers 500, as an ASGI server would
            if not call.passed and not call.replied:
                call.replied = True
                call.ctx.send_local_reply(LocalReply(500, b"Internal Server Error", details=f"asgi: {exc!r}"))

    def _outer_send(self, call: _Call, message: Message) -> None:
        kind = message["type"]
        if call.passed:
            if kind == "http.response.start" and call.response.done():
                head = call.response.result()
                head.status = int(message["status"])
                head.headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
                call.ctx.resume()  # the response continues down the chain
            return
        if kind == "http.response.start":
            call.start = message
        elif kind == "http.response.body" and call.start is not None:
            call.body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False) and not call.replied:
                call.replied = True
                headers = tuple(
                    (bytes(n).lower(), bytes(v))
                    for n, v in call.start.get("headers", ())
                    if bytes(n).lower() not in (b"content-length", b"content-type")
                )
                reply = LocalReply(int(call.start["status"]), b"".join(call.body), headers, details="asgi")
                call.ctx.send_local_reply(reply)

    async def _inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The rest of the chain, as an ASGI app: resume the request, then relay the response head."""
        ctx: RequestContext = scope["extensions"][_CTX_KEY]
        call: _Call = ctx.state[self._key]
        head = ctx.request
        headers = [(bytes(n).lower(), bytes(v)) for n, v in scope["headers"]]
        head.headers = [h for h in headers if h[0] != b"host"]
        query = scope.get("query_string", b"")
        head.path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        call.passed = True
        ctx.resume()
        response = await call.response
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ---- response side ----
    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        call: _Call | None = ctx.state.get(self._key)
        if call is None or not call.passed or call.response.done():
            return CONTINUE
        call.response.set_result(head)
        return STOP

    def on_stream_complete(self, ctx: RequestContext) -> None:
        call: _Call | None = ctx.state.get(self._key)
        if call is None:
            return
        call.done.set()
        if call.task is not None and not call.task.done():
            call.task.cancel()
