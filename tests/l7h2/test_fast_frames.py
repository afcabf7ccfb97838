"""Hand-framed HEADERS / END_STREAM and the static HPACK encoder, checked against real peers.

The frames we build are decoded by an independent ``h2.H2Connection`` (its own hyperframe parser
and hpack decoder, validation on) and must give the events h2's own framing gives. The contract
tests pin the h2 internals ``waypoint.l7.h2_fast`` reaches into.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
import hpack
import pytest

from tests.l7h2.test_session import GET, POST, pair, shuttle
from waypoint.l7 import h2_fast
from waypoint.l7 import h2_session as hs
from waypoint.l7.hpack_encode import CACHE_LIMIT, StaticEncoder, encode_integer


def reference_client() -> h2.connection.H2Connection:
    """A stock h2 client with validation on, as an independent decoder of what our server sends."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def talk(ref: h2.connection.H2Connection, server: hs.H2Session) -> list[h2.events.Event]:
    events: list[h2.events.Event] = []
    while True:
        to_server, to_ref = ref.data_to_send(), server.data_to_send()
        if not to_server and not to_ref:
            return events
        if to_server:
            server.receive_data(to_server)
        if to_ref:
            events += ref.receive_data(to_ref)


# ---- the encoder ----
@pytest.mark.parametrize(
    "headers",
    [
        [(b":status", b"200")],  # whole static entry
        [(b":status", b"503"), (b"content-length", b"13"), (b"server", b"x")],  # static names
        [(b"x-waypoint", b"waypoint"), (b"x-request-id", b"0b6c7cf2-1a3e-4a5b-9c1d-2e3f4a5b6c7d")],
        [(b"authorization", b"Bearer t"), (b"cookie", b"a=1")],  # never indexed
        [(b"x-long", b"v" * 300), (b"k" * 200, b"")],  # multi-byte integers
    ],
)
def test_static_encoder_round_trips_through_hpack(headers: list[tuple[bytes, bytes]]) -> None:
    encoder, decoder = StaticEncoder(), hpack.Decoder()
    for _ in range(3):  # cached encodings decode the same
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert not decoder.header_table.dynamic_entries  # we never index: the peer's table stays empty


def test_static_encoder_marks_sensitive_fields_never_indexed() -> None:
    decoded = list(hpack.Decoder().decode(StaticEncoder().encode([(b"authorization", b"s"), (b"x", b"y")]), raw=True))
    assert isinstance(decoded[0], hpack.NeverIndexedHeaderTuple)
    assert not isinstance(decoded[1], hpack.NeverIndexedHeaderTuple)


def test_static_encoder_signals_table_size_zero_first_and_after_a_settings_change() -> None:
    encoder = StaticEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"  # size update 0, then index 8
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    encoder.header_table_size = 1024  # what h2 does when the peer's SETTINGS_HEADER_TABLE_SIZE changes
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"


def test_static_encoder_cache_is_bounded() -> None:
    encoder = StaticEncoder()
    for i in range(CACHE_LIMIT * 3):
        encoder.encode([(b"x-request-id", str(i).encode())])
    assert len(encoder._cache) <= CACHE_LIMIT


def test_integer_encoding_rfc7541_c1_examples() -> None:
    assert encode_integer(10, 5, 0) == b"\x0a"  # C.1.1
    assert encode_integer(1337, 5, 0) == b"\x1f\x9a\x0a"  # C.1.2
    assert encode_integer(42, 8, 0) == b"\x2a"  # C.1.3


# ---- hand-framed frames, read by a stock h2 client ----
def test_response_head_body_and_end_stream_as_a_stock_client_reads_them() -> None:
    ref, server = reference_client(), hs.H2Session(False)
    ref.send_headers(1, GET, end_stream=True)
    talk(ref, server)
    server.send_headers(1, [(b":status", b"200"), (b"x-waypoint", b"waypoint")], False)
    server.send_data(1, b"hello")
    server.end_stream(1)
    events = talk(ref, server)
    kinds = [type(e) for e in events]
    # END_STREAM rides an empty DATA frame, as h2's own end_stream() sends it
    assert kinds == [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert events[1].data == b"hello" and events[2].data == b""  # type: ignore[attr-defined]
    assert events[0].headers == [(b":status", b"200"), (b"x-waypoint", b"waypoint")]  # type: ignore[attr-defined]
    assert server._h2.streams[1].closed  # h2's state machine saw our END_STREAM


def test_informational_then_final_then_trailers_to_a_stock_client() -> None:
    ref, server = reference_client(), hs.H2Session(False)
    ref.send_headers(1, POST, end_stream=True)
    talk(ref, server)
    server.send_headers(1, [(b":status", b"100")], False)
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    server.send_headers(1, [(b"grpc-status", b"14")], True)  # a trailer value starting with "1"
    kinds = [type(e) for e in talk(ref, server)]
    assert kinds == [
        h2.events.InformationalResponseReceived,
        h2.events.ResponseReceived,
        h2.events.TrailersReceived,
        h2.events.StreamEnded,
    ]


def test_a_large_head_is_split_into_continuation_frames() -> None:
    ref, server = reference_client(), hs.H2Session(False)
    ref.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
    ref.send_headers(1, GET, end_stream=True)
    talk(ref, server)
    big = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 1000) for i in range(40)]  # > 16 KiB frame
    server.send_headers(1, big, True)
    out = server.data_to_send()
    assert out[3] == h2_fast.HEADERS and out[4] == h2_fast.END_STREAM  # END_HEADERS only on the last
    assert out[9 + 16384 + 3] == h2_fast.CONTINUATION
    events = ref.receive_data(out)
    assert events[0].headers == big  # type: ignore[attr-defined]


def test_misuse_raises_protocol_errors_as_h2_does() -> None:
    client, server = pair()
    sid = client.open_stream(GET, end_stream=True)
    shuttle(client, server)
    with pytest.raises(h2.exceptions.ProtocolError):
        h2_fast.send_headers(server._h2, sid, [(b":status", b"100")], True)  # END_STREAM on 1xx
    server.send_headers(sid, [(b":status", b"200")], True)
    with pytest.raises(h2.exceptions.ProtocolError):
        h2_fast.send_headers(server._h2, sid, [(b":status", b"200")], False)  # closed stream
    with pytest.raises(h2.exceptions.ProtocolError):
        h2_fast.end_stream(server._h2, sid)
    with pytest.raises(h2.exceptions.ProtocolError):
        h2_fast.end_stream(server._h2, 99)  # never opened: h2's own error


def test_contract_h2_internals_we_drive() -> None:
    """h2 4.4: the attributes and inputs ``h2_fast`` uses; fail here if they move."""
    assert h2.__version__.startswith(h2_fast.H2_VERSIONS_READ)
    client, server = pair()
    sid = client.open_stream(GET, end_stream=True)
    shuttle(client, server)
    conn = server._h2
    assert isinstance(conn.encoder, StaticEncoder)
    stream = conn.streams[sid]
    assert stream.state_machine.client is False and stream.state_machine.trailers_sent is None
    assert {"SEND_HEADERS", "SEND_INFORMATIONAL_HEADERS", "SEND_END_STREAM"} <= set(h2.stream.StreamInputs.__members__)
    assert {"SEND_HEADERS", "SEND_DATA"} <= set(h2.connection.ConnectionInputs.__members__)
    assert isinstance(conn.max_outbound_frame_size, int)
