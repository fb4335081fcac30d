"""ProductionSafetyConfig and GraftingConfig: spec defaults, one error listing every rule, file and env loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.exceptions import ConfigError
from esper.settings import load_settings


def test_spec_defaults() -> None:
    c = ProductionSafetyConfig()
    assert c.validate_config() is True
    assert (c.teacher_memory_limit_gb, c.checkpoint_overhead_acceptable_ratio, c.max_pause_quota) == (7.0, 0.20, 10_000)
    assert (c.epoch_boundary_ms, c.target_message_size_bytes, c.target_serialization_time_us) == (18, 280, 80)
    g = GraftingConfig()
    assert (g.fixed_steps, g.embargo_duration, g.performance_gate, g.isolation_temperature) == (30, 100, 0.001, 1.0)
    assert g.get_leyline_telemetry_config()["reporting_frequency"] == 10


def test_configs_are_frozen() -> None:
    c = ProductionSafetyConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        c.epoch_boundary_ms = 5


def test_every_validate_config_rule_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        ProductionSafetyConfig(
            native_map_usage=False,
            memory_management_enabled=False,
            parameter_registration_required=False,
            circuit_breaker_enabled=False,
            hardware_timing_awareness=False,
            checkpoint_recompilation_threshold=0,
            checkpoint_overhead_acceptable_ratio=0.31,
            target_message_size_bytes=351,
            target_serialization_time_us=121,
        )
    text = "\n".join(info.value.violations)
    assert len(info.value.violations) == 9
    for needle in (
        "native map",
        "memory_management_enabled",
        "circuit_breaker_enabled",
        "hardware_timing_awareness",
        "parameter_registration_required",
        "recompilation_threshold",
        "30%",
        "350",
        "120",
    ):
        assert needle in text


def test_checkpoint_rules_apply_only_with_stability_monitoring() -> None:
    c = ProductionSafetyConfig(torch_compile_stability_monitoring=False, checkpoint_overhead_acceptable_ratio=0.5)
    assert c.checkpoint_overhead_acceptable_ratio == 0.5


def test_type_errors_are_listed_too() -> None:
    with pytest.raises(ConfigError) as info:
        GraftingConfig(fixed_steps="many", alpha_schedule="cubic", unknown=1)  # type: ignore[arg-type, call-arg]
    assert len(info.value.violations) == 3


def test_type_errors_and_rule_violations_are_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        ProductionSafetyConfig(gc_frequency="often", native_map_usage=False, target_message_size_bytes=400)  # type: ignore[arg-type]
    problems = info.value.violations
    assert len(problems) == 3 and problems[0].startswith("gc_frequency:")
    assert any("native map" in p for p in problems) and any("350" in p for p in problems)
    # a rule that reads a field that failed to validate is left out (it would judge the default, not the value)
    with pytest.raises(ConfigError) as info:
        GraftingConfig(grad_norm_upper="high", grad_norm_lower=2.0, fixed_steps=0)  # type: ignore[arg-type]
    assert len(info.value.violations) == 2 and "fixed_steps must be at least 1" in info.value.violations


def test_grafting_rules() -> None:
    with pytest.raises(ConfigError) as info:
        GraftingConfig(fixed_steps=0, grad_norm_lower=2.0, isolation_temperature=0, reconstruction_threshold=1.5)
    assert len(info.value.violations) == 4


def test_load_from_toml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "esper.toml"
    f.write_text("[grafting]\nfixed_steps = 12\nalpha_schedule = 'cosine'\nembargo_duration = 7\n")
    monkeypatch.setenv("ESPER_GRAFTING_FIXED_STEPS", "20")
    monkeypatch.setenv("ESPER_GRAFTING_ISOLATION_TEMPERATURE", "0.5")
    g = GraftingConfig.load(f, embargo_duration=3)
    assert (g.fixed_steps, g.alpha_schedule, g.isolation_temperature, g.embargo_duration) == (20, "cosine", 0.5, 3)
    assert GraftingConfig.load().fixed_steps == 20  # the environment without a file


def test_load_from_json_and_env_errors_are_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "safety.json"
    f.write_text(json.dumps({"teacher_memory_limit_gb": 5.5}))
    assert ProductionSafetyConfig.load(f).teacher_memory_limit_gb == 5.5
    monkeypatch.setenv("ESPER_SAFETY_NATIVE_MAP_USAGE", "false")
    monkeypatch.setenv("ESPER_SAFETY_GC_FREQUENCY", "often")
    with pytest.raises(ConfigError) as info:
        ProductionSafetyConfig.load(f)
    assert len(info.value.violations) == 2 and info.value.violations[0].startswith("gc_frequency:")


def test_a_config_built_in_code_holds_only_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_SAFETY_MAX_PAUSE_QUOTA", "5")
    assert ProductionSafetyConfig().max_pause_quota == 10_000
    assert ProductionSafetyConfig(epoch_boundary_ms=9).max_pause_quota == 10_000
    assert ProductionSafetyConfig.load().max_pause_quota == 5


def test_one_esper_toml_serves_every_settings_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "esper.toml"
    f.write_text(
        'bootstrap_servers = "file:9092"\n[production_safety]\nmax_pause_quota = 7\n[grafting]\nfixed_steps = 4\n'
    )
    monkeypatch.setenv("ESPER_CONFIG", str(f))
    monkeypatch.delenv("ESPER_BOOTSTRAP_SERVERS", raising=False)
    assert load_settings().bootstrap_servers == "file:9092"
    assert ProductionSafetyConfig.load(f).max_pause_quota == 7
    assert GraftingConfig.load(f).fixed_steps == 4


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.toml", "= nope"),
        ("bad.json", "{nope"),
        ("list.json", "[1, 2]"),
        ("number.json", "3"),
        ("latin1.json", b'{"fixed_steps": "\xe9"}'),
    ],
)
def test_a_file_that_is_not_a_table_of_settings_is_a_config_error(tmp_path: Path, name: str, text: str | bytes) -> None:
    f = tmp_path / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    with pytest.raises(ConfigError) as info:
        GraftingConfig.load(f)
    assert info.value.config_name == name


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        GraftingConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="no such file"):
        GraftingConfig.load(tmp_path)  # a directory
