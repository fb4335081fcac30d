"""Hardware profiles, the scaled timing constraint, teacher-loading and checkpoint timing, standardized metrics."""

from __future__ import annotations

import pytest
import torch

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import BreakerRegistry
from esper.safety.checkpoint import CheckpointSafetyManager
from esper.safety.config import ProductionSafetyConfig
from esper.safety.timing import (
    HardwareAwareTimingValidator,
    StandardizedPerformanceMetrics,
    detect_hardware_profile,
    profile_for_gpu,
)
from tests.sinks import MemorySink


@pytest.mark.parametrize(
    ("name", "multiplier", "overhead"),
    [
        ("NVIDIA A100-SXM4-80GB", 0.8, 1.5),
        ("Tesla V100-PCIE-16GB", 1.2, 2.5),
        ("NVIDIA GeForce RTX 4090", 1.0, 2.0),
        ("NVIDIA H100 80GB HBM3", 0.6, 1.2),
        ("NVIDIA H200", 0.55, 1.1),
        ("Some Future GPU", 1.0, 2.0),
    ],
)
def test_gpu_profiles(name: str, multiplier: float, overhead: float) -> None:
    p = profile_for_gpu(name)
    assert (p.timing_multiplier, p.checkpoint_forward_overhead_ms, p.gpu_architecture) == (multiplier, overhead, name)


def test_detection_matches_this_machine() -> None:
    p = detect_hardware_profile()
    if torch.cuda.is_available():
        assert p.gpu_architecture == torch.cuda.get_device_name(0)
    else:
        assert (p.gpu_architecture, p.timing_multiplier) == ("none", 1.0)


def test_timing_constraint_is_scaled_and_violations_are_events() -> None:
    sink = MemorySink()
    v = HardwareAwareTimingValidator(profile_for_gpu("A100"), sink=sink, source_id="k1")
    assert v.validate_timing_constraint(8.0, 10.0, "kernel_fetch")
    assert not v.validate_timing_constraint(8.1, 10.0, "kernel_fetch")
    (e,) = sink.of_kind("timing_violation")
    assert (e.timing_violation.adjusted_constraint_ms, e.source_id) == (8.0, "k1")
    v.report_hardware_profile()
    assert sink.of_kind("hardware_profile")[0].hardware_profile.timing_multiplier == 0.8


def test_teacher_loading_timeout() -> None:
    sink = MemorySink()
    v = HardwareAwareTimingValidator(profile_for_gpu("RTX"), sink=sink)
    assert v.validate_teacher_loading_time(5000)
    assert not v.validate_teacher_loading_time(5001)
    assert sink.of_kind("teacher_loading_timeout")[0].severity == pb.TELEMETRY_ERROR


def test_checkpoint_timing_defers_to_the_checkpoint_manager_beyond_expectation() -> None:
    sink = MemorySink()
    manager = CheckpointSafetyManager(BreakerRegistry.with_spec_breakers(), sink=sink)
    v = HardwareAwareTimingValidator(profile_for_gpu("RTX"), sink=sink, checkpoint=manager)
    assert v.validate_checkpoint_timing(12.3, 10.0)  # 2.3 ms <= 2.0 * 1.2
    assert v.validate_checkpoint_timing(30.0, 20.0) is False  # +10 ms, +50%: critical
    assert sink.of_kind("checkpoint_overhead")[0].checkpoint_overhead.critical


def test_checkpoint_timing_without_a_manager_is_a_reported_timing_violation() -> None:
    sink = MemorySink()
    v = HardwareAwareTimingValidator(profile_for_gpu("RTX"), sink=sink)
    assert v.validate_checkpoint_timing(12.3, 10.0)
    assert v.validate_checkpoint_timing(30.0, 20.0) is False
    (e,) = sink.of_kind("timing_violation")
    assert (e.timing_violation.operation, e.timing_violation.actual_ms) == ("checkpoint_overhead_ms", 10.0)
    assert e.timing_violation.adjusted_constraint_ms == pytest.approx(2.4)


def test_without_timing_constraint_enforcement_violations_are_reported_but_pass() -> None:
    sink = MemorySink()
    config = ProductionSafetyConfig(timing_constraint_enforcement=False)
    v = HardwareAwareTimingValidator(profile_for_gpu("RTX"), config=config, sink=sink)
    assert v.validate_timing_constraint(50.0, 10.0, "kernel_fetch")
    assert v.validate_teacher_loading_time(60_000)
    assert v.validate_checkpoint_timing(30.0, 20.0)
    kinds = [e.WhichOneof("detail") for e in sink.events]
    assert kinds == ["timing_violation", "teacher_loading_timeout", "timing_violation"]


def test_standardized_metrics_become_metric_points() -> None:
    m = StandardizedPerformanceMetrics({"slot": "s0"})
    m.record("forward_pass_time_ms", 1.25)
    with m.timed("kernel_load_time_ms"):
        pass
    with pytest.raises(KeyError):
        m.record("forward_pass_time", 1.0)
    points = {p.name: p for p in m.metric_points()}
    assert set(points) == {"forward_pass_time_ms", "kernel_load_time_ms"}
    assert points["forward_pass_time_ms"].unit == "ms" and points["forward_pass_time_ms"].labels["slot"] == "s0"
    v = HardwareAwareTimingValidator(profile_for_gpu("RTX"))
    assert m.validate_against_constraints({"forward_pass_time_ms": 1.0, "other_ms": 1.0}, v) == {
        "forward_pass_time_ms": False
    }
