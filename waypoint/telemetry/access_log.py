"""One log line per finished connection, with the identities on both ends, as ztunnel's
``connection complete`` access log (``ZT:src/proxy/metrics.rs`` ``ConnectionResult``): the
quickest way for a user to see that mutual TLS carried their traffic and who talked to whom."""

from __future__ import annotations

import logging

from waypoint.telemetry.metrics import LABEL_NAMES, UNKNOWN

log = logging.getLogger("waypoint.access")

_FIELDS = (
    ("src.workload", "source_workload"),
    ("src.namespace", "source_workload_namespace"),
    ("src.identity", "source_principal"),
    ("dst.service", "destination_service"),
    ("dst.workload", "destination_workload"),
    ("dst.namespace", "destination_workload_namespace"),
    ("dst.identity", "destination_principal"),
)
_INDEX = {name: i for i, name in enumerate(LABEL_NAMES)}


def connection_complete(label_values: tuple[str, ...], bytes_up: int, bytes_down: int, duration_s: float) -> None:
    """Log a finished connection (INFO on logger ``waypoint.access``)."""
    if not log.isEnabledFor(logging.INFO):
        return
    parts = [f'direction="{"inbound" if label_values[_INDEX["reporter"]] == "destination" else "outbound"}"']
    for key, label in _FIELDS:
        value = label_values[_INDEX[label]]
        if value != UNKNOWN:
            parts.append(f'{key}="{value}"')
    parts.append(f'security="{label_values[_INDEX["connection_security_policy"]]}"')
    parts.append(f"bytes_sent={bytes_up} bytes_recv={bytes_down} duration={duration_s * 1000:.0f}ms")
    log.info("connection complete %s", " ".join(parts))
