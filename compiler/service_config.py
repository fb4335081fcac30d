"""Tezzeret's service configuration: the spec's `tezzeret:` YAML block, loaded as written, validated once.

The sections and their defaults are the spec's (compilation, circuit_breakers, conservative_mode, wal,
memory_management), with the limits its companion documents name beside them: the 16 GB memory budget, the cache's
16384 entries, and what conservative mode lowers them to. `TezzeretConfig.load` reads a YAML, TOML or JSON file whose
top level is `tezzeret:` (the block as written) or the block itself, then the environment
(`ESPER_TEZZERET_<SECTION>__<FIELD>`), then keyword overrides; anything wrong, unknown keys included, is one
ConfigError listing every problem by its dotted path (an environment variable with the prefix that names no section
too). YAML is read with the blueprint loader's hardened safe loader: no anchors, aliases or duplicate keys, no Python
tags.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from esper.compiler.conservative import CONSERVATIVE_POLICY, NORMAL_POLICY, ConservativeLimits
from esper.compiler.ir.load import HardenedYamlLoader
from esper.proto.enums import CompilationStrategy
from esper.safety.breaker import CircuitBreakerConfig
from esper.safety.config import FrozenConfig
from esper.safety.exceptions import ConfigError

__all__ = [
    "DURABILITY_MODES",
    "MAX_FILE_BYTES",
    "CircuitBreakerSettings",
    "CompilationSettings",
    "ConservativeModeSettings",
    "DurabilityMode",
    "MemoryManagementSettings",
    "TezzeretConfig",
    "WalSettings",
]

_GIB = 1 << 30
MAX_FILE_BYTES = 1 << 20  # a config file larger than this is refused before it is parsed

# What `wal.durability_mode` may say. The WAL (compiler/wal/log.py, FORMAT.md "Durability and acknowledgement")
# opens nothing with O_DSYNC: it writes each group-commit batch with one pwrite, then one fdatasync, and acknowledges
# the batch's records only after that returns. That is O_DSYNC's guarantee (the data and the metadata needed to read
# it back are on the disk before the write is acknowledged), given per batch instead of per write(2); so the spec's
# "O_DSYNC" and "fdatasync" name the one mode it has. Others (O_SYNC, O_DIRECT, none) are refused: it cannot honour
# them.
DurabilityMode = Literal["O_DSYNC", "fdatasync"]
DURABILITY_MODES: tuple[str, ...] = get_args(DurabilityMode)


class _Section(BaseModel):
    """A section of the block: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _strategy(value: object) -> object:
    """A CompilationStrategy by its name (STANDARD), as the spec writes it; a member passes as it is."""
    if isinstance(value, CompilationStrategy):
        return value
    if isinstance(value, str) and value in CompilationStrategy.__members__:
        return CompilationStrategy[value]
    raise ValueError(f"must be one of {', '.join(CompilationStrategy.__members__)}")


StrategyName = Annotated[
    CompilationStrategy, BeforeValidator(_strategy), PlainSerializer(lambda s: s.name, return_type=str)
]


class CompilationSettings(_Section):
    """How many compiles run at once, with which strategy by default, and how much of the GPU they may take."""

    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 2
    default_strategy: StrategyName = CompilationStrategy.STANDARD
    enable_emergency_compilation: bool = True
    enable_caching: bool = True
    gpu_utilization_limit: Annotated[float, Field(gt=0, le=1)] = 0.25  # a fraction of the GPU


class CircuitBreakerSettings(_Section):
    """Tezzeret's breakers: open after `failure_threshold` consecutive failures, probe again after `timeout_ms`.
    `enabled: false` is for the service to honour (its breakers DISABLED: calls pass, nothing is recorded)."""

    enabled: bool = True
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    timeout_ms: Annotated[int, Field(ge=1)] = 30_000

    def breaker_config(self) -> CircuitBreakerConfig:
        """The breaker config these settings give (the other rules at esper.safety.breaker's defaults)."""
        return CircuitBreakerConfig(failure_threshold=self.failure_threshold, timeout_ms=self.timeout_ms)


class ConservativeModeSettings(_Section):
    """When conservative mode starts by itself (GPU above a threshold for a while, memory above a fraction) and ends
    (a cool-down after the last cause), and what it lowers: one job at a time, the GPU ceiling to 15%, timeouts x1.5,
    the memory budget x0.5, cache entries to 8192 (the defaults of compiler/conservative.py)."""

    auto_enable: bool = True
    gpu_threshold_percent: Annotated[float, Field(gt=0, lt=100)] = 20
    threshold_duration_minutes: Annotated[float, Field(gt=0)] = 5
    memory_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.80  # a fraction of the memory budget
    cooldown_minutes: Annotated[float, Field(ge=0)] = 5
    max_concurrent_jobs: Annotated[int, Field(ge=1)] = 1
    gpu_utilization_limit: Annotated[float, Field(gt=0, le=1)] = 0.15
    timeout_multiplier: Annotated[float, Field(ge=1)] = 1.5
    memory_budget_multiplier: Annotated[float, Field(gt=0, le=1)] = 0.5
    cache_max_entries: Annotated[int, Field(ge=1)] = 8192


class WalSettings(_Section):
    """The compiler's write-ahead log: whether it is kept, in which directory, and how durably.

    `path` unset (the default) is `<home>/tezzeret/wal`, beside the rest of Esper's local state (see `directory`);
    the spec's `/var/lib/esper/tezzeret/wal` is what a deployment that writes the block as given gets.
    """

    enabled: bool = True
    path: Path | None = None
    durability_mode: DurabilityMode = "O_DSYNC"

    @field_validator("path", mode="before")
    @classmethod
    def _a_directory_name(cls, value: object) -> object:
        # Path("") is the working directory, and recovery deletes stray *.tmp files in the WAL's directory
        if isinstance(value, str) and (not value.strip() or "\0" in value):
            raise ValueError("must name a directory")
        return value

    def directory(self, home: Path) -> Path:
        """Where the WAL lives: `path`, or `<home>/tezzeret/wal` when it is unset."""
        return self.path if self.path is not None else home / "tezzeret" / "wal"


class MemoryManagementSettings(_Section):
    """TTL cleanup of caches and queues, and the bounds they are held to."""

    ttl_cleanup_enabled: bool = True
    cleanup_interval_seconds: Annotated[float, Field(gt=0)] = 300
    memory_budget_gb: Annotated[float, Field(gt=0)] = 16.0  # GiB (2**30 bytes), as compiler/conservative.py counts it
    cache_max_entries: Annotated[int, Field(ge=1)] = 16_384


class AuthorizationSettings(_Section):
    """The spec's role-based access for emergency compiles: a requestor may send one when `roles` gives it
    `emergency_role`; when `token_sha256` holds a digest for it, the request's authorization_token must hash to it
    (the requestor field alone is only a claim on a cluster without SASL)."""

    emergency_role: str = "emergency"
    roles: dict[str, tuple[str, ...]] = {"tamiyo": ("emergency",)}
    token_sha256: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = {}


class ServiceSettings(_Section):
    """Where the running service keeps and serves things (not in the spec's block: what `esper compiler run`
    needs beyond it). `store` unset is the local artifact store of the Esper settings; `shared_store` is the L3
    store several hosts reach (a directory or file:// URI)."""

    instance_id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")] = "tezzeret-0"
    group_id: Annotated[str, Field(min_length=1)] = "tezzeret"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8790
    store: str | None = None
    shared_store: str | None = None
    seed: Annotated[int, Field(ge=0)] = 0
    device: str = "cpu"
    cache_ttl_seconds: Annotated[float, Field(gt=0)] = 3600
    idle_upgrade_after_seconds: Annotated[float, Field(gt=0)] = 30
    idle_upgrade_min_uses: Annotated[int, Field(ge=1)] = 2
    # every tier's compile timeout (compiler/tiers.py: 10, 65, 250, 960 s) times this: a slower or faster machine
    tier_timeout_scale: Annotated[float, Field(gt=0)] = 1.0


class TezzeretConfig(FrozenConfig):
    """The `tezzeret:` block of the spec: every section with its defaults, validated at construction."""

    model_config = SettingsConfigDict(env_prefix="ESPER_TEZZERET_", env_nested_delimiter="__")
    FILE_SECTION: ClassVar[str] = "tezzeret"

    compilation: CompilationSettings = CompilationSettings()
    circuit_breakers: CircuitBreakerSettings = CircuitBreakerSettings()
    conservative_mode: ConservativeModeSettings = ConservativeModeSettings()
    wal: WalSettings = WalSettings()
    memory_management: MemoryManagementSettings = MemoryManagementSettings()
    authorization: AuthorizationSettings = AuthorizationSettings()
    service: ServiceSettings = ServiceSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return (*sources, _UnknownEnv(settings_cls)) if env_settings in sources else sources

    def conservative_limits(self) -> ConservativeLimits:
        """The conservative-mode controller's limits and its two policies (normal, conservative), from this config."""
        c, mm = self.conservative_mode, self.memory_management
        budget = mm.memory_budget_gb * _GIB
        normal = replace(
            NORMAL_POLICY,
            max_concurrent_jobs=self.compilation.max_concurrent_jobs,
            gpu_ceiling_percent=self.compilation.gpu_utilization_limit * 100,
            memory_budget_bytes=max(1, round(budget)),
            cache_entries=mm.cache_max_entries,
        )
        conservative = replace(
            CONSERVATIVE_POLICY,
            max_concurrent_jobs=c.max_concurrent_jobs,
            gpu_ceiling_percent=c.gpu_utilization_limit * 100,
            timeout_multiplier=c.timeout_multiplier,
            memory_budget_bytes=max(1, round(budget * c.memory_budget_multiplier)),
            cache_entries=c.cache_max_entries,
        )
        return ConservativeLimits(
            auto_enable=c.auto_enable,
            gpu_threshold_percent=c.gpu_threshold_percent,
            threshold_duration_ms=round(c.threshold_duration_minutes * 60_000),
            memory_threshold=c.memory_threshold,
            cooldown_ms=round(c.cooldown_minutes * 60_000),
            normal=normal,
            conservative=conservative,
        )

    def _broken_rules(self) -> Iterator[tuple[tuple[str, ...], str]]:
        # conservative mode lowers limits, never raises them
        for conservative, normal in (
            ("conservative_mode.max_concurrent_jobs", "compilation.max_concurrent_jobs"),
            ("conservative_mode.gpu_utilization_limit", "compilation.gpu_utilization_limit"),
            ("conservative_mode.cache_max_entries", "memory_management.cache_max_entries"),
        ):
            if _get(self, conservative) > _get(self, normal):
                yield (conservative, normal), f"{conservative}: must be <= {normal} ({_get(self, normal)})"

    @classmethod
    def _file_data(cls, path: Path) -> object:
        """YAML (.yaml, .yml) with the hardened safe loader; TOML and JSON as every config reads them."""
        if path.suffix.lower() not in (".yaml", ".yml"):
            return super()._file_data(path)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(path.name, [f"cannot read {path}: {e}"]) from e
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(path.name, [f"{path} is over the limit of {MAX_FILE_BYTES} bytes"])
        try:
            data = yaml.load(raw.decode("utf-8"), HardenedYamlLoader)
        except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
            raise ConfigError(path.name, [f"{path} is not valid YAML: {e}"]) from e
        return {} if data is None else data  # an empty file, or only comments: the defaults


class _UnknownEnv(PydanticBaseSettingsSource):
    """The environment variables with the config's prefix that name no section, by their own names: validation
    reports each as an unknown key (pydantic-settings' own source reads known names only, so a typo would pass)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", "")).upper()
        delimiter = str(self.config.get("env_nested_delimiter") or "__")
        return {
            name: value
            for name, value in os.environ.items()
            if name.upper().startswith(prefix)
            and name[len(prefix) :].lower().split(delimiter)[0] not in self.settings_cls.model_fields
        }


def _get(config: TezzeretConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)
