"""Owned read buffers (``waypoint.buffers``): what the data path may queue without copying,
and how big the next read's buffer is."""

from __future__ import annotations

import pytest

from waypoint.buffers import MIN_READ, READ_SIZE, OwnedBuffer, is_stable, new_buffer, next_read_size


@pytest.mark.parametrize("size", [1, MIN_READ, 64 * 1024, READ_SIZE, 4 * READ_SIZE])
def test_new_buffer_has_the_asked_size_and_takes_a_full_write(size: int) -> None:
    buf = new_buffer(size)
    assert type(buf) is OwnedBuffer and len(buf) == size
    buf[:] = b"\xab" * size  # every byte writable, nothing beyond
    assert len(buf) == size and buf[-1] == 0xAB


def test_only_bytes_and_views_of_owned_buffers_are_stable() -> None:
    owned = new_buffer(128 * 1024)
    assert is_stable(b"x")
    assert is_stable(memoryview(owned)[:10])
    assert not is_stable(bytearray(b"x"))  # a caller may refill it: writers copy it
    assert not is_stable(memoryview(bytearray(10)))
    assert not is_stable(owned)  # the buffer itself is handed out for filling, only views are final


def test_small_reads_shrink_to_one_tls_record_and_a_filled_buffer_goes_back_to_full_size() -> None:
    full = next_read_size(READ_SIZE, READ_SIZE)
    assert full == READ_SIZE == 262144
    assert next_read_size(100, full) == 16384  # one TLS record's plaintext (RFC 8446 §5.1)
    assert next_read_size(16384, 16384) == full  # filled: the next read may be bulk
    assert next_read_size(20000, full) == 40000
