"""The spec's integration contract (section 5.1) runs unchanged against one facade, KasminaSafetyMechanisms."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest
import torch

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import CircuitBreakerConfig
from esper.safety.clock import ManualClock
from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.contract import KasminaSafetyMechanisms, SafetyMechanismsContract
from esper.safety.events import detail_kind
from esper.safety.exceptions import (
    ConfigError,
    InvalidPauseError,
    NotPausedError,
    PauseRefusedError,
    UnknownBreakerError,
)
from esper.safety.timing import HardwareTimingProfile
from tests.sinks import MemorySink

# Section 5.1 of the spec, verbatim. Its methods have no bodies (not Python): the signature test below adds ": ..."
# to each `def` line before parsing it, and changes nothing else.
SPEC_LISTING = '''
@dataclass
class SafetyMechanismsContract:
    """Interface contract for safety mechanisms component with C-024 support"""

    # Circuit breaker methods
    def create_circuit_breaker(self, name: str, config: CircuitBreakerConfig) -> KasminaCircuitBreaker
    def safe_assert_replacement(self, condition: bool, message: str, circuit_breaker: KasminaCircuitBreaker) -> bool
    def get_circuit_breaker_stats(self, name: str) -> Dict[str, Any]

    # C-024: Checkpoint safety methods
    def monitor_checkpoint_recompilation(self) -> bool
    def validate_checkpoint_overhead(self, forward_time_ms: float, checkpoint_time_ms: float) -> bool
    def monitor_teacher_memory(self, current_usage_gb: float, limit_gb: float = 7.0) -> bool
    def handle_checkpoint_failure(self, error: Exception) -> bool
    def get_checkpoint_safety_stats(self) -> Dict[str, Any]

    # Hardware-aware timing methods
    def validate_timing_constraint(self, actual_duration_ms: float, constraint_ms: float, operation: str) -> bool
    def validate_checkpoint_timing(self, checkpoint_time_ms: float, base_time_ms: float) -> bool
    def validate_teacher_loading_time(self, loading_time_ms: float) -> bool
    def get_hardware_profile(self) -> HardwareTimingProfile
    def record_performance_metric(self, metric_name: str, duration_ms: float) -> None

    # Pause state methods
    def enter_pause_with_identity_kernel(self, reason: str, quota: int = 1000) -> bool
    def get_identity_kernel_output(self, input_tensor: torch.Tensor) -> torch.Tensor
    def exit_pause(self) -> bool
    def get_pause_stats(self) -> Dict[str, Any]

    # Configuration methods
    def validate_safety_config(self, config: ProductionSafetyConfig) -> bool
    def update_grafting_config(self, config: GraftingConfig) -> None

    # Leyline integration methods
    def report_to_leyline_telemetry(self, event_data: Dict[str, Any]) -> None
'''

# The listing's defaults that are magic numbers the facade takes from the config (None: the config's value).
CONFIG_DEFAULTS = {("monitor_teacher_memory", "limit_gb"): 7.0, ("enter_pause_with_identity_kernel", "quota"): 1000}

SPEC_BREAKER_STATS = {
    "name",
    "state",
    "total_calls",
    "total_successes",
    "total_failures",
    "current_failure_count",
    "current_success_count",
    "success_rate",
    "state_transition_count",
    "last_failure_time_ms",
}
SPEC_PAUSE_STATS = {"is_paused", "pause_reason", "pause_duration_ms", "identity_kernel_active", "pause_quota_remaining"}


class Published:
    """A TelemetryPublisher that keeps what it is given."""

    def __init__(self) -> None:
        self.packets: list[pb.TelemetryPacket] = []

    def publish(self, packet: pb.TelemetryPacket) -> None:
        self.packets.append(packet)


def facade(
    clock: ManualClock | None = None,
    sink: MemorySink | None = None,
    telemetry: Published | None = None,
    multiplier: float = 1.0,
    **safety: Any,
) -> KasminaSafetyMechanisms:
    return KasminaSafetyMechanisms(
        "kasmina-0",
        safety=ProductionSafetyConfig(**safety),
        sink=sink,
        telemetry=telemetry,
        clock=clock or ManualClock(),
        profile=HardwareTimingProfile(cpu_architecture="test", gpu_architecture="none", timing_multiplier=multiplier),
    )


def spec_methods() -> list[ast.FunctionDef]:
    lines = [f"{line.strip()}: ..." for line in SPEC_LISTING.splitlines() if line.strip().startswith("def ")]
    return [node for node in ast.parse("\n".join(lines)).body if isinstance(node, ast.FunctionDef)]


def test_the_facade_has_every_method_of_the_listing_with_its_arguments_and_defaults() -> None:
    methods = spec_methods()
    assert len(methods) == 20
    members = inspect.getmembers(SafetyMechanismsContract, inspect.isfunction)
    contract_methods = {name for name, _ in members if not name.startswith("_")}
    assert contract_methods == {m.name for m in methods}
    for method in methods:
        spec_args = [a.arg for a in method.args.args]
        defaults = [ast.literal_eval(d) for d in method.args.defaults]
        spec_defaults = dict(zip(spec_args[len(spec_args) - len(defaults) :], defaults, strict=True))
        for cls in (KasminaSafetyMechanisms, SafetyMechanismsContract):
            params = inspect.signature(getattr(cls, method.name)).parameters
            assert list(params) == spec_args, (cls.__name__, method.name)
            for name, default in spec_defaults.items():
                if (method.name, name) in CONFIG_DEFAULTS:
                    assert default == CONFIG_DEFAULTS[method.name, name] and params[name].default is None
                else:
                    assert params[name].default == default, (cls.__name__, method.name, name)


def test_the_listing_call_sequence_runs_against_the_facade() -> None:
    """The spec has no usage example: this is the listing's own sequence, each method in its order, called with
    the listing's argument names."""
    clock, sink, published = ManualClock(), MemorySink(), Published()
    safety: SafetyMechanismsContract = facade(clock, sink, published)
    assert isinstance(safety, SafetyMechanismsContract)

    # Circuit breaker methods
    breaker = safety.create_circuit_breaker(
        name="kernel_fetch", config=CircuitBreakerConfig(failure_threshold=2, timeout_ms=1000, success_threshold=1)
    )
    assert safety.safe_assert_replacement(condition=True, message="shapes match", circuit_breaker=breaker) is True
    assert safety.safe_assert_replacement(condition=False, message="shape mismatch", circuit_breaker=breaker) is False
    assert safety.safe_assert_replacement(condition=False, message="shape mismatch", circuit_breaker=breaker) is False
    stats = safety.get_circuit_breaker_stats(name="kernel_fetch")
    assert (stats["state"], stats["total_calls"], stats["total_failures"], stats["state_transition_count"]) == (
        "open",
        3,
        2,
        1,
    )

    # C-024: Checkpoint safety methods
    assert safety.monitor_checkpoint_recompilation() is True
    assert safety.validate_checkpoint_overhead(forward_time_ms=10.0, checkpoint_time_ms=11.5) is True
    assert safety.monitor_teacher_memory(current_usage_gb=3.5, limit_gb=7.0) is True
    assert safety.handle_checkpoint_failure(error=RuntimeError("use_reentrant")) is True
    checkpoint_stats = safety.get_checkpoint_safety_stats()
    assert checkpoint_stats["recompilation_count"] == 1 and checkpoint_stats["avg_checkpoint_overhead_ms"] == 1.5
    assert (checkpoint_stats["checkpoint_breaker_state"], checkpoint_stats["teacher_memory_breaker_state"]) == (
        "closed",
        "closed",
    )

    # Hardware-aware timing methods
    assert safety.validate_timing_constraint(actual_duration_ms=12.0, constraint_ms=18.0, operation="epoch") is True
    assert safety.validate_checkpoint_timing(checkpoint_time_ms=11.0, base_time_ms=10.0) is True
    assert safety.validate_teacher_loading_time(loading_time_ms=1200.0) is True
    assert safety.get_hardware_profile().epoch_boundary_ms == 18
    assert safety.record_performance_metric(metric_name="kernel_load_time_ms", duration_ms=3.2) is None  # type: ignore[func-returns-value]

    # Pause state methods
    assert safety.enter_pause_with_identity_kernel(reason="operator maintenance", quota=1000) is True
    x = torch.randn(2, 3)
    assert safety.get_identity_kernel_output(input_tensor=x) is x
    assert safety.exit_pause() is True
    pause_stats = safety.get_pause_stats()
    assert pause_stats.keys() >= SPEC_PAUSE_STATS and pause_stats["is_paused"] is False

    # Configuration methods
    assert safety.validate_safety_config(config=ProductionSafetyConfig()) is True
    assert safety.update_grafting_config(config=GraftingConfig(fixed_steps=10)) is None  # type: ignore[func-returns-value]

    # Leyline integration methods
    safety.report_to_leyline_telemetry(event_data={"event_name": "seed_grafted", "slot": "slot-0"})

    kinds = [detail_kind(e) for e in sink.events]
    for kind in ("breaker_failure", "breaker_transition", "checkpoint_recompilation", "checkpoint_fallback"):
        assert kind in kinds
    assert kinds[-3:] == ["quota_decision", "pause_entered", "pause_exited"]
    (packet,) = published.packets
    assert packet.events[0].event_name == "seed_grafted" and dict(packet.events[0].attributes) == {"slot": "slot-0"}


def test_breaker_stats_are_the_spec_dict_with_its_state_names() -> None:
    clock = ManualClock()
    safety = facade(clock)
    config = CircuitBreakerConfig(failure_threshold=1, timeout_ms=100, success_threshold=2)
    breaker = safety.create_circuit_breaker("probe", config)
    stats = safety.get_circuit_breaker_stats("probe")
    assert stats.keys() >= SPEC_BREAKER_STATS and stats["state"] == "closed" and stats["name"] == "probe"
    safety.safe_assert_replacement(False, "bad", breaker)
    assert safety.get_circuit_breaker_stats("probe")["state"] == "open"
    assert safety.safe_assert_replacement(True, "rejected while open", breaker) is False
    assert safety.get_circuit_breaker_stats("probe")["total_rejected"] == 1
    clock.advance(100)
    safety.safe_assert_replacement(True, "first probe", breaker)
    assert safety.get_circuit_breaker_stats("probe")["state"] == "half_open"
    safety.safe_assert_replacement(True, "second probe", breaker)
    stats = safety.get_circuit_breaker_stats("probe")
    assert (stats["state"], stats["state_transition_count"]) == ("closed", 3)
    breaker.transition_to_forced_open()
    assert safety.get_circuit_breaker_stats("probe")["state"] == "forced_open"


def test_breakers_are_one_per_name_and_unknown_names_are_typed_errors() -> None:
    safety = facade()
    config = CircuitBreakerConfig(failure_threshold=2)
    assert safety.create_circuit_breaker("x", config) is safety.create_circuit_breaker("x", config)
    # the spec's named breakers exist already, with the spec's thresholds and timeouts
    spec_config = CircuitBreakerConfig(failure_threshold=2, timeout_ms=180_000)
    assert (
        safety.create_circuit_breaker("teacher_memory_overflow", spec_config)
        is safety.checkpoint.teacher_memory_breaker
    )
    with pytest.raises(ConfigError, match="already exists"):
        safety.create_circuit_breaker("x", CircuitBreakerConfig(failure_threshold=3))
    with pytest.raises(UnknownBreakerError):
        safety.get_circuit_breaker_stats("nope")


def test_checkpoint_limits_are_false_with_the_breaker_states_in_the_spec_names() -> None:
    sink = MemorySink()
    safety = facade(sink=sink, max_recompilations=0, teacher_memory_limit_gb=2.0)
    assert safety.monitor_checkpoint_recompilation() is False
    assert safety.get_checkpoint_safety_stats()["checkpoint_breaker_state"] == "open"
    assert safety.monitor_teacher_memory(current_usage_gb=2.5) is False  # the config's limit, not the spec's 7.0
    assert safety.monitor_teacher_memory(current_usage_gb=2.5, limit_gb=7.0) is True
    assert safety.handle_checkpoint_failure(KeyError("not recoverable")) is False
    assert safety.validate_checkpoint_overhead(forward_time_ms=10.0, checkpoint_time_ms=14.0) is False  # 40%
    assert sink.of_kind("checkpoint_overhead")[-1].checkpoint_overhead.critical


def test_timing_scales_with_the_profile_and_unknown_metrics_are_typed_errors() -> None:
    sink = MemorySink()
    safety = facade(sink=sink, multiplier=0.5)
    assert safety.validate_timing_constraint(actual_duration_ms=10.0, constraint_ms=18.0, operation="epoch") is False
    assert sink.of_kind("timing_violation")[-1].timing_violation.operation == "epoch"
    assert safety.validate_teacher_loading_time(loading_time_ms=6000.0) is False
    with pytest.raises(KeyError):
        safety.record_performance_metric("made_up_ms", 1.0)
    safety.record_performance_metric("kernel_load_time_ms", 2.5)
    assert safety.performance.metrics == {"kernel_load_time_ms": 2.5}


def test_the_granted_quota_bounds_the_pause() -> None:
    clock = ManualClock()
    safety = facade(clock, max_pause_quota=800)
    assert safety.enter_pause_with_identity_kernel("ops", quota=500) is True
    assert safety.get_pause_stats()["pause_quota_remaining"] == 500
    clock.advance(500)
    assert safety.get_pause_stats()["is_paused"] is False  # ended by itself
    assert safety.exit_pause() is False
    with pytest.raises(NotPausedError):
        safety.get_identity_kernel_output(torch.ones(1))
    assert safety.enter_pause_with_identity_kernel("ops", quota=500) is True  # a partial grant: 300 ms left
    assert safety.get_pause_stats()["pause_quota_remaining"] == 300
    assert safety.exit_pause() is True
    with pytest.raises(PauseRefusedError, match="no pause quota left"):
        safety.enter_pause_with_identity_kernel("ops", quota=500)
    assert safety.get_pause_stats()["is_paused"] is False


def test_a_pause_without_quota_asks_for_the_configured_maximum() -> None:
    safety = facade(max_pause_duration_ms=2000)
    assert safety.enter_pause_with_identity_kernel("ops") is True
    assert safety.get_pause_stats()["pause_quota_remaining"] == 2000
    assert safety.quota.remaining == 10_000 - 2000


def test_refused_and_repeated_pauses_spend_no_quota() -> None:
    safety = facade()
    assert safety.enter_pause_with_identity_kernel("ops", quota=100) is True
    assert safety.enter_pause_with_identity_kernel("again", quota=100) is False  # the pause in force is kept
    assert safety.quota.remaining == 10_000 - 100 and safety.get_pause_stats()["pause_reason"] == "ops"
    for quota in (0, -5):
        with pytest.raises(InvalidPauseError):
            safety.enter_pause_with_identity_kernel("bad", quota=quota)
    disabled = facade(identity_kernel_enabled=False)
    with pytest.raises(PauseRefusedError, match="identity_kernel_enabled"):
        disabled.enter_pause_with_identity_kernel("ops", quota=100)
    assert disabled.quota.remaining == 10_000 and not disabled.pause.is_paused


def test_the_identity_kernel_is_refused_outside_a_pause() -> None:
    with pytest.raises(NotPausedError):
        facade().get_identity_kernel_output(torch.ones(2))


def test_configuration_methods_raise_typed_errors() -> None:
    safety = facade()
    # model_construct skips validation: a config that bypassed it is judged by validate_safety_config
    broken = ProductionSafetyConfig.model_construct(native_map_usage=False, gc_frequency=0)
    with pytest.raises(ConfigError) as info:
        safety.validate_safety_config(broken)
    assert len(info.value.violations) == 2
    grafting = GraftingConfig(fixed_steps=7)
    safety.update_grafting_config(grafting)
    assert safety.grafting is grafting
    with pytest.raises(TypeError):
        safety.update_grafting_config({"fixed_steps": 7})  # type: ignore[arg-type]
    assert safety.grafting is grafting


def test_report_to_leyline_telemetry_builds_one_event() -> None:
    published = Published()
    safety = facade(telemetry=published)
    safety.report_to_leyline_telemetry(
        {"event_name": "drift", "severity": "TELEMETRY_WARN", "message": "high drift", "drift": 0.2}
    )
    safety.report_to_leyline_telemetry({"event_name": "gate", "severity": pb.TELEMETRY_ERROR})
    first, second = published.packets
    event = first.events[0]
    assert (event.event_name, event.severity, event.message) == ("drift", pb.TELEMETRY_WARN, "high drift")
    assert dict(event.attributes) == {"drift": "0.2"} and first.source_id == "kasmina-0"
    assert (second.events[0].severity, second.level) == (pb.TELEMETRY_ERROR, pb.TELEMETRY_ERROR)
    for bad in ({"message": "no name"}, {"event_name": ""}, {"event_name": "x", "severity": "loud"}):
        with pytest.raises(ValueError):
            safety.report_to_leyline_telemetry(bad)
    for severity in (99, True):
        with pytest.raises(ValueError):
            safety.report_to_leyline_telemetry({"event_name": "x", "severity": severity})
    assert len(published.packets) == 2
