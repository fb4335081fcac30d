"""Checkpoint safety: real recompiles under torch.compile with eager fallback, interleaved overhead A/B, teacher
memory from real readings, and the recoverable-failure fallback."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import BreakerRegistry, CircuitState
from esper.safety.checkpoint import (
    CheckpointSafetyManager,
    GuardedCompiledModule,
    measure_checkpoint_overhead,
    read_memory,
)
from esper.safety.clock import ManualClock
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import MemorySink


def manager(sink: MemorySink, **cfg: object) -> CheckpointSafetyManager:
    config = ProductionSafetyConfig(**cfg)  # type: ignore[arg-type]
    reg = BreakerRegistry.with_spec_breakers(config, clock=ManualClock(), sink=sink)
    return CheckpointSafetyManager(reg, config, sink=sink)


def test_real_recompiles_past_the_limit_trip_the_breaker_and_fall_back_to_eager() -> None:
    torch._dynamo.reset()
    sink = MemorySink()
    m = manager(sink, max_recompilations=2, checkpoint_recompilation_threshold=1)
    lin = nn.Linear(4, 4)
    guarded = GuardedCompiledModule(lin, m, backend="eager", dynamic=False)
    for batch in (2, 3, 4):  # first compile, then two recompiles: within the limit
        x = torch.randn(batch, 4)
        assert torch.allclose(guarded(x), lin(x))
    assert (m.recompilation_count, guarded.eager) == (2, False)
    x = torch.randn(5, 4)  # third recompile: past the limit
    assert torch.allclose(guarded(x), lin(x))
    assert guarded.eager and m.checkpoint_breaker.state is CircuitState.OPEN
    out = guarded(torch.randn(6, 4))  # eager now: no crash, no compile
    assert out.shape == (6, 4) and m.recompilation_count == 3
    events = sink.of_kind("checkpoint_recompilation")
    assert [e.checkpoint_recompilation.fell_back_to_eager for e in events] == [False, False, True]
    assert "size mismatch" in events[0].checkpoint_recompilation.reason


def test_overhead_warning_at_20_percent_and_breaker_failure_at_30() -> None:
    sink = MemorySink()
    m = manager(sink)
    assert m.validate_checkpoint_overhead(10.0, 11.9)
    assert m.validate_checkpoint_overhead(10.0, 12.5) is False  # warning only
    assert m.checkpoint_breaker.get_stats().total_failures == 0
    assert m.validate_checkpoint_overhead(10.0, 13.5) is False  # critical
    assert m.checkpoint_breaker.get_stats().total_failures == 1
    assert [e.checkpoint_overhead.critical for e in sink.of_kind("checkpoint_overhead")] == [False, True]


def test_overhead_measured_by_interleaving_real_checkpointed_steps() -> None:
    block = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(32, 64, requires_grad=True)

    def plain() -> None:
        block(x).sum().backward()

    def ckpt() -> None:
        checkpoint(block, x, use_reentrant=False).sum().backward()

    result = measure_checkpoint_overhead(plain, ckpt, rounds=6, warmup=1)
    assert result.base_ms > 0 and result.checkpoint_ms > 0
    assert result.ratio == (result.checkpoint_ms - result.base_ms) / result.base_ms


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


def test_handle_checkpoint_failure_recovers_the_spec_classes_only() -> None:
    sink = MemorySink()
    m = manager(sink)
    assert m.handle_checkpoint_failure(RuntimeError("torch.compile issue"))
    assert not m.checkpointing_enabled
    assert m.handle_checkpoint_failure(AssertionError("use_reentrant"))
    assert m.handle_checkpoint_failure(ValueError("config"))
    assert m.handle_checkpoint_failure(KeyError("x")) is False
    assert [e.checkpoint_fallback.recoverable for e in sink.of_kind("checkpoint_fallback")] == [True, True, True, False]
    assert m.get_checkpoint_safety_stats()["checkpointing_enabled"] is False
