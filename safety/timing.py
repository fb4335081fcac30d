"""Hardware-aware timing: per-device profiles, the timing constraint, checkpoint and teacher-loading checks, and
the standardized `_ms` performance metrics (as Leyline metric points)."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from esper.proto import leyline_pb2 as pb
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import EventSink, Reporter, metric_point

if TYPE_CHECKING:
    from esper.safety.checkpoint import CheckpointSafetyManager

__all__ = [
    "GPU_PROFILES",
    "STANDARD_METRICS",
    "HardwareAwareTimingValidator",
    "HardwareTimingProfile",
    "StandardizedPerformanceMetrics",
    "detect_hardware_profile",
    "profile_for_gpu",
]


@dataclass(frozen=True)
class HardwareTimingProfile:
    """Timing expectations of one kind of hardware; `timing_multiplier` scales every constraint."""

    epoch_boundary_ms: int = 18
    gpu_kernel_launch_overhead_ms: float = 0.02
    pcie_transfer_latency_ms: float = 0.01
    memory_allocation_overhead_ms: float = 0.1
    checkpoint_forward_overhead_ms: float = 2.0
    teacher_loading_timeout_ms: int = 5000
    checkpoint_recompilation_timeout_ms: int = 10_000
    cpu_architecture: str = "unknown"
    gpu_architecture: str = "unknown"
    timing_multiplier: float = 1.0

    def to_proto(self) -> pb.HardwareProfile:
        return pb.HardwareProfile(
            cpu_architecture=self.cpu_architecture,
            gpu_architecture=self.gpu_architecture,
            device_name=self.gpu_architecture if self.gpu_architecture != "unknown" else self.cpu_architecture,
            timing_multiplier=self.timing_multiplier,
            epoch_boundary_ms=self.epoch_boundary_ms,
            gpu_kernel_launch_overhead_ms=self.gpu_kernel_launch_overhead_ms,
            pcie_transfer_latency_ms=self.pcie_transfer_latency_ms,
            memory_allocation_overhead_ms=self.memory_allocation_overhead_ms,
            checkpoint_forward_overhead_ms=self.checkpoint_forward_overhead_ms,
            teacher_loading_timeout_ms=self.teacher_loading_timeout_ms,
            checkpoint_recompilation_timeout_ms=self.checkpoint_recompilation_timeout_ms,
        )


# Device-name marker -> (timing_multiplier, checkpoint_forward_overhead_ms), most specific first. A100/V100/RTX are
# the spec's; H100 and H200 are ours, scaled from the A100's by their higher memory bandwidth (not measured).
GPU_PROFILES: tuple[tuple[str, float, float], ...] = (
    ("H200", 0.55, 1.1),
    ("H100", 0.6, 1.2),
    ("A100", 0.8, 1.5),
    ("V100", 1.2, 2.5),
    ("RTX", 1.0, 2.0),
)


def profile_for_gpu(device_name: str, cpu_architecture: str = "unknown") -> HardwareTimingProfile:
    """The profile of a GPU by its device name (unknown GPUs get the baseline multiplier 1.0)."""
    base = HardwareTimingProfile(cpu_architecture=cpu_architecture, gpu_architecture=device_name)
    for marker, multiplier, overhead_ms in GPU_PROFILES:
        if marker in device_name.upper():
            return replace(base, timing_multiplier=multiplier, checkpoint_forward_overhead_ms=overhead_ms)
    return base


def detect_hardware_profile() -> HardwareTimingProfile:
    """The profile of this machine: its first CUDA device when there is one, else the CPU baseline."""
    cpu = platform.processor() or platform.machine() or "unknown"
    if torch.cuda.is_available():
        return profile_for_gpu(torch.cuda.get_device_name(0), cpu)
    return HardwareTimingProfile(cpu_architecture=cpu, gpu_architecture="none")


class HardwareAwareTimingValidator:
    """Checks durations against constraints scaled for the hardware; every violation is a safety event. With
    `timing_constraint_enforcement` off the violations are still reported, but every check passes."""

    def __init__(
        self,
        profile: HardwareTimingProfile | None = None,
        *,
        config: ProductionSafetyConfig | None = None,
        sink: EventSink | None = None,
        checkpoint: CheckpointSafetyManager | None = None,
        source_id: str = "",
    ) -> None:
        self.hardware_profile = profile or detect_hardware_profile()
        self.config = config or ProductionSafetyConfig()
        self._report = Reporter(sink, source_id)
        self._checkpoint = checkpoint

    def get_hardware_profile(self) -> HardwareTimingProfile:
        return self.hardware_profile

    def report_hardware_profile(self) -> None:
        p = self.hardware_profile
        message = f"hardware timing profile: {p.gpu_architecture} / {p.cpu_architecture} (x{p.timing_multiplier})"
        self._report(pb.TELEMETRY_INFO, message, p.to_proto())

    def validate_timing_constraint(self, actual_duration_ms: float, constraint_ms: float, operation_name: str) -> bool:
        adjusted = constraint_ms * self.hardware_profile.timing_multiplier
        if actual_duration_ms <= adjusted:
            return True
        detail = pb.TimingViolation(
            operation=operation_name,
            actual_ms=actual_duration_ms,
            constraint_ms=constraint_ms,
            adjusted_constraint_ms=adjusted,
            timing_multiplier=self.hardware_profile.timing_multiplier,
        )
        message = f"timing violation: {operation_name} took {actual_duration_ms:.2f} ms > {adjusted:.2f} ms"
        self._report(pb.TELEMETRY_WARN, message, detail)
        return self._verdict(False)

    def validate_checkpoint_timing(self, checkpoint_time_ms: float, base_time_ms: float) -> bool:
        """Overhead within the profile's expectation (+20%) passes; beyond it the checkpoint manager decides, or,
        without one, it is a timing violation of "checkpoint_overhead_ms"."""
        p = self.hardware_profile
        expected_ms = p.checkpoint_forward_overhead_ms * 1.2
        overhead_ms = checkpoint_time_ms - base_time_ms
        if self._checkpoint is None:
            return self.validate_timing_constraint(overhead_ms, expected_ms, "checkpoint_overhead_ms")
        if overhead_ms <= expected_ms * p.timing_multiplier:
            return True
        return self._verdict(self._checkpoint.validate_checkpoint_overhead(base_time_ms, checkpoint_time_ms))

    def validate_teacher_loading_time(self, loading_time_ms: float) -> bool:
        timeout = self.hardware_profile.teacher_loading_timeout_ms
        if loading_time_ms <= timeout:
            return True
        detail = pb.TeacherLoadingTimeout(actual_ms=loading_time_ms, timeout_ms=timeout)
        self._report(pb.TELEMETRY_ERROR, f"teacher loading took {loading_time_ms:.0f} ms > {timeout} ms", detail)
        return self._verdict(False)

    def _verdict(self, passed: bool) -> bool:
        return passed or not self.config.timing_constraint_enforcement


# The one registry of standardized duration metrics (metric names drifted between producers and alerts before).
STANDARD_METRICS: frozenset[str] = frozenset(
    {
        "forward_pass_time_ms",
        "kernel_load_time_ms",
        "telemetry_generation_time_ms",
        "state_transition_time_ms",
        "emergency_rollback_time_ms",
        "gradient_isolation_time_ms",
        "command_processing_time_ms",
        "leyline_serialization_time_ms",
        "checkpoint_forward_time_ms",
        "teacher_loading_time_ms",
        "checkpoint_overhead_ms",
        "training_step_time_ms",
        "pause_apply_time_ms",
    }
)


class StandardizedPerformanceMetrics:
    """The latest value of each standardized `_ms` metric, rendered as Leyline metric points."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.metrics: dict[str, float] = {}
        self._labels = {"subsystem": "kasmina", **(labels or {})}

    def record(self, name: str, duration_ms: float) -> None:
        if name not in STANDARD_METRICS:
            raise KeyError(f"{name!r} is not a standardized metric; known: {', '.join(sorted(STANDARD_METRICS))}")
        self.metrics[name] = duration_ms

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record how long the block took under `name`."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.record(name, (time.perf_counter_ns() - start) / 1e6)

    def validate_against_constraints(
        self, constraints: Mapping[str, float], validator: HardwareAwareTimingValidator
    ) -> dict[str, bool]:
        return {
            name: validator.validate_timing_constraint(self.metrics[name], limit, name)
            for name, limit in constraints.items()
            if name in self.metrics
        }

    def metric_points(self) -> list[pb.MetricPoint]:
        return [metric_point(name, value, "ms", labels=self._labels) for name, value in self.metrics.items()]
