"""The spec's integration contract (section 5.1 of the Kasmina safety spec) and the one facade that answers it.

`SafetyMechanismsContract` is the listing as a Protocol (the listing is a `@dataclass` of methods without bodies,
which is not Python). `KasminaSafetyMechanisms` implements it by delegating to the real components: the breaker
registry and `safe_assert`, the checkpoint safety manager, the hardware-aware timing validator, a pause controller
metered by the pause quota, the configs, and telemetry through a publisher (a KasminaClient is both its event sink
and its publisher). Stats are the spec's dicts, with breaker states in the spec's lower-case names ("closed",
"open", "half_open"; and "forced_open", "disabled", "metrics_only" for the states the spec lacks).

Where the listing's defaults are magic numbers the facade takes them from the config instead: `monitor_teacher_memory`
without `limit_gb` uses `teacher_memory_limit_gb` (the spec's 7.0 by default), and `enter_pause_with_identity_kernel`
without `quota` asks for `max_pause_duration_ms` (the spec's quota of 1000 counted identity-kernel calls; ours is
milliseconds of pause, and a pause asked without one lasts as long as the config allows, as a pause command's does).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, CircuitState, safe_assert
from esper.safety.checkpoint import CheckpointSafetyManager
from esper.safety.clock import Clock, monotonic_ms
from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.events import EventSink, NullSink, telemetry_event, telemetry_packet
from esper.safety.exceptions import ConfigError, PauseRefusedError
from esper.safety.pause import PauseController, PauseQuota, require_pause_allowed
from esper.safety.timing import HardwareAwareTimingValidator, HardwareTimingProfile, StandardizedPerformanceMetrics

__all__ = [
    "KasminaCircuitBreaker",
    "KasminaSafetyMechanisms",
    "SafetyMechanismsContract",
    "TelemetryPublisher",
    "breaker_state_name",
]

# The spec's name for the breaker it returns.
KasminaCircuitBreaker = CircuitBreaker

# The fields of a TelemetryEvent that `report_to_leyline_telemetry` reads from its dict; the other keys are attributes.
_EVENT_FIELDS = frozenset({"event_name", "severity", "message"})


@runtime_checkable
class SafetyMechanismsContract(Protocol):
    """The safety mechanisms' interface, as section 5.1 lists it (defaults: see the module's docstring)."""

    # Circuit breaker methods
    def create_circuit_breaker(self, name: str, config: CircuitBreakerConfig) -> KasminaCircuitBreaker: ...
    def safe_assert_replacement(
        self, condition: bool, message: str, circuit_breaker: KasminaCircuitBreaker
    ) -> bool: ...
    def get_circuit_breaker_stats(self, name: str) -> dict[str, Any]: ...

    # C-024: Checkpoint safety methods
    def monitor_checkpoint_recompilation(self) -> bool: ...
    def validate_checkpoint_overhead(self, forward_time_ms: float, checkpoint_time_ms: float) -> bool: ...
    def monitor_teacher_memory(self, current_usage_gb: float, limit_gb: float | None = None) -> bool: ...
    def handle_checkpoint_failure(self, error: Exception) -> bool: ...
    def get_checkpoint_safety_stats(self) -> dict[str, Any]: ...

    # Hardware-aware timing methods
    def validate_timing_constraint(self, actual_duration_ms: float, constraint_ms: float, operation: str) -> bool: ...
    def validate_checkpoint_timing(self, checkpoint_time_ms: float, base_time_ms: float) -> bool: ...
    def validate_teacher_loading_time(self, loading_time_ms: float) -> bool: ...
    def get_hardware_profile(self) -> HardwareTimingProfile: ...
    def record_performance_metric(self, metric_name: str, duration_ms: float) -> None: ...

    # Pause state methods
    def enter_pause_with_identity_kernel(self, reason: str, quota: int | None = None) -> bool: ...
    def get_identity_kernel_output(self, input_tensor: torch.Tensor) -> torch.Tensor: ...
    def exit_pause(self) -> bool: ...
    def get_pause_stats(self) -> dict[str, Any]: ...

    # Configuration methods
    def validate_safety_config(self, config: ProductionSafetyConfig) -> bool: ...
    def update_grafting_config(self, config: GraftingConfig) -> None: ...

    # Leyline integration methods
    def report_to_leyline_telemetry(self, event_data: dict[str, Any]) -> None: ...


class TelemetryPublisher(Protocol):
    """Where telemetry packets go (a KasminaClient); `publish` must return at once, like an EventSink's `emit`."""

    def publish(self, packet: pb.TelemetryPacket) -> None: ...


class _NoTelemetry:
    """Discards packets: the publisher where nobody listens (as NullSink is for events)."""

    def publish(self, packet: pb.TelemetryPacket) -> None:
        del packet


def breaker_state_name(state: CircuitState) -> str:
    """A breaker state as the spec writes it: "closed", "open", "half_open" (and our extra states alike)."""
    return state.name.lower()


class KasminaSafetyMechanisms:
    """The spec's safety-mechanisms component for one Kasmina instance: one object, the real components behind it.

    Each part is public for code that wants more than the contract: `breakers`, `checkpoint`, `timing`, `pause`,
    `quota`, `performance`. Pass the client's `PauseQuota` as `quota` when a KasminaClient also pauses this
    instance's slots, so that both spend one quota. Failures are typed errors, never a None in place of a result.
    """

    def __init__(
        self,
        instance_id: str,
        *,
        safety: ProductionSafetyConfig | None = None,
        grafting: GraftingConfig | None = None,
        sink: EventSink | None = None,
        telemetry: TelemetryPublisher | None = None,
        breakers: BreakerRegistry | None = None,
        quota: PauseQuota | None = None,
        profile: HardwareTimingProfile | None = None,
        teacher: nn.Module | torch.device | str | None = None,
        clock: Clock = monotonic_ms,
    ) -> None:
        self.instance_id = instance_id
        self.safety = safety or ProductionSafetyConfig()
        self.grafting = grafting or GraftingConfig()
        self._sink: EventSink = sink or NullSink()
        self._telemetry: TelemetryPublisher = telemetry or _NoTelemetry()
        self.breakers = breakers or BreakerRegistry.with_spec_breakers(
            self.safety, clock=clock, sink=self._sink, source_id=instance_id
        )
        self.checkpoint = CheckpointSafetyManager(
            self.breakers, self.safety, sink=self._sink, source_id=instance_id, teacher=teacher
        )
        self.timing = HardwareAwareTimingValidator(
            profile, config=self.safety, sink=self._sink, checkpoint=self.checkpoint, source_id=instance_id
        )
        self.pause = PauseController(instance_id, config=self.safety, clock=clock, sink=self._sink)
        self.quota = quota or PauseQuota(self.safety, clock=clock, sink=self._sink, source_id=instance_id)
        self.performance = StandardizedPerformanceMetrics({"instance": instance_id})
        # One pause request at a time: its checks, its quota and its entry (quota spent only for a pause entered).
        self._pause_lock = threading.Lock()

    # -- circuit breakers ----------------------------------------------------------------------------------

    def create_circuit_breaker(self, name: str, config: CircuitBreakerConfig) -> KasminaCircuitBreaker:
        """The registry's breaker of that name, created with `config` unless it exists; a breaker that exists
        with another config is a ConfigError (it would not decide as the caller asked)."""
        breaker = self.breakers.get_or_create(name, config)
        if breaker.config != config:
            raise ConfigError(
                "CircuitBreakerConfig", [f"breaker {name!r} already exists with another config: {breaker.config}"]
            )
        return breaker

    def safe_assert_replacement(self, condition: bool, message: str, circuit_breaker: KasminaCircuitBreaker) -> bool:
        """True when the condition holds; False (a recorded failure, or a rejection while open), never a crash."""
        return safe_assert(condition, message, circuit_breaker)

    def get_circuit_breaker_stats(self, name: str) -> dict[str, Any]:
        """The spec's stats dict (and total_rejected, failure_rate, slow_call_rate); UnknownBreakerError for a name
        the registry does not hold."""
        stats = self.breakers.get(name).get_stats()
        values: dict[str, Any] = {f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields}
        values["state"] = breaker_state_name(CircuitState(stats.state))
        return values

    # -- C-024 checkpoint safety ---------------------------------------------------------------------------

    def monitor_checkpoint_recompilation(self) -> bool:
        return self.checkpoint.monitor_checkpoint_recompilation()

    def validate_checkpoint_overhead(self, forward_time_ms: float, checkpoint_time_ms: float) -> bool:
        return self.checkpoint.validate_checkpoint_overhead(forward_time_ms, checkpoint_time_ms)

    def monitor_teacher_memory(self, current_usage_gb: float | None = None, limit_gb: float | None = None) -> bool:
        """Without `current_usage_gb` a real reading of the teacher's device; without `limit_gb` the config's."""
        return self.checkpoint.monitor_teacher_memory(current_usage_gb, limit_gb)

    def handle_checkpoint_failure(self, error: BaseException) -> bool:
        return self.checkpoint.handle_checkpoint_failure(error)

    def get_checkpoint_safety_stats(self) -> dict[str, Any]:
        return {
            **self.checkpoint.get_checkpoint_safety_stats(),
            "checkpoint_breaker_state": breaker_state_name(self.checkpoint.checkpoint_breaker.state),
            "teacher_memory_breaker_state": breaker_state_name(self.checkpoint.teacher_memory_breaker.state),
        }

    # -- hardware-aware timing -----------------------------------------------------------------------------

    def validate_timing_constraint(self, actual_duration_ms: float, constraint_ms: float, operation: str) -> bool:
        return self.timing.validate_timing_constraint(actual_duration_ms, constraint_ms, operation)

    def validate_checkpoint_timing(self, checkpoint_time_ms: float, base_time_ms: float) -> bool:
        return self.timing.validate_checkpoint_timing(checkpoint_time_ms, base_time_ms)

    def validate_teacher_loading_time(self, loading_time_ms: float) -> bool:
        return self.timing.validate_teacher_loading_time(loading_time_ms)

    def get_hardware_profile(self) -> HardwareTimingProfile:
        return self.timing.get_hardware_profile()

    def record_performance_metric(self, metric_name: str, duration_ms: float) -> None:
        """Record a standardized `_ms` metric (KeyError for a name outside the registry); `performance` holds it
        for `KasminaClient.publish_performance`."""
        self.performance.record(metric_name, duration_ms)

    # -- pause ---------------------------------------------------------------------------------------------

    def enter_pause_with_identity_kernel(self, reason: str, quota: int | None = None) -> bool:
        """Pause this instance with the identity kernel, asking the pause quota for `quota` ms (None: the
        configured max_pause_duration_ms); the grant, full or partial, bounds the pause. False when already paused.
        InvalidPauseError for a quota below 1 ms; PauseRefusedError when the config disables pauses or no quota is
        left. Only a pause entered spends quota."""
        requested = self.safety.max_pause_duration_ms if quota is None else quota
        require_pause_allowed(self.safety, self.instance_id, requested)
        with self._pause_lock:
            self.pause.expire_if_due()
            if self.pause.is_paused:
                return False
            decision = self.quota.request_pause_quota(requested)
            if decision.granted <= 0:
                raise PauseRefusedError(f"pause refused on {self.instance_id}: no pause quota left")
            return self.pause.enter_pause_with_identity_kernel(reason, quota_ms=decision.granted)

    def get_identity_kernel_output(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The input itself, values unchanged; NotPausedError outside a pause (an expired pause has ended)."""
        self.pause.expire_if_due()
        return self.pause.identity_kernel_output(input_tensor)

    def exit_pause(self) -> bool:
        """Leave the pause; False when not paused (an expired pause has already ended by itself)."""
        self.pause.expire_if_due()
        return self.pause.exit_pause()

    def get_pause_stats(self) -> dict[str, Any]:
        """The spec's pause stats (and identity_calls); pause_quota_remaining is the pause's remaining ms."""
        self.pause.expire_if_due()
        return self.pause.get_pause_stats()

    # -- configuration -------------------------------------------------------------------------------------

    def validate_safety_config(self, config: ProductionSafetyConfig) -> bool:
        """True for a valid config; a ConfigError listing every violated rule otherwise."""
        return config.validate_config()

    def update_grafting_config(self, config: GraftingConfig) -> None:
        """The grafting config in force from now on (`grafting`); TypeError for anything else."""
        if not isinstance(config, GraftingConfig):
            raise TypeError(f"expected a GraftingConfig, got {type(config).__name__}")
        self.grafting = config

    # -- Leyline -------------------------------------------------------------------------------------------

    def report_to_leyline_telemetry(self, event_data: dict[str, Any]) -> None:
        """Publish one telemetry event: `event_name` (required), `severity` (a TelemetryLevel or its name, INFO by
        default) and `message` are its fields, every other key an attribute (as text). ValueError for a missing
        name or an unknown severity."""
        name = event_data.get("event_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"event_data needs an event_name, got {sorted(event_data)}")
        severity = _telemetry_level(event_data.get("severity", pb.TELEMETRY_INFO))
        attributes = {k: v for k, v in event_data.items() if k not in _EVENT_FIELDS}
        event = telemetry_event(name, severity, str(event_data.get("message", "")), attributes)
        self._telemetry.publish(telemetry_packet(self.instance_id, events=[event], level=severity))


def _telemetry_level(value: object) -> pb.TelemetryLevel:
    """A TelemetryLevel from its number or its name ("TELEMETRY_WARN"); ValueError for anything else."""
    levels = pb.TelemetryLevel.DESCRIPTOR
    if isinstance(value, int) and not isinstance(value, bool) and value in levels.values_by_number:
        value = levels.values_by_number[value].name
    if isinstance(value, str) and value in levels.values_by_name:
        return cast(pb.TelemetryLevel, pb.TelemetryLevel.Value(value))  # the stubs type Value() as a plain int
    raise ValueError(f"unknown telemetry severity {value!r}; one of {', '.join(levels.values_by_name)}")
