"""``x-forwarded-for`` and ``x-forwarded-proto`` as Envoy's connection manager sets them with
``use_remote_address`` (``source/common/http/conn_manager_utility.cc`` ``mutateRequestHeaders``):
the downstream address is appended to the list, and the protocol is the downstream scheme."""

from __future__ import annotations

from waypoint.l7.filter import CONTINUE, Filter, RequestContext, Result
from waypoint.l7.message import RequestHead, has_header, set_header

_SCHEMES = {"http": b"http", "https": b"https"}


class Forwarded(Filter):
    name = "forwarded"

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        headers = head.headers
        info = ctx.info
        ip = info.peer_ip
        if ip is not None:
            if not has_header(headers, b"x-forwarded-for"):
                headers.append((b"x-forwarded-for", ip))
            else:
                for i, (n, v) in enumerate(headers):
                    if n == b"x-forwarded-for":
                        headers[i] = (n, v + b"," + ip)
                        break
        scheme = _SCHEMES.get(info.scheme) or info.scheme.encode()
        set_header(headers, b"x-forwarded-proto", scheme)
        return CONTINUE
