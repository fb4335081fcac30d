"""The broker a benchmark talks to: ESPER_BOOTSTRAP_SERVERS when set, else a local broker of the benches' own
(`<home>/bench`, ports 100 above the project's), started, with the Leyline topics created. Its own, because the
benches fill the Leyline topics (a million records for the projections' rebuild): on the project's broker, the next
`make run` would answer their requests and fold their backlog before its own records. `make bench` stops it at the
end; its data stays, so the next run reuses the records."""

from __future__ import annotations

from esper.settings import load_settings
from esper.streams.admin import create_topics
from esper.streams.local.broker import LocalBroker

PORT_OFFSET = 100


def bench_broker() -> LocalBroker:
    settings = load_settings()
    ports = {
        "broker_port": settings.broker_port + PORT_OFFSET,
        "controller_port": settings.controller_port + PORT_OFFSET,
    }
    return LocalBroker(load_settings(**ports, bootstrap_servers=None).cluster(), name="bench")


def bench_bootstrap() -> str:
    servers = load_settings().bootstrap_servers or bench_broker().up(timeout_s=180).bootstrap_servers
    create_topics(servers)
    return servers
