"""Frame-by-frame tests of the sans-I/O HboneConnection: bytes shuttled in memory (h2's
``_xfer_once`` style), frames decoded with hyperframe where the exact wire matters."""

from __future__ import annotations

import h2.exceptions
import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from waypoint.buffers import OwnedBuffer
from waypoint.hbone.connection import HboneConnection, HboneSettings, MiB
from waypoint.hbone.events import (
    ConnectionClosed,
    DataReceived,
    HboneEvent,
    SettingsChanged,
    StreamEnded,
    StreamReset,
    TunnelAnswered,
    TunnelRequested,
    WindowOpened,
)
from waypoint.hbone.fastpath import PREFACE


def frames(data: bytes) -> list[Frame]:
    """Decode a byte string into hyperframe frames (skipping the client preface)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def decoded(block: bytes) -> list[tuple[object, ...]]:
    """An HPACK block as (name, value) tuples (hpack decodes to str by default)."""
    return [tuple(h) for h in hpack.Decoder().decode(block)]


def xfer(src: HboneConnection, dst: HboneConnection) -> list[HboneEvent]:
    return dst.receive_data(src.data_to_send())


def payload(events: list[HboneEvent], sid: int) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def pair(server_settings: HboneSettings | None = None) -> tuple[HboneConnection, HboneConnection]:
    client = HboneConnection(client_side=True)
    server = HboneConnection(client_side=False, settings=server_settings)
    xfer(client, server)
    xfer(server, client)
    xfer(client, server)  # settings ACK
    return client, server


def open_tunnel(client: HboneConnection, server: HboneConnection, authority: str = "10.0.0.1:80") -> int:
    sid = client.open_tunnel(authority)
    [req] = xfer(client, server)
    assert isinstance(req, TunnelRequested) and req.stream_id == sid
    server.accept(sid)
    [answer] = xfer(server, client)
    assert answer == TunnelAnswered(sid, 200, ())
    return sid


def test_start_sends_ztunnel_settings_and_connection_window() -> None:
    """Facts §1.3: 4 MiB stream window, 1 MiB frames, push off, 16 MiB connection window."""
    client = HboneConnection(client_side=True)
    out = client.data_to_send()
    assert out.startswith(PREFACE)
    settings, window = frames(out)
    assert dict(settings.settings) == {  # type: ignore[attr-defined]
        0x1: 4096, 0x2: 0, 0x3: 100, 0x4: 4 * MiB, 0x5: 1 * MiB, 0x6: 65536, 0x8: 0,
    }
    assert isinstance(window, WindowUpdateFrame)
    assert window.stream_id == 0 and window.window_increment == 16 * MiB - 65535


def test_connect_headers_carry_only_method_and_authority() -> None:
    """Envoy and ztunnel send an ordinary CONNECT: no :scheme, :path (facts §1.4)."""
    client, server = pair()
    sid = client.open_tunnel("[fd00::1]:9080", (("baggage", "k8s.namespace.name=ns"),))
    [headers] = frames(client.data_to_send())
    assert isinstance(headers, HeadersFrame) and "END_STREAM" not in headers.flags
    assert decoded(headers.data) == [
        (":method", "CONNECT"), (":authority", "[fd00::1]:9080"), ("baggage", "k8s.namespace.name=ns"),
    ]
    server.receive_data(headers.serialize())
    server.reject(sid, 401)
    events = xfer(server, client)
    assert events[0] == TunnelAnswered(sid, 401, ())
    assert any(isinstance(e, StreamReset | StreamEnded) for e in events[1:])


def test_fast_path_payload_both_ways_and_half_close() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    assert client.send(sid, b"hello") == 5
    events = xfer(client, server)
    assert events == [DataReceived(sid, events[0].data)] and bytes(events[0].data) == b"hello"  # type: ignore[union-attr]
    assert isinstance(events[0].data, memoryview)  # type: ignore[union-attr]
    client.end_stream(sid)
    assert xfer(client, server) == [StreamEnded(sid)]
    # the server's direction keeps flowing after the client half-closed
    assert server.send(sid, b"world") == 5
    server.end_stream(sid)
    events = xfer(server, client)
    assert payload(events, sid) == b"world" and events[-1] == StreamEnded(sid)


def test_data_split_at_max_frame_size_and_window() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    blob = bytes(range(256)) * (20 * 1024)  # 5 MiB > 4 MiB stream window
    sent = client.send(sid, blob)
    assert sent == 4 * MiB
    out = client.data_to_send()
    sizes = [len(f.data) for f in frames(out) if isinstance(f, DataFrame)]
    assert sizes == [1 * MiB] * 4
    # delivered in arbitrary chunks: payload views, byte-exact
    got = []
    for i in range(0, len(out), 100_003):
        got.append(payload(server.receive_data(out[i : i + 100_003]), sid))
    assert b"".join(got) == blob[:sent]
    assert client.send(sid, blob[sent:]) == 0 and client.outbound_window(sid) == 0


def test_window_update_at_half_window_consumed() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    client.send(sid, b"x" * (2 * MiB))
    xfer(client, server)
    server.consumed(sid, 2 * MiB - 1)
    assert server.data_to_send() == b""  # below half of 4 MiB: nothing yet
    server.consumed(sid, 1)
    out = server.data_to_send()
    [update] = frames(out)
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == sid
    assert update.window_increment == 2 * MiB
    assert client.receive_data(out) == [WindowOpened(sid)]
    assert client.outbound_window(sid) == 4 * MiB


def test_connection_window_update_after_half_of_16_mib() -> None:
    client, server = pair()
    sids = [open_tunnel(client, server) for _ in range(3)]
    for sid in sids:
        client.send(sid, b"y" * (3 * MiB))
    xfer(client, server)
    for sid in sids:
        server.consumed(sid, 3 * MiB)
    updates = [f for f in frames(server.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    conn = [f.window_increment for f in updates if f.stream_id == 0]
    assert conn == [9 * MiB]
    assert sorted(f.stream_id for f in updates if f.stream_id) == sids


def test_paused_consumer_closes_the_window() -> None:
    """Unacked data is not re-granted: the sender's window runs dry (backpressure)."""
    client, server = pair()
    sid = open_tunnel(client, server)
    assert client.send(sid, b"z" * (5 * MiB)) == 4 * MiB
    xfer(client, server)
    xfer(server, client)
    assert client.outbound_window(sid) == 0


def test_reset_propagates_and_other_stream_keeps_flowing() -> None:
    client, server = pair()
    a, b = open_tunnel(client, server), open_tunnel(client, server)
    client.reset(a, 8)
    out = client.data_to_send()
    [rst] = frames(out)
    assert isinstance(rst, RstStreamFrame) and (rst.stream_id, rst.error_code) == (a, 8)
    assert server.receive_data(out) == [StreamReset(a, 8)]
    client.send(b, b"still here")
    assert payload(xfer(client, server), b) == b"still here"
    with pytest.raises(ValueError):
        client.send(a, b"gone")


def test_non_connect_gets_400_and_malformed_gets_rst_only_on_its_stream() -> None:
    _client, server = pair()
    enc = hpack.Encoder()
    get = HeadersFrame(1, enc.encode([(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                      (":authority", "a:1")]), flags=["END_HEADERS"])
    assert server.receive_data(get.serialize()) == []
    [answer, rst] = frames(server.data_to_send())
    assert isinstance(answer, HeadersFrame) and "END_STREAM" in answer.flags
    assert decoded(answer.data) == [(":status", "400")]
    assert isinstance(rst, RstStreamFrame) and rst.error_code == 0
    bad = HeadersFrame(3, enc.encode([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")]),
                       flags=["END_HEADERS"])
    ext = HeadersFrame(5, enc.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                      (":path", "/"), (":authority", "a:1")]), flags=["END_HEADERS"])
    assert server.receive_data(bad.serialize() + ext.serialize()) == []
    rsts = frames(server.data_to_send())
    assert [(f.stream_id, f.error_code) for f in rsts] == [(3, 1), (5, 1)]  # type: ignore[attr-defined]
    ok = HeadersFrame(7, enc.encode([(":method", "CONNECT"), (":authority", "a:1")]), flags=["END_HEADERS"])
    assert server.receive_data(ok.serialize()) == [TunnelRequested(7, "a:1", ())]
    assert not server.dead


def test_padded_data_is_stripped_and_acked() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    frame = DataFrame(sid, b"padded!", pad_length=10, flags=["PADDED"])
    events = server.receive_data(frame.serialize())
    assert payload(events, sid) == b"padded!"


def test_graceful_goaway_lets_open_streams_finish() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    server.close(0)
    out = server.data_to_send()
    [goaway] = frames(out)
    assert isinstance(goaway, GoAwayFrame) and (goaway.last_stream_id, goaway.error_code) == (sid, 0)
    assert client.receive_data(out) == [ConnectionClosed(0, sid)]
    with pytest.raises(h2.exceptions.ProtocolError):
        client.open_tunnel("10.0.0.1:80")
    client.send(sid, b"after goaway")
    assert payload(xfer(client, server), sid) == b"after goaway"
    server.send(sid, b"reply")
    server.end_stream(sid)
    events = xfer(server, client)
    assert payload(events, sid) == b"reply" and events[-1] == StreamEnded(sid)


def test_goaway_refuses_streams_above_last_id() -> None:
    client, server = pair()
    a = open_tunnel(client, server)
    b = client.open_tunnel("10.0.0.2:80")
    server.close(0)  # server never saw b
    events = xfer(server, client)
    assert events == [ConnectionClosed(0, a), StreamReset(b, 7)]


def test_protocol_error_from_peer_ends_connection_with_goaway() -> None:
    _client, server = pair()
    # DATA on stream 0 is a connection error PROTOCOL_ERROR (RFC 9113 §6.1)
    events = server.receive_data(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == 1
    assert server.dead
    [goaway] = frames(server.data_to_send())
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == 1


def test_flow_control_violation_on_connection() -> None:
    client, server = pair()
    sids = [open_tunnel(client, server) for _ in range(5)]  # 5 x 4 MiB > 16 MiB connection window
    too_much = b"".join(DataFrame(sid, b"q" * MiB).serialize() for sid in sids for _ in range(4))
    events = server.receive_data(too_much)
    assert events[-1] == ConnectionClosed(3, sids[-1])
    assert not any(isinstance(e, StreamReset) for e in events)


def test_settings_changed_reports_max_concurrent_streams() -> None:
    client = HboneConnection(client_side=True)
    server = HboneConnection(client_side=False, settings=HboneSettings(max_concurrent_streams=7))
    xfer(client, server)
    assert SettingsChanged(7) in xfer(server, client)
    assert client.max_outbound_streams == 7


def take_all(conn: HboneConnection, max_bytes: int) -> list[bytes | memoryview]:
    """Drain ``take_output`` write by write, checking the cap of each write."""
    writes: list[bytes | memoryview] = []
    while pieces := conn.take_output(max_bytes):
        assert sum(len(p) for p in pieces) <= max_bytes
        writes += pieces
    return writes


@pytest.mark.parametrize("max_bytes", [1000, 16384, 65536, 256 * 1024, 4 * MiB])
def test_take_output_is_the_wire_in_order_capped_without_copying_large_payloads(max_bytes: int) -> None:
    """What the asyncio edge hands TLS: the same bytes as ``data_to_send``, in writes of at most
    ``max_bytes``; a large payload leaves as a view of the caller's bytes (no copy), its header
    joined with the first bytes of the payload into one full 16 KiB TLS record."""
    client, server = pair()
    sid = open_tunnel(client, server)
    big, small = bytes(range(256)) * 1024, b"tiny"  # 256 KiB and 4 bytes
    client.send(sid, small)
    client.send(sid, big)
    client.ping(b"12345678")
    client.send(sid, small)
    writes = take_all(client, max_bytes)
    events = server.receive_data(b"".join(writes))
    assert payload(events, sid) == small + big + small
    assert client.take_output(max_bytes) == []
    if max_bytes >= len(big):
        assert len(writes[0]) == 16384  # head: header, "tiny", header, then payload to a full record
        views = [w for w in writes if isinstance(w, memoryview)]
        assert len(views) == 1 and views[0].obj is big  # the rest of the payload, not copied
        assert len(writes) == 3  # head record, payload view, tail (header, ping, header, "tiny")


def test_take_output_leaves_the_rest_queued_for_the_next_write() -> None:
    client, server = pair()
    sid = open_tunnel(client, server)
    client.send(sid, b"x" * 100_000)
    first = client.take_output(30_000)
    assert sum(len(p) for p in first) == 30_000
    client.send(sid, b"y" * 10)  # queued behind what is left
    rest = take_all(client, 1 << 20)
    events = server.receive_data(b"".join([*first, *rest]))
    assert payload(events, sid) == b"x" * 100_000 + b"y" * 10


def test_received_payloads_are_views_of_an_owned_buffer_else_of_a_copy() -> None:
    """The asyncio edge hands over each TLS read's fresh buffer (``owned``): payloads are views
    of it, not copies; a buffer the caller keeps (a plain bytearray) is copied once first."""
    client, server = pair()
    sid = open_tunnel(client, server)
    client.send(sid, b"payload")
    wire = client.data_to_send()
    owned = OwnedBuffer(wire)
    [event] = server.receive_data(memoryview(owned), owned=True)
    assert isinstance(event, DataReceived) and bytes(event.data) == b"payload"
    assert isinstance(event.data, memoryview) and event.data.obj is owned
    client.send(sid, b"again")
    kept = bytearray(client.data_to_send())
    [event] = server.receive_data(kept)  # type: ignore[arg-type]
    assert isinstance(event, DataReceived) and isinstance(event.data, memoryview)
    assert type(event.data.obj) is bytes
    kept[:] = b"\0" * len(kept)  # the caller reuses its buffer: what we delivered is unchanged
    assert bytes(event.data) == b"again"


def test_data_sink_gets_payloads_directly_but_never_ahead_of_a_queued_event() -> None:
    client, server = pair()
    got: list[tuple[int, bytes]] = []
    server.data_sink = lambda sid, data: got.append((sid, bytes(data)))
    first = client.open_tunnel("10.0.0.1:80")
    assert isinstance(xfer(client, server)[0], TunnelRequested)
    server.accept(first)
    xfer(server, client)
    assert client.send(first, b"ping") == 4
    assert xfer(client, server) == [] and got == [(first, b"ping")]  # no event object per frame
    # a new tunnel's HEADERS and its first DATA in one read: the DATA waits behind the request
    second = client.open_tunnel("10.0.0.2:80")
    client._send_open.add(second)  # send early, as a client may before the answer
    assert client.send(second, b"early") == 5
    events = xfer(client, server)
    assert isinstance(events[0], TunnelRequested) and events[1] == DataReceived(second, events[1].data)  # type: ignore[union-attr]
    assert bytes(events[1].data) == b"early" and got == [(first, b"ping")]  # type: ignore[union-attr]
