"""Hand-framed HEADERS / END_STREAM and the static HPACK encoder, checked against real peers.

The frames we build are decoded by an independent ``h2.H2Connection`` (its own hyperframe parser
and hpack decoder, validation on) and must give the events h2's own framing gives. The contract
test pins the ``hpack`` pieces ``waypoint.l7.h2_hpack`` uses.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
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
    assert server.open_streams == 0  # closed both ways: forgotten


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


def test_misuse_raises_protocol_errors() -> None:
    client, server = pair()
    sid = client.open_stream(GET, end_stream=True)
    shuttle(client, server)
    with pytest.raises(hs.H2ProtocolError):
        server.send_headers(sid, [(b":status", b"100")], True)  # END_STREAM on 1xx
    server.send_headers(sid, [(b":status", b"200")], False)
    with pytest.raises(hs.H2ProtocolError):
        server.send_headers(sid, [(b"grpc-status", b"0")], False)  # trailers without END_STREAM
    server.end_stream(sid)
    with pytest.raises(hs.H2ProtocolError):
        server.send_headers(sid, [(b":status", b"200")], False)  # closed stream
    with pytest.raises(hs.H2ProtocolError):
        server.end_stream(sid)
    with pytest.raises(hs.H2ProtocolError):
        server.end_stream(99)  # never opened
    assert server.send_data(sid, b"x") == 0


def test_contract_hpack_internals_we_use() -> None:
    """hpack 4.x: the static table, Huffman decoder and error ``h2_hpack`` import; fail if they move."""
    from hpack.exceptions import HPACKDecodingError
    from hpack.huffman_table import decode_huffman

    from waypoint.l7.h2_hpack import STATIC

    assert len(STATIC) == 61 and STATIC[1] == (b":method", b"GET")
    assert decode_huffman(b"\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff") == b"www.example.com"  # C.4.1
    with pytest.raises(HPACKDecodingError):
        decode_huffman(b"\xff\xff\xff\xff")  # EOS


# ---- our client session against a stock h2 server (validation on) ----
def test_our_client_against_a_stock_server_body_trailers_and_flow_control() -> None:
    ref = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    ref.initiate_connection()
    ours = hs.H2Session(True)

    def run() -> tuple[list[h2.events.Event], list[hs.H2Event]]:
        at_ref: list[h2.events.Event] = []
        at_ours: list[hs.H2Event] = []
        while True:
            to_ref, to_ours = ours.data_to_send(), ref.data_to_send()
            if not to_ref and not to_ours:
                return at_ref, at_ours
            at_ref += ref.receive_data(to_ref) if to_ref else []
            at_ours += ours.receive_data(to_ours) if to_ours else []

    run()
    sid = ours.open_stream([*POST, (b"content-length", b"100000")], end_stream=False)
    sent = ours.send_data(sid, b"x" * 100_000)
    assert sent == 65535  # the stock server's default windows
    at_ref, _ = run()
    got = sum(len(e.data) for e in at_ref if isinstance(e, h2.events.DataReceived))
    ref.acknowledge_received_data(got, sid)
    run()
    assert ours.send_data(sid, b"x" * (100_000 - sent)) == 100_000 - sent
    ours.end_stream(sid)
    at_ref, _ = run()
    assert isinstance(at_ref[-1], h2.events.StreamEnded)
    ref.send_headers(sid, [(b":status", b"200")])
    ref.send_data(sid, b"ok")
    ref.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    _, at_ours = run()
    kinds = [type(e) for e in at_ours]
    assert kinds == [hs.HeadersReceived, hs.DataReceived, hs.TrailersReceived, hs.StreamEnded]
    assert ours.open_streams == 0 and not ours.dead


def test_per_request_ids_are_encoded_but_not_cached() -> None:
    encoder = StaticEncoder()
    block = encoder.encode([(b"x-request-id", b"abc"), (b"x-waypoint", b"1")])
    assert hpack.Decoder().decode(block, raw=True) == [(b"x-request-id", b"abc"), (b"x-waypoint", b"1")]
    assert list(encoder._cache) == [(b"x-waypoint", b"1")]
