"""Every access to ``h2`` internals lives here. Pinned: h2 4.4.x (4.4.1 read), hyperframe 6.1.

Why we reach in at all (envoy-peer.md, "What made the difference" item 6): DATA frames of
established tunnels bypass h2 entirely (our own framing both ways), so h2's *outbound* window
counters must be debited by hand to stay in step with what we framed; and h2 evaluates
``repr(frame)`` for a trace line on every received frame, eagerly, even with its no-op logger;
and ``data_to_send`` allocates even when nothing is queued, so we peek at its buffer first.

The contract test ``tests/hbone/test_h2_contract.py`` fails if any of this moves.
"""

from __future__ import annotations

import builtins
from typing import Any

import h2.connection
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame

H2_VERSIONS_READ = ("4.4.",)


def _cheap_repr(obj: object) -> str:
    """Stands in for ``repr`` inside ``h2.connection`` only: hyperframe's ``Frame.__repr__``
    hex-dumps the payload, which cost 19% of a terminating process's CPU (envoy-peer.md)."""
    if isinstance(obj, Frame):
        return f"{type(obj).__name__}(stream_id={obj.stream_id})"
    return builtins.repr(obj)


def quiet_frame_repr() -> None:
    """Shadow the builtin ``repr`` in ``h2.connection``'s globals (its one ``repr(frame)`` call,
    ``H2Connection._receive_frame``). Idempotent; affects only that trace line's text."""
    h2.connection.repr = _cheap_repr  # type: ignore[attr-defined]


def new_h2(client_side: bool, local: dict[SettingCodes, int]) -> H2Connection:
    """An H2Connection with our local SETTINGS, preface queued.

    Inbound header validation is off: we validate the CONNECT ourselves so that a malformed
    *request* ends only its own stream (h2 would GOAWAY the whole connection).
    """
    config = H2Configuration(
        client_side=client_side,
        header_encoding="utf-8",
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = H2Connection(config=config)
    conn.local_settings = Settings(client=client_side, initial_values=dict(local))
    conn.initiate_connection()
    return conn


def debit_send_window(conn: H2Connection, stream_id: int, n: int) -> None:
    """Record ``n`` bytes of DATA we framed ourselves against h2's outbound windows."""
    conn.outbound_flow_control_window -= n
    conn.streams[stream_id].outbound_flow_control_window -= n


def send_window(conn: H2Connection, stream_id: int) -> int:
    """Bytes the peer lets us send now on ``stream_id`` (0 if h2 no longer knows the stream)."""
    stream = conn.streams.get(stream_id)
    if stream is None:
        return 0
    return min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)


def take_pending_output(conn: H2Connection) -> bytes:
    """h2's queued output, or ``b""`` without calling ``data_to_send`` when nothing is queued:
    we ask after every read and every send, and ``data_to_send`` allocates a ``bytes`` and a
    fresh ``bytearray`` each time even when empty (4 calls per relayed message)."""
    if not conn._data_to_send:
        return b""
    return conn.data_to_send()


def is_closed(conn: H2Connection) -> bool:
    """h2 moved to CLOSED (it sent a GOAWAY itself after a protocol error)."""
    return bool(conn.state_machine.state == ConnectionState.CLOSED)


def highest_inbound_stream_id(conn: H2Connection) -> int:
    return int(conn.highest_inbound_stream_id)


def stream_attrs(conn: H2Connection, stream_id: int) -> Any:
    """The H2Stream (for the contract test only)."""
    return conn.streams[stream_id]
