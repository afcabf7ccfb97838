"""``x-request-id``: kept if the client sent one, else a fresh UUID4, as Envoy's HTTP connection
manager does (``generate_request_id`` default true, ``source/extensions/request_id/uuid``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from waypoint.l7.filter import CONTINUE, Filter, RequestContext, Result
from waypoint.l7.message import RequestHead, get_header


def uuid4() -> str:
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


class RequestId(Filter):
    name = "request-id"

    def __init__(self, generate: Callable[[], str] = uuid4) -> None:
        self._generate = generate

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        rid = get_header(head.headers, b"x-request-id")
        if rid is None:
            value = self._generate()
            head.headers.append((b"x-request-id", value.encode()))
            ctx.request_id = value
        else:
            ctx.request_id = rid.decode("latin-1")
        return CONTINUE
