"""The project's error tree. Each error says what it becomes on the wire.

Translated once at each boundary (the asyncio edges), never raised through protocol code
as a way to answer a request: a rejection is a value there.
"""

from __future__ import annotations


class WaypointError(Exception):
    """Root of every error this package raises on purpose."""


class ManifestError(WaypointError):
    """A Kubernetes object that cannot be used.

    ``field`` is the dotted path inside the object (``spec.ports[0].port``); the loader adds
    the file and the object's kind/namespace/name before it reports the error.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TunnelError(WaypointError):
    """An HBONE tunnel that could not be opened or was refused.

    ``status`` is the HTTP status it is (or was) answered with: 400 malformed, 401 policy
    deny, 503 no upstream / dial failure, as ztunnel answers (facts digest §1.4).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
