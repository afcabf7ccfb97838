"""Malformed input never escapes as anything but an HTTP/2 error of its own connection.

A bad peer or frame must end only its own stream or connection (developers' guide): the
sans-I/O connection either turns the bytes into events or raises h2's ``H2Error`` (the adapter
then drops that one connection). Seeded, so a failure replays; mutations of real traffic (bit
flips, truncations, spliced frames) and random frames of every type, in one byte or in slices.
"""

from __future__ import annotations

import random

import h2.exceptions
import pytest

from waypoint.hbone.connection import HboneConnection

from .test_connection import open_tunnel, pair

FRAME_TYPES = [*range(0x0, 0xA), 0x10, 0xFF]  # every type RFC 9113 defines, and unknown ones


def _valid_traffic(client: HboneConnection, server: HboneConnection) -> bytes:
    """What a client sends after the handshake: a tunnel, DATA, a PING, END_STREAM, a reset."""
    sid = open_tunnel(client, server)
    client.send(sid, b"x" * 3000)
    client.ping(b"12345678")
    second = client.open_tunnel("10.0.0.1:81")
    client.end_stream(sid)
    client.reset(second)
    return client.data_to_send()


def _random_frame(rng: random.Random) -> bytes:
    length = rng.choice([0, 1, 4, 5, 8, 9, 16, rng.randrange(0, 70000)])
    body = rng.randbytes(min(length, 4096))  # a lying length header is part of the test
    sid = rng.choice([0, 1, 2, 3, 5, 2**31 - 1, rng.randrange(0, 2**32)])
    head = length.to_bytes(3, "big") + bytes([rng.choice(FRAME_TYPES), rng.randrange(256)])
    return head + sid.to_bytes(4, "big") + body


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        kind = rng.randrange(4)
        if kind == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:  # cut
            del buf[rng.randrange(len(buf)) :]
        elif kind == 2:  # splice a random frame in
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = _random_frame(rng)
        else:  # duplicate a slice
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = buf[i : i + rng.randrange(1, 64)]
    return bytes(buf)


def _feed(conn: HboneConnection, data: bytes, rng: random.Random) -> None:
    """Deliver in random slices, as TCP may; after an H2Error the connection is done."""
    i = 0
    try:
        while i < len(data):
            n = rng.choice([1, 9, 100, len(data)])
            conn.receive_data(data[i : i + n], owned=rng.random() < 0.5)
            conn.data_to_send()
            i += n
    except h2.exceptions.H2Error:
        return


@pytest.mark.parametrize("seed", range(8))
def test_mutated_client_traffic_is_events_or_an_h2_error(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        _, server = pair()  # handshake done: the mutated bytes come as from its client
        healthy = _valid_traffic(*pair())  # a healthy client's bytes, from an exchange of its own
        _feed(server, _mutate(healthy, rng), rng)


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("seed", range(4))
def test_random_frames_after_a_valid_start_are_events_or_an_h2_error(seed: int, side: str) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(200):
        client, server = pair()
        open_tunnel(client, server)
        junk = b"".join(_random_frame(rng) for _ in range(rng.randrange(1, 6)))
        _feed(server if side == "server" else client, junk, rng)
