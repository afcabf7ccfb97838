"""The waypoint's filter chain order: Istio's waypoint HCM order (listener_waypoint.go
``buildWaypointHTTPFilters``): authorization first, telemetry last before the router."""

from __future__ import annotations

from waypoint.l7.filter import Filter
from waypoint.l7.filters.forwarded import Forwarded
from waypoint.l7.filters.request_id import RequestId
from waypoint.roles.waypoint import chain_order


class Named(Filter):
    def __init__(self, name: str) -> None:
        self.name = name


def test_authorization_first_telemetry_last_configured_between() -> None:
    order = chain_order([Named("ext_authz"), Named("rbac")], [Named("configured")], [Named("extra")], [Named("stats")])
    names = [f.name for f in order]
    assert names[:2] == ["ext_authz", "rbac"]
    assert isinstance(order[2], RequestId) and isinstance(order[3], Forwarded)
    assert names[4:] == ["configured", "extra", "stats"]
