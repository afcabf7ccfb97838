"""Contract for the h2 internals ``waypoint.hbone.h2compat`` touches (pinned h2 4.4.x).

If h2 moves any of these, this fails before the tunnels silently stall or mis-count windows.
"""

from __future__ import annotations

import h2
import h2.connection

from waypoint.hbone import h2compat
from waypoint.hbone.connection import HboneConnection


def test_h2_version_is_the_one_read() -> None:
    assert h2.__version__.startswith(h2compat.H2_VERSIONS_READ)


def test_receive_frame_reprs_through_the_module_global_we_shadow() -> None:
    code = h2.connection.H2Connection._receive_frame.__code__
    assert "repr" in code.co_names  # a global lookup: h2.connection.repr wins over the builtin
    h2compat.quiet_frame_repr()
    assert h2.connection.repr is h2compat._cheap_repr  # type: ignore[attr-defined]


def test_outbound_window_attributes_move_with_our_debit() -> None:
    client = HboneConnection(client_side=True)
    server = HboneConnection(client_side=False)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    sid = client.open_tunnel("10.0.0.1:80")
    server.receive_data(client.data_to_send())
    server.accept(sid)
    client.receive_data(server.data_to_send())
    conn = client._h2
    assert isinstance(conn.outbound_flow_control_window, int)
    stream = h2compat.stream_attrs(conn, sid)
    assert isinstance(stream.outbound_flow_control_window, int)
    before = conn.local_flow_control_window(sid)  # h2's public view of the same counters
    assert client.send(sid, b"x" * 1000) == 1000
    assert conn.local_flow_control_window(sid) == before - 1000
    assert h2compat.send_window(conn, sid) == before - 1000
    assert not h2compat.is_closed(conn)
    assert h2compat.highest_inbound_stream_id(server._h2) == sid


def test_pending_output_peek_sees_exactly_what_data_to_send_returns() -> None:
    conn = h2compat.new_h2(client_side=True, local={})
    queued = bytes(conn._data_to_send)  # the preface and SETTINGS, queued at start
    assert queued
    assert h2compat.take_pending_output(conn) == queued
    assert h2compat.take_pending_output(conn) == b""
    conn.ping(b"12345678")
    assert h2compat.take_pending_output(conn)[3] == 6  # a PING frame (RFC 9113 §6.7)
    assert conn.data_to_send() == b""
