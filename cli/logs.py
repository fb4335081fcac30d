"""Logging for the `esper` command and the benchmarks: one format on stderr, and librdkafka's own lines (its
transient retries: a coordinator still loading, a broker not up yet) only from ERROR, unless asked for at a finer
level; client errors reach the log through each client's error_cb anyway (esper.streams.client_config)."""

from __future__ import annotations

import logging

from esper.streams.client_config import LIBRDKAFKA_LOG

__all__ = ["configure"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "WARNING") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=numeric, format=FORMAT, force=True)
    LIBRDKAFKA_LOG.setLevel(numeric if numeric < logging.WARNING else max(numeric, logging.ERROR))
