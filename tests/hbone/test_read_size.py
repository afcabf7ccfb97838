"""The TLS read buffer follows the traffic: small for ping-pong, full size for bulk."""

from __future__ import annotations

from waypoint.hbone.adapter import next_read_size


def test_small_reads_shrink_to_one_tls_record_and_a_filled_buffer_goes_back_to_full_size() -> None:
    full = next_read_size(262144, 262144)
    assert full == 262144
    assert next_read_size(100, full) == 16384  # one TLS record's plaintext (RFC 8446 §5.1)
    assert next_read_size(16384, 16384) == full  # filled: the next read may be bulk
    assert next_read_size(20000, full) == 40000
