"""The broker a benchmark talks to: ESPER_BOOTSTRAP_SERVERS when set, else the project's local broker (started)."""

from __future__ import annotations

from esper.settings import load_settings
from esper.streams.broker import LocalBroker


def bench_bootstrap() -> str:
    settings = load_settings()
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    return LocalBroker(settings).up().bootstrap_servers
