"""Settings for every Esper command: environment variables (ESPER_*) over an optional TOML file over defaults."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from esper.streams.local.cluster import ClusterConfig

CONFIG_FILE_ENV = "ESPER_CONFIG"


class EsperSettings(BaseSettings):
    """Where Kafka is, where local state lives, and how the managed broker runs."""

    model_config = SettingsConfigDict(env_prefix="ESPER_", extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None, description="An existing cluster; when set, no local broker is started."
    )
    home: Path = Field(default=Path(".esper"), description="Local state: Kafka jars, broker data, logs.")
    kafka_version: str = "4.2.0"
    broker_port: int = 9092
    controller_port: int = 9093
    broker_heap: str = "512m"
    client_id: str = "esper"
    keys_dir: Path | None = Field(default=None, description="The artifact signing key ring; default <home>/keys.")
    artifacts_dir: Path | None = Field(default=None, description="The local artifact store; default <home>/artifacts.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get(CONFIG_FILE_ENV, "esper.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    def key_ring_dir(self) -> Path:
        """Where `esper keys` and the compiler keep the signing key ring."""
        return self.keys_dir or self.home / "keys"

    def artifact_store_dir(self) -> Path:
        """Where `esper compile` stores artifacts unless told otherwise."""
        return self.artifacts_dir or self.home / "artifacts"

    def cluster(self) -> ClusterConfig:
        """What streams/ needs of these settings: the cluster to use and how the local broker runs."""
        return ClusterConfig(
            bootstrap_servers=self.bootstrap_servers,
            home=self.home,
            kafka_version=self.kafka_version,
            broker_port=self.broker_port,
            controller_port=self.controller_port,
            broker_heap=self.broker_heap,
        )


def load_settings(**overrides: object) -> EsperSettings:
    """Settings for this process; keyword overrides win over the environment and the file."""
    return EsperSettings(**overrides)  # type: ignore[arg-type]
