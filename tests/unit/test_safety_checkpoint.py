"""Checkpoint safety: real recompiles under torch.compile with eager fallback, interleaved overhead A/B, teacher
memory from real readings, and the recoverable-failure fallback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from esper.proto import leyline_pb2 as pb
from esper.safety import checkpoint as checkpoint_module
from esper.safety.breaker import BreakerRegistry, CircuitState
from esper.safety.checkpoint import (
    CheckpointSafetyManager,
    GuardedCompiledModule,
    measure_checkpoint_overhead,
    read_memory,
)
from esper.safety.clock import ManualClock
from esper.safety.config import ProductionSafetyConfig
from esper.safety.exceptions import RecompilationLimitError
from tests.sinks import MemorySink


def manager(sink: MemorySink, **cfg: object) -> CheckpointSafetyManager:
    config = ProductionSafetyConfig(**cfg)  # type: ignore[arg-type]
    reg = BreakerRegistry.with_spec_breakers(config, clock=ManualClock(), sink=sink)
    return CheckpointSafetyManager(reg, config, sink=sink)


def run_until_eager(guarded: GuardedCompiledModule, lin: nn.Linear, batches: range) -> list[int]:
    """Feed a new batch size per call (each one a real recompile with dynamic=False); the sizes that ran."""
    ran = []
    for batch in batches:
        x = torch.randn(batch, 4)
        assert torch.allclose(guarded(x), lin(x))  # same values compiled or eager
        ran.append(batch)
        if guarded.eager:
            break
    return ran


@torch._dynamo.config.patch(recompile_limit=4)  # below what the spec's limit needs: the guard must make room
def test_real_recompiles_past_the_spec_limit_trip_the_breaker_and_fall_back_to_eager() -> None:
    torch._dynamo.reset()
    sink = MemorySink()
    m = manager(sink)  # the spec's defaults: max_recompilations 5, checkpoint_recompilation_threshold 3
    assert (m.max_recompilations, m.checkpoint_breaker.config.failure_threshold) == (5, 3)
    lin = nn.Linear(4, 4)
    guarded = GuardedCompiledModule(lin, m, backend="eager", dynamic=False)
    ran = run_until_eager(guarded, lin, range(2, 12))
    # the first compile, five recompiles within the limit, the sixth passes it
    assert ran == list(range(2, 9)) and (m.recompilation_count, guarded.compiles) == (6, 7)
    assert m.checkpoint_breaker.state is CircuitState.OPEN
    out = guarded(torch.randn(20, 4))  # eager now: no crash, no compile
    assert out.shape == (20, 4) and m.recompilation_count == 6
    events = sink.of_kind("checkpoint_recompilation")
    assert [e.checkpoint_recompilation.fell_back_to_eager for e in events] == [False] * 5 + [True]
    assert "size mismatch" in events[0].checkpoint_recompilation.reason
    (failure,) = sink.of_kind("breaker_failure")
    assert failure.breaker_failure.error_type == RecompilationLimitError.__name__
    (opened,) = sink.of_kind("breaker_transition")
    assert (opened.breaker_transition.from_state, opened.breaker_transition.to_state) == (
        pb.CIRCUIT_CLOSED,
        pb.CIRCUIT_OPEN,
    )


def test_an_operators_force_racing_the_limit_trip_is_kept() -> None:
    # The operator forces the breaker open just after the manager recorded the over-limit failure, at the clock read
    # that starts the manager's own transition: a state check outside the breaker's lock opened it over the force.
    clock = ManualClock()
    force_at_next_read = False

    def racing_clock() -> float:
        nonlocal force_at_next_read
        if force_at_next_read:
            force_at_next_read = False
            m.checkpoint_breaker.transition_to_forced_open("operator")
        return clock()

    class ArmingSink(MemorySink):
        def emit(self, event: pb.SafetyEvent) -> None:
            nonlocal force_at_next_read
            super().emit(event)
            force_at_next_read |= event.WhichOneof("detail") == "breaker_failure"

    sink = ArmingSink()
    config = ProductionSafetyConfig(max_recompilations=0)
    m = CheckpointSafetyManager(BreakerRegistry.with_spec_breakers(config, clock=racing_clock, sink=sink), config)
    assert not m.monitor_checkpoint_recompilation("over the limit at once")
    assert m.checkpoint_breaker.state is CircuitState.FORCED_OPEN
    to_states = [e.breaker_transition.to_state for e in sink.of_kind("breaker_transition")]
    assert to_states == [pb.CIRCUIT_FORCED_OPEN]


@torch._dynamo.config.patch(recompile_limit=2)
def test_without_per_region_limits_dynamos_global_limit_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "_REGION_RECOMPILE_LIMIT", False)
    torch._dynamo.reset()
    m = manager(MemorySink(), max_recompilations=2)
    lin = nn.Linear(4, 4)
    guarded = GuardedCompiledModule(lin, m, backend="eager", dynamic=False)
    assert torch._dynamo.config.recompile_limit == 4
    assert run_until_eager(guarded, lin, range(2, 12)) == [2, 3, 4, 5]
    assert m.checkpoint_breaker.state is CircuitState.OPEN


def test_overhead_warning_at_20_percent_and_breaker_failure_at_30() -> None:
    sink = MemorySink()
    m = manager(sink)
    assert m.validate_checkpoint_overhead(10.0, 11.9)
    assert m.validate_checkpoint_overhead(10.0, 12.5) is False  # warning only
    assert m.checkpoint_breaker.get_stats().total_failures == 0
    assert m.validate_checkpoint_overhead(10.0, 13.5) is False  # critical
    assert m.checkpoint_breaker.get_stats().total_failures == 1
    assert [e.checkpoint_overhead.critical for e in sink.of_kind("checkpoint_overhead")] == [False, True]


def test_overhead_is_the_ratio_of_the_medians_of_steps_timed_one_by_one() -> None:
    """A clock only the steps advance: each step's time is known, so the medians and the ratio are exact."""
    now_ns = 0
    steps: list[str] = []
    durations_ms = {
        # warmup first (never sampled: with it the medians would be 35 and 50), then five rounds in call order
        "plain": iter([1000, 10, 30, 20, 40, 200]),  # median 30 (mean 60)
        "ckpt": iter([1000, 25, 45, 35, 55, 65]),  # median 45
    }

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            nonlocal now_ns
            steps.append(name)
            now_ns += next(durations_ms[name]) * 1_000_000

        return run

    result = measure_checkpoint_overhead(step("plain"), step("ckpt"), rounds=5, warmup=1, timer_ns=lambda: now_ns)
    # each round alternates which goes first (AB BA AB BA AB), after one warmup pair
    assert steps == ["plain", "ckpt"] + ["plain", "ckpt", "ckpt", "plain"] * 2 + ["plain", "ckpt"]
    assert (result.base_ms, result.checkpoint_ms, result.ratio) == (30.0, 45.0, 0.5)
    m = manager(MemorySink())
    assert m.validate_checkpoint_overhead(result.base_ms, result.checkpoint_ms) is False  # 50% > 30%: critical
    assert m.checkpoint_breaker.get_stats().total_failures == 1


def test_overhead_measured_by_interleaving_real_checkpointed_steps() -> None:
    """The real timer and real checkpointing: what ran and in what order, never how long it took."""
    steps: list[str] = []
    forwards: list[str] = []

    class Recorded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            forwards.append(steps[-1])
            return self.lin(x)

    block = Recorded()
    x = torch.randn(4, 8, requires_grad=True)

    def plain() -> None:
        steps.append("plain")
        block(x).sum().backward()

    def ckpt() -> None:
        steps.append("ckpt")
        checkpoint(block, x, use_reentrant=False).sum().backward()

    result = measure_checkpoint_overhead(plain, ckpt, rounds=6, warmup=1)
    # 7 real steps each, interleaved (a warmup pair, then AB BA AB BA AB BA)
    assert steps == ["plain", "ckpt"] + ["plain", "ckpt", "ckpt", "plain"] * 3
    # and the checkpointed ones recomputed their forward in the backward pass
    assert (forwards.count("plain"), forwards.count("ckpt")) == (7, 14)
    assert result.base_ms > 0 and result.checkpoint_ms > 0  # the real timer was read around each step


def test_teacher_memory_from_a_real_reading() -> None:
    sink = MemorySink()
    m = manager(sink)
    rss = read_memory()
    assert rss.source == "process" and rss.gb > 0
    assert m.monitor_teacher_memory(limit_gb=rss.gb * 10)
    assert m.monitor_teacher_memory(limit_gb=rss.gb / 10) is False
    assert m.monitor_teacher_memory(limit_gb=rss.gb / 10) is False
    assert m.teacher_memory_breaker.state is CircuitState.OPEN  # spec threshold 2
    e = sink.of_kind("teacher_memory")[0].teacher_memory
    assert e.exceeded and e.source == "process"


def test_teacher_memory_warning_at_90_percent_of_the_spec_limit() -> None:
    sink = MemorySink()
    m = manager(sink)
    assert m.monitor_teacher_memory(6.5)
    (e,) = sink.of_kind("teacher_memory")
    assert (e.teacher_memory.limit_gb, e.teacher_memory.exceeded, e.severity) == (7.0, False, pb.TELEMETRY_WARN)
    assert m.monitor_teacher_memory(6.2) and len(sink.of_kind("teacher_memory")) == 1


def test_teacher_memory_defaults_to_cuda_memory_when_the_teacher_lives_there(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():  # stand in for a GPU: what is read, not the device itself, is under test
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 3 * 1024**3)
    assert read_memory().source == "cuda"
    sink = MemorySink()
    m = manager(sink)
    assert m.monitor_teacher_memory(limit_gb=0.000001) is False
    assert sink.of_kind("teacher_memory")[0].teacher_memory.source == "cuda"
    assert read_memory(nn.Linear(2, 2)).source == "process"  # a teacher kept on the CPU


def test_teacher_memory_monitoring_off_reads_and_reports_nothing() -> None:
    sink = MemorySink()
    m = manager(sink, teacher_memory_monitoring=False)
    assert m.monitor_teacher_memory(100.0) and m.monitor_teacher_memory(limit_gb=0.000001)
    assert sink.events == [] and m.teacher_memory_breaker.get_stats().total_calls == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_memory_on_a_real_gpu_counts_the_teachers_tensors() -> None:
    before = read_memory().gb
    teacher = nn.Linear(16_384, 16_384, device="cuda")  # 1 GiB of weights
    reading = read_memory(teacher)
    assert reading.source == "cuda" and reading.gb - before >= 0.99
    del teacher


def test_handle_checkpoint_failure_recovers_the_spec_classes_only() -> None:
    sink = MemorySink()
    m = manager(sink)
    assert m.handle_checkpoint_failure(RuntimeError("torch.compile issue"))
    assert not m.checkpointing_enabled
    assert m.handle_checkpoint_failure(AssertionError("use_reentrant"))
    assert m.handle_checkpoint_failure(ValueError("config"))
    assert m.handle_checkpoint_failure(KeyError("x")) is False
    # subclasses are not the spec's classes: out of memory, a missing kernel, our own typed errors
    assert m.handle_checkpoint_failure(torch.OutOfMemoryError("CUDA out of memory")) is False
    assert m.handle_checkpoint_failure(NotImplementedError("no kernel")) is False
    assert m.handle_checkpoint_failure(RecompilationLimitError("too many")) is False
    recoverable = [e.checkpoint_fallback.recoverable for e in sink.of_kind("checkpoint_fallback")]
    assert recoverable == [True, True, True, False, False, False, False]
    assert m.get_checkpoint_safety_stats()["checkpointing_enabled"] is False
