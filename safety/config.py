"""Kasmina's configurations with the spec's defaults: frozen, validated at construction, loadable from a file
(TOML or JSON) and the environment through pydantic-settings, the mechanism EsperSettings uses too. An invalid
config raises one ConfigError that lists every violated rule."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import ValidationError, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from esper.safety.exceptions import ConfigError

__all__ = ["AlphaSchedule", "FrozenConfig", "GraftingConfig", "ProductionSafetyConfig"]

AlphaSchedule = Literal["linear", "cosine", "sigmoid"]


@dataclass(frozen=True)
class _Load:
    """A `load` in progress in this context, and the file it reads (None: none)."""

    file: Path | None


_LOADING: ContextVar[_Load | None] = ContextVar("_LOADING", default=None)


class FrozenConfig(BaseSettings):
    """Shared behaviour: frozen, no unknown keys, one ConfigError for field errors and rule violations alike.

    Constructed directly, a config holds exactly the values given and the defaults (a config written in code, or a
    component's default, does not change with the shell it runs in); `load` adds the file and the environment.
    Fields may be nested models (sections): errors and rules then name a field by its dotted path.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    # A file may hold the fields at its top level or under a table named FILE_SECTION (one esper.toml can hold
    # every config); environment variables are the model_config's env_prefix + the field name.
    FILE_SECTION: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        loading = _LOADING.get()
        if loading is None:
            return (init_settings,)
        if loading.file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, _file_source(cls, loading.file, cls.FILE_SECTION))

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """Defaults, then the file (TOML or JSON), then the environment, then keyword overrides."""
        token = _LOADING.set(_Load(None if path is None else Path(path)))
        try:
            return cls(**overrides)
        finally:
            _LOADING.reset(token)

    @model_validator(mode="wrap")
    @classmethod
    def _one_error(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            model = handler(data)
        except ValidationError as e:
            errors = e.errors()
            problems = [f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {_message(err)}" for err in errors]
            # The rules still run, on the fields that did validate (the bad ones at their defaults): a rule that
            # reads a bad field is skipped, since its verdict would be about the default, not the given value.
            bad = {tuple(str(p) for p in err["loc"]) for err in errors if err["loc"]}
            if isinstance(data, Mapping):
                try:
                    rest = handler(_without(data, bad))
                except ValidationError:
                    rest = None
                if rest is not None:
                    problems += rest.violations(skip={".".join(path) for path in bad})
            raise ConfigError(cls.__name__, problems) from None
        problems = model.violations()
        if problems:
            raise ConfigError(cls.__name__, problems)
        return model

    def violations(self, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Every rule this config breaks (empty when valid), leaving out the rules that read a field in `skip` (dotted
        paths: a rule reading `a.b` is left out for `a`, `a.b` or `a.b.c`)."""
        return [
            message
            for fields, message in self._broken_rules()
            if not any(_overlaps(field, bad) for field in fields for bad in skip)
        ]

    def _broken_rules(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """(the fields a broken rule reads, dotted for a section's field, and its message) for every rule broken."""
        yield from ()

    @classmethod
    def _file_data(cls, path: Path) -> object:
        """The parsed contents of a config file: TOML by its suffix, else JSON (a subclass may read more kinds). Raises
        ConfigError when the file cannot be read or parsed."""
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        try:
            if kind == "TOML":
                return TomlConfigSettingsSource(cls, toml_file=path).toml_data
            return JsonConfigSettingsSource(cls, json_file=path).json_data
        except OSError as e:
            raise ConfigError(path.name, [f"cannot read {path}: {e}"]) from e
        # ValueError: bad syntax or encoding; TypeError, AttributeError: a JSON top level that is not an object
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(path.name, [f"{path} is not a {kind} table of settings: {e}"]) from e


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
}


def _message(error: Any) -> str:
    """A field error in a few words: pydantic's message, shortened for bounds and unknown keys."""
    template = _MESSAGES.get(error["type"])
    if template is not None:
        return template.format(**error.get("ctx", {}))
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _without(data: Mapping[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """`data` less the values at `paths` (a path into a value that is not a mapping drops that whole value)."""
    out = dict(data)
    heads: dict[str, set[tuple[str, ...]]] = {}
    for head, *rest in paths:
        heads.setdefault(head, set()).add(tuple(rest))
    for head, rests in heads.items():
        if head not in out:
            continue
        if () in rests or not isinstance(out[head], Mapping):
            del out[head]
        else:
            out[head] = _without(out[head], rests)
    return out


def _overlaps(field: str, bad: str) -> bool:
    """Whether a rule reading the dotted path `field` reads what failed at the dotted path `bad`."""
    return field == bad or field.startswith(bad + ".") or bad.startswith(field + ".")


def _file_source(settings_cls: type[FrozenConfig], path: Path, section: str) -> PydanticBaseSettingsSource:
    """The values of a config file (see `FrozenConfig._file_data`): its table named `section` when it has one (that
    must be a table), else its top level. A file that is missing, unreadable or not a table of settings is a
    ConfigError."""
    if not path.is_file():
        raise ConfigError(path.name, [f"cannot read {path}: no such file"])
    data = settings_cls._file_data(path)
    if not isinstance(data, dict):
        raise ConfigError(path.name, [f"{path} is not a table of settings: its top level is {type(data).__name__}"])
    if not section or section not in data:
        return InitSettingsSource(settings_cls, data)
    table = data[section]
    if table is None:  # the section's name with nothing under it (YAML, JSON null): the defaults
        return InitSettingsSource(settings_cls, {})
    if not isinstance(table, dict):
        raise ConfigError(path.name, [f"{section}: must be a table of settings, not {type(table).__name__}"])
    return InitSettingsSource(settings_cls, table)


class ProductionSafetyConfig(FrozenConfig):
    """Every safety switch and limit of a production Kasmina, with the spec's defaults and `validate_config` rules."""

    model_config = SettingsConfigDict(env_prefix="ESPER_SAFETY_")
    FILE_SECTION: ClassVar[str] = "production_safety"

    # Circuit breaker settings
    circuit_breaker_enabled: bool = True
    gradient_isolation_failure_threshold: int = 3
    memory_bounds_failure_threshold: int = 5
    kernel_loading_failure_threshold: int = 10
    circuit_breaker_timeout_ms: int = 60_000
    # C-024: checkpoint safety
    checkpoint_recompilation_threshold: int = 3
    teacher_memory_overflow_threshold: int = 2
    checkpoint_overhead_acceptable_ratio: float = 0.20
    torch_compile_stability_monitoring: bool = True
    max_recompilations: int = 5  # per session, before falling back to eager
    # Hardware timing
    hardware_timing_awareness: bool = True
    timing_constraint_enforcement: bool = True
    epoch_boundary_ms: int = 18
    # Memory management
    memory_management_enabled: bool = True
    emergency_cleanup_threshold: float = 0.90
    gc_frequency: int = 100
    # C-024: teacher memory
    teacher_memory_limit_gb: float = 7.0
    teacher_memory_monitoring: bool = True
    # Parameter registration
    parameter_registration_required: bool = True
    invariant_l2_enforcement: bool = True
    # Pause state
    pause_semantics_enabled: bool = True
    identity_kernel_enabled: bool = True
    max_pause_quota: int = 10_000  # ms of pause per reset interval
    pause_quota_reset_interval_ms: int = 60_000
    max_pause_duration_ms: int = 30_000  # a pause resumes by itself after this long
    # Leyline
    leyline_contracts_enabled: bool = True
    native_map_usage: bool = True
    target_serialization_time_us: int = 80
    target_message_size_bytes: int = 280

    def _broken_rules(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if self.leyline_contracts_enabled and not self.native_map_usage:
            yield (
                ("leyline_contracts_enabled", "native_map_usage"),
                "Leyline Option B requires native map usage (native_map_usage)",
            )
        for name in (
            "memory_management_enabled",
            "parameter_registration_required",
            "circuit_breaker_enabled",
            "hardware_timing_awareness",
        ):
            if not getattr(self, name):
                yield (name,), f"critical safety feature {name} must be enabled for production"
        if self.torch_compile_stability_monitoring:
            if self.checkpoint_recompilation_threshold < 1:
                yield (
                    ("torch_compile_stability_monitoring", "checkpoint_recompilation_threshold"),
                    "checkpoint_recompilation_threshold must be at least 1",
                )
            if self.checkpoint_overhead_acceptable_ratio > 0.30:
                yield (
                    ("torch_compile_stability_monitoring", "checkpoint_overhead_acceptable_ratio"),
                    "checkpoint_overhead_acceptable_ratio above 30% is unacceptable",
                )
        if self.target_message_size_bytes > 350:
            yield ("target_message_size_bytes",), "target_message_size_bytes exceeds the Leyline Option B limit of 350"
        if self.target_serialization_time_us > 120:
            yield (
                ("target_serialization_time_us",),
                "target_serialization_time_us exceeds the Leyline Option B limit of 120",
            )
        for name in (
            "gradient_isolation_failure_threshold",
            "memory_bounds_failure_threshold",
            "kernel_loading_failure_threshold",
            "teacher_memory_overflow_threshold",
            "gc_frequency",
            "circuit_breaker_timeout_ms",
            "pause_quota_reset_interval_ms",
            "max_pause_duration_ms",
            "epoch_boundary_ms",
        ):
            if getattr(self, name) < 1:
                yield (name,), f"{name} must be at least 1"
        if self.max_recompilations < 0:
            yield ("max_recompilations",), "max_recompilations must be >= 0"
        if self.max_pause_quota < 0:
            yield ("max_pause_quota",), "max_pause_quota must be >= 0"
        if not 0 < self.emergency_cleanup_threshold <= 1:
            yield ("emergency_cleanup_threshold",), "emergency_cleanup_threshold is a fraction in (0, 1]"
        if self.checkpoint_overhead_acceptable_ratio < 0:
            yield ("checkpoint_overhead_acceptable_ratio",), "checkpoint_overhead_acceptable_ratio must be >= 0"
        if self.teacher_memory_limit_gb <= 0:
            yield ("teacher_memory_limit_gb",), "teacher_memory_limit_gb must be > 0"

    def validate_config(self) -> bool:
        """The spec's check; construction already ran it, so a constructed config answers True."""
        problems = self.violations()
        if problems:
            raise ConfigError(type(self).__name__, problems)
        return True


class GraftingConfig(FrozenConfig):
    """How a seed is grafted: the spec's defaults, plus the alpha schedule used while blending."""

    model_config = SettingsConfigDict(env_prefix="ESPER_GRAFTING_")
    FILE_SECTION: ClassVar[str] = "grafting"

    fixed_steps: int = 30
    high_drift_threshold: float = 0.12
    grad_norm_lower: float = 0.1
    grad_norm_upper: float = 1.0
    stabilization_epochs: int = 5
    evaluation_patience: int = 10
    fine_tuning_patience: int = 50
    embargo_duration: int = 100
    reconstruction_threshold: float = 0.85
    performance_gate: float = 0.001
    isolation_temperature: float = 1.0
    alpha_schedule: AlphaSchedule = "linear"
    circuit_breaker_protection: bool = True
    memory_bounded_operations: bool = True
    timing_constraint_enforcement: bool = True
    parameter_registration_validation: bool = True
    leyline_telemetry_enabled: bool = True
    telemetry_reporting_frequency: int = 10

    def _broken_rules(self) -> Iterator[tuple[tuple[str, ...], str]]:
        if self.fixed_steps < 1:
            yield ("fixed_steps",), "fixed_steps must be at least 1"
        for name in ("stabilization_epochs", "evaluation_patience", "fine_tuning_patience", "embargo_duration"):
            if getattr(self, name) < 0:
                yield (name,), f"{name} must be >= 0"
        if self.high_drift_threshold < 0:
            yield ("high_drift_threshold",), "high_drift_threshold must be >= 0"
        if not 0 <= self.grad_norm_lower < self.grad_norm_upper:
            yield ("grad_norm_lower", "grad_norm_upper"), "grad_norm_lower must be >= 0 and below grad_norm_upper"
        if not 0 <= self.reconstruction_threshold <= 1:
            yield ("reconstruction_threshold",), "reconstruction_threshold is a fraction in [0, 1]"
        if self.performance_gate < 0:
            yield ("performance_gate",), "performance_gate must be >= 0"
        if self.isolation_temperature <= 0:
            yield ("isolation_temperature",), "isolation_temperature must be > 0"
        if self.telemetry_reporting_frequency < 1:
            yield ("telemetry_reporting_frequency",), "telemetry_reporting_frequency must be at least 1"

    def get_leyline_telemetry_config(self) -> dict[str, Any]:
        return {
            "enabled": self.leyline_telemetry_enabled,
            "reporting_frequency": self.telemetry_reporting_frequency,
            "metrics_to_report": [
                "grafting_progress",
                "alpha_blending_value",
                "performance_gate_status",
                "isolation_temperature",
                "memory_usage",
                "timing_constraints",
            ],
        }
