"""Which Kafka cluster this process talks to: the configured one, or the project's local broker."""

from __future__ import annotations

from esper.settings import EsperSettings
from esper.streams.broker import LocalBroker


def bootstrap_servers(settings: EsperSettings) -> str:
    """ESPER_BOOTSTRAP_SERVERS (or the config file) when set, else the local broker's address."""
    return settings.bootstrap_servers or LocalBroker(settings).bootstrap_servers
