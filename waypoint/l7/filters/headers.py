"""Configured header manipulation on requests and responses (Envoy ``request_headers_to_add`` /
``response_headers_to_remove``, Gateway API HTTPHeaderFilter semantics: set, add, remove)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waypoint.l7.filter import CONTINUE, Filter, RequestContext, Result
from waypoint.l7.message import RequestHead, ResponseHead, apply_mutation
from waypoint.l7.routing.decision import HeaderMutation


def _mutation(spec: Mapping[str, Any] | None) -> HeaderMutation:
    spec = spec or {}
    return HeaderMutation(
        set=tuple((str(k), str(v)) for k, v in dict(spec.get("set", {})).items()),
        add=tuple((str(k), str(v)) for k, v in dict(spec.get("add", {})).items()),
        remove=tuple(str(n) for n in spec.get("remove", ())),
    )


class HeaderManipulation(Filter):
    """Applies one mutation to every request and one to every response."""

    name = "headers"

    def __init__(self, request: HeaderMutation | None = None, response: HeaderMutation | None = None) -> None:
        self.request = request or HeaderMutation()
        self.response = response or HeaderMutation()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HeaderManipulation:
        """``{request: {set: {k: v}, add: {k: v}, remove: [k]}, response: {...}}``."""
        return cls(_mutation(config.get("request")), _mutation(config.get("response")))

    def on_request_headers(self, ctx: RequestContext, head: RequestHead, end_stream: bool) -> Result:
        apply_mutation(head.headers, self.request)
        return CONTINUE

    def on_response_headers(self, ctx: RequestContext, head: ResponseHead, end_stream: bool) -> Result:
        apply_mutation(head.headers, self.response)
        return CONTINUE
