"""C-024 checkpoint safety: recompilation monitoring from torch's own compile counters (with eager fallback),
activation-checkpoint overhead measured by an in-process interleaved A/B, teacher memory from real readings,
and the recoverable-failure fallback. Every finding is a safety event; every limit goes through a breaker."""

from __future__ import annotations

import inspect
import itertools
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from torch import nn
from torch._dynamo.utils import counters, get_compilation_metrics

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import BreakerRegistry, CircuitBreaker, breaker_check
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import EventSink, Reporter
from esper.safety.exceptions import (
    CheckpointOverheadError,
    RecompilationLimitError,
    TeacherMemoryExceededError,
)

__all__ = [
    "CRITICAL_OVERHEAD_RATIO",
    "RECOVERABLE_CHECKPOINT_ERRORS",
    "CheckpointSafetyManager",
    "GuardedCompiledModule",
    "MemoryReading",
    "OverheadMeasurement",
    "measure_checkpoint_overhead",
    "memory_device",
    "read_memory",
]

CRITICAL_OVERHEAD_RATIO = 0.30
TEACHER_MEMORY_WARNING_RATIO = 0.90
# The spec's recoverable classes (torch.compile issues, use_reentrant issues, configuration issues), matched exactly
# as the spec matched type names: subclasses such as torch.OutOfMemoryError, NotImplementedError or our own typed
# errors are not "recoverable by switching checkpointing off".
RECOVERABLE_CHECKPOINT_ERRORS: frozenset[type[BaseException]] = frozenset({RuntimeError, AssertionError, ValueError})
_GIB = 1024**3
# torch.compile can give one compiled region its own recompile budget (recent torch); older versions share dynamo's
# global recompile_limit between every compiled module.
_REGION_RECOMPILE_LIMIT = "isolate_recompiles" in inspect.signature(torch.compile).parameters


@dataclass(frozen=True)
class MemoryReading:
    """A real memory reading: CUDA allocated bytes on a GPU, the process's resident set on the CPU."""

    gb: float
    source: str  # "cuda" or "process"


def memory_device(teacher: nn.Module | torch.device | str | None = None) -> torch.device:
    """Where a teacher's memory lives: the device of its parameters (a module), the device given, or by default
    the current CUDA device when there is one, else the CPU."""
    if isinstance(teacher, nn.Module):
        tensor = next(itertools.chain(teacher.parameters(), teacher.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")
    if teacher is not None:
        return torch.device(teacher)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def read_memory(teacher: nn.Module | torch.device | str | None = None) -> MemoryReading:
    """CUDA allocated bytes when the teacher lives on a GPU (the default when there is one), else the process's
    resident set."""
    dev = memory_device(teacher)
    if dev.type == "cuda":
        return MemoryReading(torch.cuda.memory_allocated(dev) / _GIB, "cuda")
    return MemoryReading(psutil.Process().memory_info().rss / _GIB, "process")


@dataclass(frozen=True)
class OverheadMeasurement:
    """Median step times of plain and checkpointed runs interleaved in one process, and the overhead ratio."""

    base_ms: float
    checkpoint_ms: float

    @property
    def ratio(self) -> float:
        return (self.checkpoint_ms - self.base_ms) / self.base_ms if self.base_ms > 0 else 0.0


def measure_checkpoint_overhead(
    plain_step: Callable[[], object],
    checkpoint_step: Callable[[], object],
    rounds: int = 20,
    warmup: int = 2,
    *,
    timer_ns: Callable[[], int] = time.perf_counter_ns,
) -> OverheadMeasurement:
    """Interleave A and B (ABAB..., alternating which goes first) so drift and noise hit both alike; each step is
    timed alone by `timer_ns` (nanoseconds; a test passes a clock its steps advance)."""
    for _ in range(warmup):
        plain_step()
        checkpoint_step()
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        order = ((plain_step, a), (checkpoint_step, b)) if i % 2 == 0 else ((checkpoint_step, b), (plain_step, a))
        for step, samples in order:
            start = timer_ns()
            step()
            samples.append((timer_ns() - start) / 1e6)
    return OverheadMeasurement(statistics.median(a), statistics.median(b))


class CheckpointSafetyManager:
    """Recompilation, checkpoint overhead and teacher memory limits of one training process."""

    def __init__(
        self,
        breakers: BreakerRegistry,
        config: ProductionSafetyConfig | None = None,
        *,
        sink: EventSink | None = None,
        source_id: str = "",
        teacher: nn.Module | torch.device | str | None = None,
    ) -> None:
        self.config = config or ProductionSafetyConfig()
        self.checkpoint_breaker: CircuitBreaker = breakers.get_or_create("checkpoint_recompilation")
        self.teacher_memory_breaker: CircuitBreaker = breakers.get_or_create("teacher_memory_overflow")
        self._report = Reporter(sink, source_id)
        self._teacher = teacher  # where teacher memory is read (see memory_device)
        self._lock = threading.Lock()
        self.recompilation_count = 0
        self.checkpoint_overhead_ms: list[float] = []
        self.checkpointing_enabled = True
        self.fallbacks = 0

    @property
    def max_recompilations(self) -> int:
        return self.config.max_recompilations

    def monitor_checkpoint_recompilation(self, reason: str = "") -> bool:
        """Count one recompilation. Past max_recompilations: a breaker failure, the checkpoint_recompilation
        breaker tripped open whatever its failure threshold (the caller falls back to eager, so no further
        recompiles would ever reach that threshold), and False."""
        with self._lock:
            self.recompilation_count += 1
            count = self.recompilation_count
        over = count > self.max_recompilations
        detail = pb.CheckpointRecompilation(
            recompilation_count=count, max_allowed=self.max_recompilations, reason=reason, fell_back_to_eager=over
        )
        severity = pb.TELEMETRY_ERROR if over else pb.TELEMETRY_WARN
        self._report(severity, f"recompilation #{count} (max {self.max_recompilations}): {reason}", detail)
        if not over:
            return breaker_check(self.checkpoint_breaker, None)
        limit = f"{count} recompilations > max_recompilations {self.max_recompilations}"
        breaker_check(self.checkpoint_breaker, RecompilationLimitError(f"excessive recompilations: {limit}"))
        self.checkpoint_breaker.trip(limit)  # only from CLOSED or HALF_OPEN: an operator's forced state stays
        return False

    def validate_checkpoint_overhead(self, forward_time_ms: float, checkpoint_time_ms: float) -> bool:
        """True within the acceptable ratio (20%); above it a warning; above 30% a breaker failure and False."""
        ratio = (checkpoint_time_ms - forward_time_ms) / forward_time_ms if forward_time_ms > 0 else 0.0
        self.checkpoint_overhead_ms.append(checkpoint_time_ms - forward_time_ms)
        acceptable = self.config.checkpoint_overhead_acceptable_ratio
        if ratio <= acceptable:
            return True
        critical = ratio > CRITICAL_OVERHEAD_RATIO
        detail = pb.CheckpointOverhead(
            overhead_ratio=ratio,
            acceptable_ratio=acceptable,
            base_ms=forward_time_ms,
            checkpoint_ms=checkpoint_time_ms,
            critical=critical,
        )
        severity = pb.TELEMETRY_ERROR if critical else pb.TELEMETRY_WARN
        self._report(severity, f"checkpoint overhead {ratio:.1%} exceeds {acceptable:.0%}", detail)
        failure = CheckpointOverheadError(f"critical checkpoint overhead: {ratio:.1%}")
        return breaker_check(self.checkpoint_breaker, failure if critical else None, passed=False)

    def monitor_teacher_memory(self, current_usage_gb: float | None = None, limit_gb: float | None = None) -> bool:
        """Check the teacher's memory (a real reading unless given): False above the limit, a warning above 90%.
        With teacher_memory_monitoring off nothing is read or reported and the check passes."""
        if not self.config.teacher_memory_monitoring:
            return True
        reading = read_memory(self._teacher) if current_usage_gb is None else MemoryReading(current_usage_gb, "given")
        limit = limit_gb if limit_gb is not None else self.config.teacher_memory_limit_gb
        exceeded = reading.gb > limit
        if exceeded or reading.gb > limit * TEACHER_MEMORY_WARNING_RATIO:
            detail = pb.TeacherMemory(
                current_usage_gb=reading.gb,
                limit_gb=limit,
                usage_ratio=reading.gb / limit,
                exceeded=exceeded,
                source=reading.source,
            )
            severity = pb.TELEMETRY_ERROR if exceeded else pb.TELEMETRY_WARN
            self._report(severity, f"teacher memory {reading.gb:.2f}/{limit:.2f} GB ({reading.source})", detail)
        failure = TeacherMemoryExceededError(f"teacher memory {reading.gb:.2f} GB > {limit:.2f} GB")
        return breaker_check(self.teacher_memory_breaker, failure if exceeded else None)

    def handle_checkpoint_failure(self, error: BaseException) -> bool:
        """The recoverable classes exactly (RuntimeError, AssertionError, ValueError, not their subclasses) switch
        checkpointing off and return True; anything else is reported and returns False for the caller (and its
        breaker) to handle."""
        recoverable = type(error) in RECOVERABLE_CHECKPOINT_ERRORS
        if recoverable:
            self.checkpointing_enabled = False
            self.fallbacks += 1
        detail = pb.CheckpointFallback(
            error_type=type(error).__name__,
            error=str(error)[:500],
            recompilation_count=self.recompilation_count,
            recoverable=recoverable,
        )
        action = "checkpointing disabled (fallback)" if recoverable else "not recoverable"
        self._report(pb.TELEMETRY_ERROR, f"checkpoint failure {type(error).__name__}: {action}", detail)
        return recoverable

    def get_checkpoint_safety_stats(self) -> dict[str, Any]:
        overheads = self.checkpoint_overhead_ms
        return {
            "recompilation_count": self.recompilation_count,
            "max_recompilations": self.max_recompilations,
            "avg_checkpoint_overhead_ms": statistics.fmean(overheads) if overheads else 0.0,
            "acceptable_overhead_ratio": self.config.checkpoint_overhead_acceptable_ratio,
            "checkpointing_enabled": self.checkpointing_enabled,
            "checkpoint_breaker_state": self.checkpoint_breaker.state.name,
            "teacher_memory_breaker_state": self.teacher_memory_breaker.state.name,
        }


class GuardedCompiledModule(nn.Module):
    """A module under torch.compile whose recompilations are counted from dynamo's own counters; past
    `max_recompilations` it runs the original (eager) module instead of recompiling again or crashing.

    Dynamo stops compiling silently (the call runs eager and no graph is counted) once a region holds its
    recompile_limit of graphs, so the module gets room for its first compile and max_recompilations + 1
    recompiles: its own region's limit where torch supports one, else dynamo's global limit raised to that.
    Compiles are attributed by the counter's change across our own call, so run one guarded module per thread.
    """

    def __init__(self, module: nn.Module, manager: CheckpointSafetyManager, **compile_kwargs: Any) -> None:
        super().__init__()
        self.module = module
        self.manager = manager
        room = manager.max_recompilations + 2
        if _REGION_RECOMPILE_LIMIT:
            compile_kwargs = {**compile_kwargs, "isolate_recompiles": True, "recompile_limit": room}
        else:
            dynamo_config = torch._dynamo.config
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, room)
        self._compiled = torch.compile(module, **compile_kwargs)
        self.compiles = 0
        self.eager = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.eager:
            return self.module(*args, **kwargs)
        before = counters["stats"]["unique_graphs"]
        out = self._compiled(*args, **kwargs)
        new_graphs = counters["stats"]["unique_graphs"] - before
        if new_graphs > 0:
            self.compiles += 1
            if self.compiles > 1 and not self._on_recompile():
                self.eager = True
        return out

    def _on_recompile(self) -> bool:
        metrics = get_compilation_metrics()
        reason = (getattr(metrics[-1], "recompile_reason", None) or "") if metrics else ""
        return self.manager.monitor_checkpoint_recompilation(reason)
