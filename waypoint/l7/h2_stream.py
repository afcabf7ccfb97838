"""One HTTP/2 stream's state as :class:`~waypoint.l7.h2_session.H2Session` keeps it (RFC 9113 §5.1).

Why so little: a request/response endpoint with push disabled only ever sees "open",
"half-closed (local)", "half-closed (remote)" and "closed"; two booleans say which. A closed
stream is simply absent from the session's table, and "idle" is decided from stream ids (§5.1.1).
The rest is flow control (§5.2) and what §8.1 checks across frames (heads, content-length).
"""

from __future__ import annotations


class H2Stream:
    """Plain slots: the session reads and writes them on every frame."""

    __slots__ = (
        "expect", "final_head", "final_sent", "head_request", "local_open", "received", "recv_window",
        "remote_open", "send_window", "sid", "unacked",
    )  # fmt: skip

    def __init__(self, sid: int, recv_window: int, send_window: int, expect: int) -> None:
        self.sid = sid
        self.local_open = True  # we may still send (no END_STREAM from us yet)
        self.remote_open = True  # the peer may still send
        self.final_head = True  # the peer's final head arrived (False on our requests until the response)
        self.final_sent = False  # we sent our final head (True on our requests from the start)
        self.head_request = False  # our request was HEAD: its response carries no body
        self.recv_window = recv_window  # what the peer may still send us
        self.unacked = 0  # consumed, not yet granted back
        self.send_window = send_window  # what we may still send (may go negative, §6.9.2)
        self.expect = expect  # content-length the peer declared, -1 if none
        self.received = 0  # DATA payload octets received (padding excluded)
