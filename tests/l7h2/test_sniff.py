"""``detect_protocol`` table, after Envoy's http_inspector (preface → h2, HTTP/1.x request line → http/1.1)."""

from __future__ import annotations

import pytest

from waypoint.l7.sniff import MAX_INSPECT, PREFACE, detect_protocol


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"", None),
        (b"PRI * HT", None),
        (PREFACE, "h2"),
        (PREFACE + b"\x00\x00\x12\x04", "h2"),
        (b"PRI * HTTP/1.1\r\n", "tcp"),
        (b"G", None),
        (b"GET / HTTP/1.", None),
        (b"GET / HTTP/1.1\r", None),
        (b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n", "http/1.1"),
        (b"POST /u HTTP/1.0\r\n", "http/1.1"),
        (b"M-SEARCH * HTTP/1.1\r\n", "http/1.1"),
        (b"GET / HTTP/2.0\r\n", "tcp"),
        (b"GET  / HTTP/1.1\r\n", "tcp"),
        (b"GETX / HTTP/1.1\r\n", "tcp"),
        (b"get / HTTP/1.1\r\n", "tcp"),
        (b"\x16\x03\x01\x02\x00\x01", "tcp"),  # a TLS ClientHello
        (b"SSH-2.0-OpenSSH\r\n", "tcp"),
        (b"GET /" + b"a" * MAX_INSPECT, "tcp"),  # undecided within the inspect limit
    ],
)
def test_detect_protocol(data: bytes, want: str | None) -> None:
    assert detect_protocol(data) == want
