"""Logging set-up shared by every command: one line per event, key=value fields."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request at INFO: with --kubernetes that is each watch re-opened, every few minutes
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
