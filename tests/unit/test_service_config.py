"""TezzeretConfig: the spec's `tezzeret:` block loads as written; one error lists every problem; env overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.compiler.conservative import ConservativeLimits
from esper.compiler.service_config import TezzeretConfig
from esper.proto.enums import CompilationStrategy
from esper.safety.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tezzeret.yaml"
SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "seeds" / "tezzeret-compilation-forge.md"


@pytest.fixture(autouse=True)
def _no_tezzeret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ESPER_TEZZERET_"):
            monkeypatch.delenv(name)


def _problems(tmp_path: Path, text: str, name: str = "t.yaml") -> tuple[str, ...]:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        TezzeretConfig.load(f)
    return info.value.violations


def test_the_spec_block_as_written_loads_to_the_defaults() -> None:
    if SPEC.is_file():  # the example is the spec's block, verbatim
        spec = SPEC.read_text()
        assert EXAMPLE.read_text() in spec
    c = TezzeretConfig.load(EXAMPLE)
    assert c == TezzeretConfig(wal={"path": "/var/lib/esper/tezzeret/wal"})  # type: ignore[arg-type]
    assert c.compilation.max_concurrent_jobs == 2
    assert c.compilation.default_strategy is CompilationStrategy.STANDARD
    assert c.compilation.gpu_utilization_limit == 0.25
    assert (c.circuit_breakers.enabled, c.circuit_breakers.failure_threshold, c.circuit_breakers.timeout_ms) == (
        True,
        3,
        30_000,
    )
    cm = c.conservative_mode
    assert (cm.auto_enable, cm.gpu_threshold_percent, cm.threshold_duration_minutes) == (True, 20, 5)
    assert (c.wal.enabled, c.wal.path, c.wal.durability_mode) == (True, Path("/var/lib/esper/tezzeret/wal"), "O_DSYNC")
    assert (c.memory_management.ttl_cleanup_enabled, c.memory_management.cleanup_interval_seconds) == (True, 300)
    assert c.model_dump(mode="json")["compilation"]["default_strategy"] == "STANDARD"


def test_the_block_may_be_the_top_level_and_toml_or_json(tmp_path: Path) -> None:
    y = tmp_path / "bare.yml"
    y.write_text("compilation:\n  max_concurrent_jobs: 1\n  default_strategy: FAST\n")
    c = TezzeretConfig.load(y)
    assert (c.compilation.max_concurrent_jobs, c.compilation.default_strategy) == (1, CompilationStrategy.FAST)
    t = tmp_path / "esper.toml"
    t.write_text("[tezzeret.wal]\npath = '/srv/wal'\ndurability_mode = 'fdatasync'\n")
    assert TezzeretConfig.load(t).wal.durability_mode == "fdatasync"
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"tezzeret": {"circuit_breakers": {"timeout_ms": 5}}}))
    assert TezzeretConfig.load(j).circuit_breakers.timeout_ms == 5


def test_empty_files_and_an_empty_block_are_the_defaults(tmp_path: Path) -> None:
    for text in ("", "# nothing\n", "tezzeret:\n"):
        f = tmp_path / "t.yaml"
        f.write_text(text)
        assert TezzeretConfig.load(f) == TezzeretConfig()


def test_wal_path_unset_is_under_home() -> None:
    assert TezzeretConfig().wal.directory(Path("/h")) == Path("/h/tezzeret/wal")
    assert TezzeretConfig(wal={"path": "/srv/w"}).wal.directory(Path("/h")) == Path("/srv/w")  # type: ignore[arg-type]


def test_every_bad_value_of_every_section_is_listed_in_one_error(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """tezzeret:
  compilation:
    max_concurrent_jobs: 0
    default_strategy: SLOW
    enable_caching: maybe
    gpu_utilization_limit: 1.5
  circuit_breakers:
    enabled: true
    failure_threshold: 0
    timeout_ms: "soon"
  conservative_mode:
    gpu_threshold_percent: 0
    threshold_duration_minutes: -1
    memory_threshold: 1
    timeout_multiplier: 0.5
    memory_budget_multiplier: 2
  wal:
    path: ""
    durability_mode: O_SYNC
  memory_management:
    cleanup_interval_seconds: 0
    memory_budget_gb: 0
""",
    )
    assert problems == (
        "compilation.max_concurrent_jobs: must be >= 1",
        "compilation.default_strategy: must be one of EMERGENCY, FAST, STANDARD, AGGRESSIVE",
        "compilation.enable_caching: Input should be a valid boolean, unable to interpret input",
        "compilation.gpu_utilization_limit: must be <= 1.0",
        "circuit_breakers.failure_threshold: must be >= 1",
        "circuit_breakers.timeout_ms: Input should be a valid integer, unable to parse string as an integer",
        "conservative_mode.gpu_threshold_percent: must be > 0.0",
        "conservative_mode.threshold_duration_minutes: must be > 0.0",
        "conservative_mode.memory_threshold: must be < 1.0",
        "conservative_mode.timeout_multiplier: must be >= 1.0",
        "conservative_mode.memory_budget_multiplier: must be <= 1.0",
        "wal.path: must name a directory",
        "wal.durability_mode: Input should be 'O_DSYNC' or 'fdatasync'",
        "memory_management.cleanup_interval_seconds: must be > 0.0",
        "memory_management.memory_budget_gb: must be > 0.0",
    )


def test_conservative_mode_only_lowers_limits() -> None:
    with pytest.raises(ConfigError) as info:
        TezzeretConfig(
            conservative_mode={"max_concurrent_jobs": 3, "gpu_utilization_limit": 0.3, "cache_max_entries": 20_000},  # type: ignore[arg-type]
        )
    assert info.value.violations == (
        "conservative_mode.max_concurrent_jobs: must be <= compilation.max_concurrent_jobs (2)",
        "conservative_mode.gpu_utilization_limit: must be <= compilation.gpu_utilization_limit (0.25)",
        "conservative_mode.cache_max_entries: must be <= memory_management.cache_max_entries (16384)",
    )


def test_a_rule_still_runs_beside_a_bad_field_of_the_same_section() -> None:
    with pytest.raises(ConfigError) as info:
        TezzeretConfig(
            compilation={"enable_caching": "maybe"},  # type: ignore[arg-type]
            conservative_mode={"max_concurrent_jobs": 3, "gpu_utilization_limit": "x"},  # type: ignore[arg-type]
        )
    # the bad gpu_utilization_limit skips its own rule; the max_concurrent_jobs rule still runs
    assert len(info.value.violations) == 3
    assert info.value.violations[2].startswith("conservative_mode.max_concurrent_jobs: must be <=")


def test_the_sections_give_the_conservative_controllers_and_the_breakers_configs() -> None:
    assert TezzeretConfig().conservative_limits() == ConservativeLimits()
    breaker = TezzeretConfig().circuit_breakers.breaker_config()
    assert (breaker.failure_threshold, breaker.timeout_ms) == (3, 30_000)
    limits = TezzeretConfig(
        compilation={"max_concurrent_jobs": 4, "gpu_utilization_limit": 0.5},  # type: ignore[arg-type]
        conservative_mode={"threshold_duration_minutes": 0.5, "memory_budget_multiplier": 0.25},  # type: ignore[arg-type]
        memory_management={"memory_budget_gb": 8},  # type: ignore[arg-type]
    ).conservative_limits()
    assert (limits.normal.max_concurrent_jobs, limits.normal.gpu_ceiling_percent) == (4, 50.0)
    assert limits.threshold_duration_ms == 30_000
    assert (limits.normal.memory_budget_bytes, limits.conservative.memory_budget_bytes) == (8 << 30, 2 << 30)


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, "tezzeret:\n  compilation:\n    max_concurent_jobs: 1\n  wall:\n    enabled: false\n"
    )
    assert problems == ("compilation.max_concurent_jobs: unknown key", "wall: unknown key")


def test_env_overrides_nested_fields_and_keywords_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_TEZZERET_COMPILATION__MAX_CONCURRENT_JOBS", "1")
    monkeypatch.setenv("ESPER_TEZZERET_COMPILATION__DEFAULT_STRATEGY", "AGGRESSIVE")
    monkeypatch.setenv("ESPER_TEZZERET_WAL__PATH", "/env/wal")
    c = TezzeretConfig.load(EXAMPLE)
    assert (c.compilation.max_concurrent_jobs, c.compilation.default_strategy) == (1, CompilationStrategy.AGGRESSIVE)
    assert c.compilation.gpu_utilization_limit == 0.25  # the rest of the file's section is kept
    assert c.wal.path == Path("/env/wal")
    assert TezzeretConfig.load().wal.path == Path("/env/wal")  # the environment without a file
    assert TezzeretConfig().wal.path is None  # a config built in code does not read the environment
    k = TezzeretConfig.load(EXAMPLE, circuit_breakers={"enabled": False}, compilation={"enable_caching": False})
    assert not k.circuit_breakers.enabled and k.circuit_breakers.failure_threshold == 3
    # keywords, the environment and the file merge field by field
    assert (k.compilation.enable_caching, k.compilation.max_concurrent_jobs) == (False, 1)
    assert k.compilation.gpu_utilization_limit == 0.25


def test_bad_env_values_and_env_typos_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_TEZZERET_CIRCUIT_BREAKERS__TIMEOUT_MS", "-5")
    monkeypatch.setenv("ESPER_TEZZERET_MEMORY_MANAGEMENT__TTL_CLEANUP", "false")
    monkeypatch.setenv("ESPER_TEZZERET_WALL__ENABLED", "false")
    with pytest.raises(ConfigError) as info:
        TezzeretConfig.load()
    assert set(info.value.violations) == {
        "circuit_breakers.timeout_ms: must be >= 1",
        "memory_management.ttl_cleanup: unknown key",
        "ESPER_TEZZERET_WALL__ENABLED: unknown key",
    }
    assert TezzeretConfig().wal.enabled  # built in code, the environment is not read at all


@pytest.mark.parametrize(
    "text",
    [
        "- compilation\n- wal\n",  # a list
        "just words\n",  # a scalar
        "tezzeret: [1, 2]\n",  # a block that is not a mapping
        "compilation: &c {max_concurrent_jobs: 1}\nwal: *c\n",  # anchors and aliases
        "compilation: !!python/object:os.system {}\n",  # a Python tag
        "compilation: {}\ncompilation: {}\n",  # a duplicate key
        "compilation: [unclosed\n",  # not YAML
    ],
)
def test_a_file_that_is_not_a_mapping_of_settings_is_a_config_error(tmp_path: Path, text: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        TezzeretConfig.load(f)
    assert info.value.config_name == "t.yaml"  # refused as a file, before any field is read


def test_files_missing_or_too_large_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        TezzeretConfig.load(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="over the limit"):
        TezzeretConfig.load(big)


def test_the_config_is_frozen() -> None:
    c = TezzeretConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        c.compilation.max_concurrent_jobs = 5
