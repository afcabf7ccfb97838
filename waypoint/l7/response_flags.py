"""Envoy's response flags: why a request ended the way it did, as telemetry and access logs show it.

The router sets them on the :class:`~waypoint.l7.filter.RequestContext` where it decides them (no
healthy endpoint, connect failure, timeout, retries exhausted); the stats filter reads
``ctx.response_flags`` into Istio's ``response_flags`` label. Several flags are joined with ``,`` in
Envoy's own order (``envoy/stream_info/stream_info.h`` ``CoreResponseFlag``, printed by
``source/common/stream_info/utility.cc`` ``ResponseFlagUtils::toShortString``), so ``UF,URX`` reads
the same here as in Envoy. ``-`` means none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from waypoint.l7.filter import RequestContext

NONE = "-"
NO_HEALTHY_UPSTREAM = "UH"
UPSTREAM_REQUEST_TIMEOUT = "UT"
LOCAL_RESET = "LR"
UPSTREAM_REMOTE_RESET = "UR"
UPSTREAM_CONNECTION_FAILURE = "UF"
UPSTREAM_CONNECTION_TERMINATION = "UC"
UPSTREAM_OVERFLOW = "UO"
NO_ROUTE_FOUND = "NR"
DOWNSTREAM_CONNECTION_TERMINATION = "DC"
UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"

# Envoy's CoreResponseFlag order (the ones we can set, and their neighbours for a stable sort).
_ORDER = {flag: i for i, flag in enumerate(
    ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX")
)}


def add_flag(ctx: RequestContext, flag: str) -> None:
    """Add ``flag`` to the request's flags (once), keeping Envoy's order."""
    current = ctx.response_flags
    if current == NONE:
        ctx.response_flags = flag
        return
    flags = current.split(",")
    if flag in flags:
        return
    flags.append(flag)
    flags.sort(key=lambda f: _ORDER.get(f, len(_ORDER)))
    ctx.response_flags = ",".join(flags)


def reset_flag(reason: str) -> str:
    """The flag for an upstream reset reason as our clients word it (Envoy
    ``streamResetReasonToResponseFlag``): connect failure ``UF``, connection closed ``UC``, stream
    reset by the endpoint ``UR``, local overflow ``UO``, else a local reset ``LR``."""
    if "connection failure" in reason:
        return UPSTREAM_CONNECTION_FAILURE
    if "connection termination" in reason:
        return UPSTREAM_CONNECTION_TERMINATION
    if "remote" in reason and "reset" in reason:
        return UPSTREAM_REMOTE_RESET
    if "overflow" in reason:
        return UPSTREAM_OVERFLOW
    return LOCAL_RESET
