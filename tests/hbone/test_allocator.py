"""The allocator tuning the role runtime applies at start (``waypoint.hbone.allocator``)."""

from __future__ import annotations

import platform

from waypoint.hbone.allocator import tune_allocator


def test_glibc_thresholds_are_set() -> None:
    assert platform.libc_ver()[0] == "glibc"  # the product's images and CI are glibc
    assert tune_allocator() is True
