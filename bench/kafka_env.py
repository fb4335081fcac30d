"""The broker a benchmark talks to: ESPER_BOOTSTRAP_SERVERS when set, else the project's local broker (started),
with the Leyline topics created."""

from __future__ import annotations

from esper.settings import load_settings
from esper.streams.admin import create_topics
from esper.streams.local.broker import LocalBroker


def bench_bootstrap() -> str:
    settings = load_settings()
    servers = settings.bootstrap_servers or LocalBroker(settings.cluster()).up(timeout_s=180).bootstrap_servers
    create_topics(servers)
    return servers
