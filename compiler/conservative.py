"""Conservative mode: Tezzeret's reduced-resource operation under stress, as a pure state machine and a thin shell.

Pieces, one idea each:
  `ConservativeLimits`  immutable, validated once: the entry thresholds, the cool-down, `auto_enable`, and the two
                        `Policy` objects (the numbers in force normally and while conservative);
  `ConservativeState`   frozen: active or not, the causes recorded, the last breaker states and resource samples;
  `observe_*`, `force`, `tick`  pure functions of (state, limits, observation, now) -> (state, transition or None);
  `effective_policy`    the `Policy` in force for a state;
  `Nvml`, `sample_resources`  the readings fed to it: GPU utilisation and memory through NVML (ctypes, no package),
                        reported absent (None) without a GPU, host memory through psutil then;
  `ConservativeModeController`  the thread-safe shell: reads the injected clock, feeds the core under its lock,
                        emits each transition as a SafetyEvent (ConservativeModeChanged) after releasing it, in order;
                        `watch(breaker)` follows a CircuitBreaker's transitions.

The rules. Entry (only with `auto_enable`): a breaker OPEN or FORCED_OPEN; a compile timeout; GPU utilisation above
`gpu_threshold_percent` in every sample for `threshold_duration_ms` (a sample at or below it, or a sample saying no
GPU, ends the excursion); memory above `memory_threshold`. While active, every cause is recorded (once per kind and
subject, with the time last seen) and restarts the cool-down, as does any observation made while a condition still
holds (a breaker not settled, GPU or memory above its threshold). Leaving: `cooldown_ms` after the last of those, with
every breaker settled (CLOSED, or DISABLED / METRICS_ONLY, where an operator has taken the breaker out of the path:
nothing is being protected by it, so it cannot hold the mode) and GPU and memory back under their thresholds. Leaving
is checked on every observation and on `tick`. An operator's `force(True)` enters (whatever `auto_enable` says) and
holds the mode until `force(False)`, which leaves at once whatever the conditions; a later cause enters again.
Kept free of Kafka and torch.
"""

from __future__ import annotations

import ctypes
import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psutil

from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CircuitState, CompilationStrategy
from esper.safety.breaker import CircuitBreaker, Transition
from esper.safety.clock import Clock, monotonic_ms
from esper.safety.events import EventSink, NullSink, safety_event
from esper.safety.exceptions import ConfigError

__all__ = [
    "CONSERVATIVE_POLICY",
    "NORMAL_POLICY",
    "SUBSYSTEM",
    "Cause",
    "CauseKind",
    "ConservativeLimits",
    "ConservativeModeController",
    "ConservativeState",
    "ConservativeTransition",
    "Nvml",
    "Policy",
    "ResourceSample",
    "Step",
    "cheaper_tier",
    "effective_policy",
    "force",
    "observe_breaker",
    "observe_compile_timeout",
    "observe_gpu",
    "observe_memory",
    "sample_resources",
    "tick",
]

SUBSYSTEM = "tezzeret"

# Breakers in these states hold conservative mode (OPEN / FORCED_OPEN enter it; HALF_OPEN is still deciding).
_OPEN = frozenset({CircuitState.OPEN, CircuitState.FORCED_OPEN})
_SETTLED = frozenset({CircuitState.CLOSED, CircuitState.DISABLED, CircuitState.METRICS_ONLY})

_CHEAPER: dict[CompilationStrategy, CompilationStrategy] = {
    CompilationStrategy.AGGRESSIVE: CompilationStrategy.STANDARD,
    CompilationStrategy.STANDARD: CompilationStrategy.FAST,
    CompilationStrategy.FAST: CompilationStrategy.EMERGENCY,
    CompilationStrategy.EMERGENCY: CompilationStrategy.EMERGENCY,
}


def cheaper_tier(strategy: CompilationStrategy) -> CompilationStrategy:
    """One tier cheaper (AGGRESSIVE -> STANDARD -> FAST -> EMERGENCY; EMERGENCY stays)."""
    return _CHEAPER.get(strategy, strategy)


@dataclass(frozen=True)
class Policy:
    """The numbers a Tezzeret works by: normal ones, or conservative mode's (SPEC-NOTES.md: one job at a time, GPU
    ceiling 25% -> 15%, timeouts x1.5, memory budget x0.5, cache entries 16384 -> 8192; the design: cheaper tiers,
    no idle recompilation)."""

    conservative: bool
    max_concurrent_jobs: int
    gpu_ceiling_percent: float
    timeout_multiplier: float
    memory_budget_bytes: int
    cache_entries: int
    idle_recompilation: bool
    downgrade_tiers: bool

    def tier(self, requested: CompilationStrategy) -> CompilationStrategy:
        """The tier to compile a request for `requested` at under this policy."""
        return cheaper_tier(requested) if self.downgrade_tiers else requested

    def timeout_s(self, tier_timeout_s: float) -> float:
        """A tier's compile timeout under this policy."""
        return tier_timeout_s * self.timeout_multiplier

    def problems(self) -> list[str]:
        problems = []
        if self.max_concurrent_jobs < 1:
            problems.append(f"max_concurrent_jobs must be >= 1, got {self.max_concurrent_jobs}")
        if not 0 < self.gpu_ceiling_percent <= 100:
            problems.append(f"gpu_ceiling_percent is a percentage in (0, 100], got {self.gpu_ceiling_percent}")
        if self.timeout_multiplier <= 0:
            problems.append(f"timeout_multiplier must be > 0, got {self.timeout_multiplier}")
        if self.memory_budget_bytes < 1:
            problems.append(f"memory_budget_bytes must be >= 1, got {self.memory_budget_bytes}")
        if self.cache_entries < 0:
            problems.append(f"cache_entries must be >= 0, got {self.cache_entries}")
        return problems


_GIB = 1 << 30
# The forge spec: at most 2 concurrent jobs, 25% GPU, a 16 GB memory budget; the internals: 16384 L1 cache entries.
NORMAL_POLICY = Policy(
    conservative=False,
    max_concurrent_jobs=2,
    gpu_ceiling_percent=25.0,
    timeout_multiplier=1.0,
    memory_budget_bytes=16 * _GIB,
    cache_entries=16_384,
    idle_recompilation=True,
    downgrade_tiers=False,
)
CONSERVATIVE_POLICY = Policy(
    conservative=True,
    max_concurrent_jobs=1,
    gpu_ceiling_percent=15.0,
    timeout_multiplier=1.5,
    memory_budget_bytes=8 * _GIB,
    cache_entries=8_192,
    idle_recompilation=False,
    downgrade_tiers=True,
)


@dataclass(frozen=True)
class ConservativeLimits:
    """When conservative mode is entered and left, and the policies in and out of it; validated at construction
    (one ConfigError lists every violated rule). Defaults: the forge spec's `conservative_mode` block (auto_enable,
    GPU above 20% for 5 minutes), its failure-mode table (memory above 80%), and a cool-down of 5 minutes: as long
    as the GPU rule's window, so the mode is not left sooner than the GPU rule could enter it again, and longer than
    every spec breaker's open timeout (30-180 s), so a breaker's first half-open round can fail and reopen before the
    mode is left."""

    auto_enable: bool = True
    gpu_threshold_percent: float = 20.0
    threshold_duration_ms: int = 300_000
    memory_threshold: float = 0.80
    cooldown_ms: int = 300_000
    normal: Policy = NORMAL_POLICY
    conservative: Policy = CONSERVATIVE_POLICY

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.gpu_threshold_percent < 100:
            problems.append(f"gpu_threshold_percent is a percentage in [0, 100), got {self.gpu_threshold_percent}")
        if self.threshold_duration_ms < 0:
            problems.append(f"threshold_duration_ms must be >= 0, got {self.threshold_duration_ms}")
        if not 0 < self.memory_threshold < 1:
            problems.append(f"memory_threshold is a fraction in (0, 1), got {self.memory_threshold}")
        if self.cooldown_ms < 0:
            problems.append(f"cooldown_ms must be >= 0, got {self.cooldown_ms}")
        if self.normal.conservative or not self.conservative.conservative:
            problems.append("normal must be a non-conservative Policy and conservative a conservative one")
        problems += [f"normal.{p}" for p in self.normal.problems()]
        problems += [f"conservative.{p}" for p in self.conservative.problems()]
        if problems:
            raise ConfigError("ConservativeLimits", problems)


class CauseKind(enum.StrEnum):
    BREAKER_OPEN = "breaker_open"
    COMPILE_TIMEOUT = "compile_timeout"
    GPU_HIGH = "gpu_high"
    MEMORY_HIGH = "memory_high"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Cause:
    """One reason for conservative mode: its kind, what it is about (a breaker's name, a job; "" for GPU and
    memory), a description, and when it was first and last seen in this episode."""

    kind: CauseKind
    subject: str
    text: str
    first_ms: float
    last_ms: float

    @property
    def key(self) -> tuple[CauseKind, str]:
        return self.kind, self.subject


@dataclass(frozen=True)
class ConservativeState:
    """The state of the machine. `last_cause_ms` is when the cool-down last restarted; `gpu_high_since_ms` the start
    of the current GPU excursion above the threshold (None: none); `forced` whether an operator holds the mode on."""

    active: bool = False
    since_ms: float = 0.0
    last_cause_ms: float = 0.0
    causes: tuple[Cause, ...] = ()
    breakers: tuple[tuple[str, CircuitState], ...] = ()  # sorted by name
    gpu_percent: float | None = None
    gpu_high_since_ms: float | None = None
    memory_fraction: float | None = None
    forced: bool = False

    def breaker_state(self, name: str) -> CircuitState | None:
        return dict(self.breakers).get(name)

    def unsettled_breakers(self) -> tuple[str, ...]:
        return tuple(name for name, state in self.breakers if state not in _SETTLED)


@dataclass(frozen=True)
class ConservativeTransition:
    """Conservative mode entered (`active`) or left, when, and why: on entry the causes that entered it, on leaving
    every cause recorded in the episode; `duration_ms` is the episode's length (0 on entry)."""

    active: bool
    at_ms: float
    causes: tuple[Cause, ...]
    reason: str
    duration_ms: float = 0.0


Step = tuple[ConservativeState, ConservativeTransition | None]


def effective_policy(state: ConservativeState, limits: ConservativeLimits) -> Policy:
    """The numbers in force in `state`."""
    return limits.conservative if state.active else limits.normal


def _troubled(state: ConservativeState, limits: ConservativeLimits) -> bool:
    """A condition that holds the mode: a breaker not settled, GPU or memory above its threshold."""
    return (
        bool(state.unsettled_breakers())
        or (state.gpu_percent is not None and state.gpu_percent > limits.gpu_threshold_percent)
        or (state.memory_fraction is not None and state.memory_fraction > limits.memory_threshold)
    )


def _record(state: ConservativeState, cause: Cause) -> ConservativeState:
    """The cause added (or its last sighting updated) and the cool-down restarted."""
    causes = list(state.causes)
    for i, known in enumerate(causes):
        if known.key == cause.key:
            causes[i] = replace(known, text=cause.text, last_ms=cause.last_ms)
            break
    else:
        causes.append(cause)
    return replace(state, causes=tuple(causes), last_cause_ms=max(state.last_cause_ms, cause.last_ms))


def _cause(state: ConservativeState, limits: ConservativeLimits, cause: Cause, now_ms: float) -> Step:
    """A cause seen at now_ms: recorded while active; enters the mode when inactive and `auto_enable`; otherwise the
    leave rule is applied as for any observation."""
    if state.active:
        return _settle(state, limits, _record(state, cause), now_ms)
    if not limits.auto_enable:
        return state, None
    entered = _record(replace(state, active=True, since_ms=now_ms, causes=(), forced=False), cause)
    return entered, ConservativeTransition(True, now_ms, entered.causes, cause.text)


def _settle(before: ConservativeState, limits: ConservativeLimits, state: ConservativeState, now_ms: float) -> Step:
    """After an observation (or a tick, when `before is state`): restart the cool-down when a condition held before
    or holds now, then leave when the cool-down has passed with nothing holding the mode."""
    if not state.active:
        return state, None
    if _troubled(before, limits) or _troubled(state, limits):
        state = replace(state, last_cause_ms=max(state.last_cause_ms, now_ms))
    if state.forced or _troubled(state, limits) or now_ms - state.last_cause_ms < limits.cooldown_ms:
        return state, None
    return _leave(state, now_ms, f"{limits.cooldown_ms} ms cool-down passed with every breaker closed")


def _leave(state: ConservativeState, now_ms: float, reason: str) -> Step:
    left = replace(state, active=False, causes=(), forced=False)
    return left, ConservativeTransition(False, now_ms, state.causes, reason, now_ms - state.since_ms)


def _with_breaker(state: ConservativeState, name: str, breaker_state: CircuitState) -> ConservativeState:
    breakers = dict(state.breakers)
    breakers[name] = breaker_state
    return replace(state, breakers=tuple(sorted(breakers.items())))


def observe_breaker(
    state: ConservativeState, limits: ConservativeLimits, name: str, breaker_state: CircuitState, now_ms: float
) -> Step:
    """A breaker's state is now `breaker_state` (a transition it made, or its state when first watched)."""
    new = _with_breaker(state, name, breaker_state)
    if breaker_state in _OPEN:
        cause = Cause(CauseKind.BREAKER_OPEN, name, f"breaker {name} {breaker_state.name}", now_ms, now_ms)
        return _cause(new, limits, cause, now_ms)
    return _settle(state, limits, new, now_ms)


def observe_compile_timeout(
    state: ConservativeState, limits: ConservativeLimits, job: str, now_ms: float, detail: str = ""
) -> Step:
    """A compile ran past its tier's limit (`job` names it, `detail` says more, e.g. the tier and the limit)."""
    text = f"compile timeout: {job}" + (f" ({detail})" if detail else "")
    return _cause(state, limits, Cause(CauseKind.COMPILE_TIMEOUT, job, text, now_ms, now_ms), now_ms)


def observe_gpu(state: ConservativeState, limits: ConservativeLimits, percent: float | None, now_ms: float) -> Step:
    """A GPU utilisation sample in percent; None: no GPU, or NVML absent (ends any excursion, never a cause)."""
    threshold = limits.gpu_threshold_percent
    if percent is None or percent <= threshold:
        return _settle(state, limits, replace(state, gpu_percent=percent, gpu_high_since_ms=None), now_ms)
    since = state.gpu_high_since_ms if state.gpu_high_since_ms is not None else now_ms
    new = replace(state, gpu_percent=percent, gpu_high_since_ms=since)
    lasted = now_ms - since
    if lasted < limits.threshold_duration_ms:
        return _settle(state, limits, new, now_ms)
    text = f"GPU {percent:.0f}% above {threshold:g}% for {lasted / 1000:.0f} s"
    return _cause(new, limits, Cause(CauseKind.GPU_HIGH, "", text, now_ms, now_ms), now_ms)


def observe_memory(state: ConservativeState, limits: ConservativeLimits, fraction: float | None, now_ms: float) -> Step:
    """A memory sample: the fraction in use (0..1) of the budget watched (GPU memory where a GPU exists, else the
    host's); None: no reading."""
    new = replace(state, memory_fraction=fraction)
    if fraction is None or fraction <= limits.memory_threshold:
        return _settle(state, limits, new, now_ms)
    text = f"memory {100 * fraction:.0f}% above {100 * limits.memory_threshold:g}%"
    return _cause(new, limits, Cause(CauseKind.MEMORY_HIGH, "", text, now_ms, now_ms), now_ms)


def force(state: ConservativeState, on: bool, reason: str, now_ms: float) -> Step:
    """An operator's switch: on enters (or, when already active, holds) the mode until switched off; off leaves at
    once, whatever holds it (a later cause enters again)."""
    if on:
        cause = Cause(CauseKind.OPERATOR, "", f"operator: {reason}", now_ms, now_ms)
        if state.active:
            return replace(_record(state, cause), forced=True), None
        entered = _record(replace(state, active=True, since_ms=now_ms, causes=(), forced=True), cause)
        return entered, ConservativeTransition(True, now_ms, entered.causes, cause.text)
    if not state.active:
        return state, None
    return _leave(state, now_ms, f"operator: {reason}")


def tick(state: ConservativeState, limits: ConservativeLimits, now_ms: float) -> Step:
    """Time passed with nothing observed: leave once the cool-down is over (and nothing holds the mode)."""
    return _settle(state, limits, state, now_ms)


class _NvmlUtilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    """GPU readings through NVML (the driver's libnvidia-ml, loaded with ctypes: no Python package needed): the
    device's utilisation, every process's work included, not Tezzeret's share alone. Absent (`available` False,
    every reading None, `error` saying why) where the library cannot be loaded, no device has that index, or a call
    fails: a machine without a GPU reports "no GPU", never a made-up figure. `library` may be a loaded library
    (tests pass a double)."""

    def __init__(self, index: int = 0, library: str | Any = "libnvidia-ml.so.1") -> None:
        self.index = index
        self.error = ""
        self._lib: Any = None
        self._handle = ctypes.c_void_p()
        try:
            lib = ctypes.CDLL(library) if isinstance(library, str) else library
        except OSError as e:
            self.error = f"NVML not loadable: {e}"
            return
        if self._call(lib, "nvmlInit_v2") and self._call(
            lib, "nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(self._handle)
        ):
            self._lib = lib

    def _call(self, lib: Any, name: str, *args: Any) -> bool:
        try:
            code = getattr(lib, name)(*args)
        except (AttributeError, OSError, ctypes.ArgumentError) as e:
            self.error = f"{name}: {e}"
            return False
        if code != 0:
            self.error = f"{name} returned NVML error {code}"
            return False
        return True

    @property
    def available(self) -> bool:
        return self._lib is not None

    def utilisation_percent(self) -> float | None:
        """The device's GPU utilisation over NVML's last sample period, in percent; None when absent."""
        rates = _NvmlUtilization()
        if self._lib is None:
            return None
        if not self._call(self._lib, "nvmlDeviceGetUtilizationRates", self._handle, ctypes.byref(rates)):
            return None
        return float(rates.gpu)

    def memory_fraction(self) -> float | None:
        """The fraction of the device's memory in use; None when absent."""
        memory = _NvmlMemory()
        if self._lib is None:
            return None
        if not self._call(self._lib, "nvmlDeviceGetMemoryInfo", self._handle, ctypes.byref(memory)):
            return None
        return memory.used / memory.total if memory.total else None


@dataclass(frozen=True)
class ResourceSample:
    """One reading of the machine: GPU utilisation (None: no GPU or NVML absent) and the memory fraction in use, of
    the GPU's memory where NVML reads one, else of the host's (`memory_source` says which)."""

    gpu_percent: float | None
    memory_fraction: float | None
    memory_source: str


def sample_resources(nvml: Nvml | None) -> ResourceSample:
    """Read the GPU through `nvml` (None: none watched) and the memory that conservative mode's 80% rule is about."""
    gpu = nvml.utilisation_percent() if nvml is not None else None
    gpu_memory = nvml.memory_fraction() if nvml is not None else None
    if gpu_memory is not None:
        return ResourceSample(gpu, gpu_memory, "gpu")
    return ResourceSample(gpu, psutil.virtual_memory().percent / 100, "host")


class ConservativeModeController:
    """One Tezzeret's conservative mode: feeds observations to the pure core under a lock, emits every transition as
    a SafetyEvent (detail ConservativeModeChanged, subsystem "tezzeret") on its sink after releasing the lock, in the
    order they happened, and answers which `Policy` is in force."""

    def __init__(
        self,
        limits: ConservativeLimits | None = None,
        *,
        clock: Clock = monotonic_ms,
        sink: EventSink | None = None,
        source_id: str = "",
        service: str = SUBSYSTEM,
    ) -> None:
        self.limits = limits or ConservativeLimits()
        self.service = service
        self._clock = clock
        self._sink: EventSink = sink or NullSink()
        self._source_id = source_id
        self._state = ConservativeState()
        self._lock = threading.Lock()
        self._pending: deque[ConservativeTransition] = deque()
        self._emitting = threading.Lock()  # one thread drains `_pending` at a time, so events leave in order

    # -- observations ------------------------------------------------------------------------------------------

    def observe_breaker(self, name: str, state: CircuitState) -> ConservativeTransition | None:
        return self._step(lambda s, now: observe_breaker(s, self.limits, name, state, now))

    def compile_timeout(self, job: str, detail: str = "") -> ConservativeTransition | None:
        return self._step(lambda s, now: observe_compile_timeout(s, self.limits, job, now, detail))

    def gpu_sample(self, percent: float | None) -> ConservativeTransition | None:
        return self._step(lambda s, now: observe_gpu(s, self.limits, percent, now))

    def memory_sample(self, fraction: float | None) -> ConservativeTransition | None:
        return self._step(lambda s, now: observe_memory(s, self.limits, fraction, now))

    def sample(self, sample: ResourceSample) -> tuple[ConservativeTransition, ...]:
        """Feed one `ResourceSample` (GPU, then memory); the transitions it caused."""
        found = (self.gpu_sample(sample.gpu_percent), self.memory_sample(sample.memory_fraction))
        return tuple(t for t in found if t is not None)

    def force(self, on: bool, reason: str = "operator") -> ConservativeTransition | None:
        return self._step(lambda s, now: force(s, on, reason, now))

    def tick(self) -> ConservativeTransition | None:
        """Apply the leave rule now (call it periodically: leaving needs time to pass, not an observation)."""
        return self._step(lambda s, now: tick(s, self.limits, now))

    def watch(self, breaker: CircuitBreaker) -> None:
        """Follow `breaker`: its current state now, then each transition it makes."""
        breaker.add_listener(self._on_breaker_transition)
        self.observe_breaker(breaker.name, breaker.state)

    def _on_breaker_transition(self, breaker: CircuitBreaker, transition: Transition) -> None:
        self.observe_breaker(breaker.name, transition.to_state)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def state(self) -> ConservativeState:
        return self._state

    @property
    def active(self) -> bool:
        return self._state.active

    @property
    def causes(self) -> tuple[Cause, ...]:
        return self._state.causes

    def policy(self) -> Policy:
        return effective_policy(self._state, self.limits)

    # -- the shell ---------------------------------------------------------------------------------------------

    def _step(self, fn: Callable[[ConservativeState, float], Step]) -> ConservativeTransition | None:
        now = self._clock()  # read before the lock: a clock is foreign code
        with self._lock:
            self._state, transition = fn(self._state, now)
            if transition is not None:
                self._pending.append(transition)
        if transition is not None:
            self._drain()
        return transition

    def _drain(self) -> None:
        while self._pending:
            if not self._emitting.acquire(blocking=False):
                return  # the thread holding it emits what is pending, ours included
            try:
                while True:
                    with self._lock:
                        if not self._pending:
                            break
                        transition = self._pending.popleft()
                    self._sink.emit(self._event(transition))
            finally:
                self._emitting.release()

    def _event(self, t: ConservativeTransition) -> pb.SafetyEvent:
        detail = pb.ConservativeModeChanged(
            service=self.service,
            active=t.active,
            reasons=[c.text for c in t.causes],
            cooldown_ms=self.limits.cooldown_ms,
        )
        if t.active:
            severity, message = pb.TELEMETRY_WARN, f"{self.service}: conservative mode entered ({t.reason})"
        else:
            severity = pb.TELEMETRY_INFO
            message = f"{self.service}: conservative mode left after {t.duration_ms / 1000:.0f} s ({t.reason})"
        return safety_event(severity, message, detail, source_id=self._source_id, subsystem=SUBSYSTEM)
