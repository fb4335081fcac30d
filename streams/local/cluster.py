"""Which Kafka cluster this process talks to: the configured one, or the project's local broker. The configuration
is explicit (the CLI builds it from its settings), so streams/ never reads the CLI's settings itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClusterConfig", "bootstrap_servers"]


@dataclass(frozen=True)
class ClusterConfig:
    """An existing cluster (`bootstrap_servers`; None: none), and how the local broker runs: its Kafka version,
    installed and kept under `home`, its ports and its JVM heap."""

    bootstrap_servers: str | None
    home: Path
    kafka_version: str
    broker_port: int
    controller_port: int
    broker_heap: str

    @property
    def local_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.broker_port}"


def bootstrap_servers(config: ClusterConfig) -> str:
    """The configured cluster when there is one, else the local broker's address."""
    return config.bootstrap_servers or config.local_bootstrap_servers
