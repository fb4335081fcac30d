"""Conservative mode: the pure core's entry and leave rules, the policies, and the shell's events and breaker watch."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.compiler.conservative import (
    CONSERVATIVE_POLICY,
    NORMAL_POLICY,
    CauseKind,
    ConservativeLimits,
    ConservativeModeController,
    ConservativeState,
    Nvml,
    ResourceSample,
    Step,
    cheaper_tier,
    effective_policy,
    force,
    observe_breaker,
    observe_compile_timeout,
    observe_gpu,
    observe_memory,
    sample_resources,
    tick,
)
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CircuitState, CompilationStrategy
from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig
from esper.safety.clock import ManualClock
from esper.safety.exceptions import ConfigError
from tests.sinks import MemorySink

LIMITS = ConservativeLimits()
MIN = 60_000
IDLE = ConservativeState()


def test_defaults_are_the_specs() -> None:
    assert LIMITS.auto_enable
    assert LIMITS.gpu_threshold_percent == 20 and LIMITS.threshold_duration_ms == 5 * MIN
    assert LIMITS.memory_threshold == 0.80 and LIMITS.cooldown_ms == 5 * MIN


def test_invalid_limits_list_every_problem() -> None:
    with pytest.raises(ConfigError) as e:
        ConservativeLimits(gpu_threshold_percent=120, memory_threshold=1.5, cooldown_ms=-1)
    assert len(e.value.violations) == 3


@pytest.mark.parametrize("state", [CircuitState.OPEN, CircuitState.FORCED_OPEN])
def test_a_breaker_opening_enters(state: CircuitState) -> None:
    s, t = observe_breaker(IDLE, LIMITS, "compile", state, 1000)
    assert s.active and t is not None and t.active and t.at_ms == 1000
    assert [(c.kind, c.subject) for c in t.causes] == [(CauseKind.BREAKER_OPEN, "compile")]
    assert "compile" in t.reason


@pytest.mark.parametrize("state", [CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.DISABLED])
def test_other_breaker_states_do_not_enter(state: CircuitState) -> None:
    s, t = observe_breaker(IDLE, LIMITS, "compile", state, 1000)
    assert not s.active and t is None and s.breaker_state("compile") is state


def test_a_compile_timeout_enters() -> None:
    s, t = observe_compile_timeout(IDLE, LIMITS, "job-7", 5, "STANDARD past 250 s")
    assert s.active and t is not None
    assert t.causes[0].kind is CauseKind.COMPILE_TIMEOUT and "job-7" in t.causes[0].text


def test_memory_above_80_percent_enters_and_at_80_does_not() -> None:
    s, t = observe_memory(IDLE, LIMITS, 0.80, 0)
    assert not s.active and t is None
    s, t = observe_memory(s, LIMITS, 0.81, 10)
    assert s.active and t is not None and t.causes[0].kind is CauseKind.MEMORY_HIGH


def feed_gpu(state: ConservativeState, samples: list[tuple[float, float | None]]) -> Step:
    step: Step = (state, None)
    for now, percent in samples:
        step = observe_gpu(step[0], LIMITS, percent, now)
        if step[1] is not None:
            return step
    return step


def test_gpu_above_20_percent_for_5_minutes_enters() -> None:
    s, t = feed_gpu(IDLE, [(m * MIN, 50.0) for m in range(5)])
    assert not s.active and t is None and s.gpu_high_since_ms == 0
    s, t = observe_gpu(s, LIMITS, 21.0, 5 * MIN)
    assert s.active and t is not None and t.causes[0].kind is CauseKind.GPU_HIGH


@pytest.mark.parametrize("interruption", [20.0, 3.0, None])
def test_an_interrupted_gpu_excursion_starts_again(interruption: float | None) -> None:
    s, t = feed_gpu(IDLE, [(0, 50.0), (3 * MIN, interruption), (4 * MIN, 50.0), (8 * MIN, 50.0)])
    assert not s.active and t is None and s.gpu_high_since_ms == 4 * MIN
    s, t = observe_gpu(s, LIMITS, 50.0, 9 * MIN)
    assert s.active and t is not None


def test_no_gpu_is_never_a_cause() -> None:
    s, t = feed_gpu(IDLE, [(m * MIN, None) for m in range(20)])
    assert not s.active and t is None and s.gpu_percent is None


def test_cool_down_with_a_breaker_still_open_stays() -> None:
    s, _ = observe_breaker(IDLE, LIMITS, "compile", CircuitState.OPEN, 0)
    s, t = tick(s, LIMITS, 60 * MIN)
    assert s.active and t is None
    s, t = observe_breaker(s, LIMITS, "compile", CircuitState.HALF_OPEN, 61 * MIN)
    assert s.active and t is None  # half-open is still deciding


def test_leaves_a_cool_down_after_every_breaker_closed() -> None:
    s, _ = observe_breaker(IDLE, LIMITS, "compile", CircuitState.OPEN, 0)
    s, _ = observe_breaker(s, LIMITS, "cache", CircuitState.OPEN, MIN)
    s, t = observe_breaker(s, LIMITS, "compile", CircuitState.CLOSED, 10 * MIN)
    assert s.active and t is None
    s, t = observe_breaker(s, LIMITS, "cache", CircuitState.CLOSED, 20 * MIN)
    assert s.active and t is None  # the cool-down starts when the last one closes
    s, t = tick(s, LIMITS, 25 * MIN - 1)
    assert s.active and t is None
    s, t = tick(s, LIMITS, 25 * MIN)
    assert not s.active and t is not None and not t.active
    assert t.duration_ms == 25 * MIN
    assert {c.subject for c in t.causes} == {"compile", "cache"}
    assert s.causes == ()


@pytest.mark.parametrize("settled", [CircuitState.DISABLED, CircuitState.METRICS_ONLY])
def test_an_operator_taking_a_breaker_out_lets_the_mode_go(settled: CircuitState) -> None:
    s, _ = observe_breaker(IDLE, LIMITS, "compile", CircuitState.OPEN, 0)
    s, _ = observe_breaker(s, LIMITS, "compile", settled, MIN)
    s, t = tick(s, LIMITS, 6 * MIN)
    assert not s.active and t is not None


def test_a_new_cause_while_active_restarts_the_cool_down_and_is_recorded_once() -> None:
    s, _ = observe_compile_timeout(IDLE, LIMITS, "job-1", 0)
    s, t = observe_memory(s, LIMITS, 0.9, 4 * MIN)
    assert t is None
    s, _ = observe_memory(s, LIMITS, 0.95, 5 * MIN)
    assert [c.kind for c in s.causes] == [CauseKind.COMPILE_TIMEOUT, CauseKind.MEMORY_HIGH]
    assert s.causes[1].first_ms == 4 * MIN and s.causes[1].last_ms == 5 * MIN and "95%" in s.causes[1].text
    s, t = observe_memory(s, LIMITS, 0.5, 6 * MIN)  # back under: the cool-down runs from here
    s, t = tick(s, LIMITS, 11 * MIN - 1)
    assert s.active and t is None
    s, t = tick(s, LIMITS, 11 * MIN)
    assert not s.active and t is not None


def test_gpu_still_high_holds_the_mode() -> None:
    s, _ = observe_compile_timeout(IDLE, LIMITS, "job-1", 0)
    s, t = observe_gpu(s, LIMITS, 30.0, 10 * MIN)  # high, not yet for 5 minutes: not a cause, but it holds
    assert s.active and t is None
    s, t = tick(s, LIMITS, 30 * MIN)
    assert s.active and t is None
    s, t = observe_gpu(s, LIMITS, 10.0, 31 * MIN)
    s, t = tick(s, LIMITS, 36 * MIN)
    assert not s.active and t is not None


def test_auto_enable_off_never_enters_by_itself() -> None:
    off = ConservativeLimits(auto_enable=False)
    s, t = observe_breaker(IDLE, off, "compile", CircuitState.OPEN, 0)
    s, t2 = observe_compile_timeout(s, off, "job", 1)
    s, t3 = observe_memory(s, off, 0.99, 2)
    assert not s.active and t is t2 is t3 is None


def test_force_on_holds_until_forced_off() -> None:
    s, t = force(IDLE, True, "maintenance", 0)
    assert s.active and s.forced and t is not None and t.causes[0].kind is CauseKind.OPERATOR
    s, t = tick(s, LIMITS, 600 * MIN)
    assert s.active and t is None
    s, t = force(s, False, "done", 601 * MIN)
    assert not s.active and t is not None and "done" in t.reason
    assert force(s, False, "again", 602 * MIN) == (s, None)


def test_force_works_with_auto_enable_off_and_off_leaves_whatever_holds() -> None:
    off = ConservativeLimits(auto_enable=False)
    s, t = force(IDLE, True, "ops", 0)
    s, _ = observe_breaker(s, off, "compile", CircuitState.OPEN, 1)
    s, t = force(s, False, "ops", 2)
    assert not s.active and t is not None
    s, t = observe_breaker(s, off, "compile", CircuitState.OPEN, 3)
    assert not s.active and t is None


def test_force_on_while_active_marks_it_held_without_a_transition() -> None:
    s, _ = observe_compile_timeout(IDLE, LIMITS, "job", 0)
    s, t = force(s, True, "ops", 1)
    assert t is None and s.forced
    s, t = tick(s, LIMITS, 100 * MIN)
    assert s.active


def test_policy_numbers_normal_and_conservative() -> None:
    normal = effective_policy(IDLE, LIMITS)
    assert normal is NORMAL_POLICY
    assert (normal.max_concurrent_jobs, normal.gpu_ceiling_percent, normal.cache_entries) == (2, 25.0, 16_384)
    assert normal.idle_recompilation and normal.timeout_s(250.0) == 250.0
    assert normal.tier(CompilationStrategy.AGGRESSIVE) is CompilationStrategy.AGGRESSIVE
    s, _ = observe_compile_timeout(IDLE, LIMITS, "job", 0)
    cons = effective_policy(s, LIMITS)
    assert cons is CONSERVATIVE_POLICY
    assert (cons.max_concurrent_jobs, cons.gpu_ceiling_percent, cons.cache_entries) == (1, 15.0, 8_192)
    assert not cons.idle_recompilation and cons.timeout_s(250.0) == 375.0
    assert cons.memory_budget_bytes * 2 == normal.memory_budget_bytes
    assert cons.tier(CompilationStrategy.AGGRESSIVE) is CompilationStrategy.STANDARD
    assert cons.tier(CompilationStrategy.EMERGENCY) is CompilationStrategy.EMERGENCY


def test_cheaper_tiers_step_down_once() -> None:
    S = CompilationStrategy
    assert [cheaper_tier(t) for t in (S.AGGRESSIVE, S.STANDARD, S.FAST, S.EMERGENCY)] == [
        S.STANDARD,
        S.FAST,
        S.EMERGENCY,
        S.EMERGENCY,
    ]


_observation = st.one_of(
    st.tuples(st.just("breaker"), st.sampled_from(["a", "b", "c"]), st.sampled_from(list(CircuitState))),
    st.tuples(st.just("timeout"), st.sampled_from(["j1", "j2"])),
    st.tuples(st.just("gpu"), st.one_of(st.none(), st.floats(0, 100))),
    st.tuples(st.just("memory"), st.one_of(st.none(), st.floats(0, 1))),
    st.tuples(st.just("tick")),
)


def _apply(state: ConservativeState, limits: ConservativeLimits, obs: tuple[object, ...], now: float) -> Step:
    kind = obs[0]
    if kind == "breaker":
        return observe_breaker(state, limits, str(obs[1]), obs[2], now)  # type: ignore[arg-type]
    if kind == "timeout":
        return observe_compile_timeout(state, limits, str(obs[1]), now)
    if kind == "gpu":
        return observe_gpu(state, limits, obs[1], now)  # type: ignore[arg-type]
    if kind == "memory":
        return observe_memory(state, limits, obs[1], now)  # type: ignore[arg-type]
    return tick(state, limits, now)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10 * MIN), _observation), max_size=60),
    st.booleans(),
)
def test_random_observations_never_leave_with_a_breaker_open_nor_enter_with_auto_off(
    steps: list[tuple[int, tuple[object, ...]]], auto: bool
) -> None:
    limits = ConservativeLimits(auto_enable=auto)
    state, now = IDLE, 0.0
    for delay, obs in steps:
        now += delay
        before = state
        state, t = _apply(state, limits, obs, now)
        assert (t is not None) == (state.active != before.active)
        if not auto:
            assert not state.active
        if before.active and not state.active:
            assert not state.unsettled_breakers()
            assert now - before.last_cause_ms >= limits.cooldown_ms
        if state.active:
            assert state.causes
        if any(s in (CircuitState.OPEN, CircuitState.FORCED_OPEN) for _, s in state.breakers) and auto:
            assert state.active


# -- the shell ---------------------------------------------------------------------------------------------


def controller(**kwargs: object) -> tuple[ConservativeModeController, ManualClock, MemorySink]:
    clock, sink = ManualClock(), MemorySink()
    limits = ConservativeLimits(**kwargs)  # type: ignore[arg-type]
    return ConservativeModeController(limits, clock=clock, sink=sink, source_id="tz-1"), clock, sink


def test_events_on_enter_and_leave_name_the_causes() -> None:
    c, clock, sink = controller()
    assert not c.active and c.policy() is NORMAL_POLICY
    c.compile_timeout("job-1", "FAST past 65 s")
    assert c.active and c.policy() is CONSERVATIVE_POLICY and c.causes[0].subject == "job-1"
    clock.advance(MIN)
    c.memory_sample(0.9)
    clock.advance(MIN)
    c.memory_sample(0.4)
    clock.advance(5 * MIN)
    left = c.tick()
    assert left is not None and not c.active and c.policy() is NORMAL_POLICY
    events = sink.of_kind("conservative_mode")
    assert len(events) == 2
    entered, gone = (e.conservative_mode for e in events)
    assert entered.active and entered.service == "tezzeret" and entered.cooldown_ms == 5 * MIN
    assert list(entered.reasons) == ["compile timeout: job-1 (FAST past 65 s)"]
    assert not gone.active and len(gone.reasons) == 2 and "memory 90%" in gone.reasons[1]
    assert {e.subsystem for e in events} == {"tezzeret"} and {e.source_id for e in events} == {"tz-1"}
    assert events[0].severity == pb.TELEMETRY_WARN and events[1].severity == pb.TELEMETRY_INFO
    assert "left after 420 s" in events[1].message


def test_no_event_without_a_transition() -> None:
    c, _, sink = controller()
    c.memory_sample(0.5)
    c.gpu_sample(None)
    c.tick()
    c.force(False, "nothing to leave")
    assert sink.events == []


def test_watching_a_real_breaker_enters_when_it_opens_and_leaves_after_it_closes() -> None:
    c, clock, sink = controller()
    breaker = CircuitBreaker("compile", CircuitBreakerConfig(failure_threshold=2, timeout_ms=1000), clock=clock)
    c.watch(breaker)
    assert not c.active and c.state.breaker_state("compile") is CircuitState.CLOSED
    breaker.trip("two failed compiles")
    assert c.active and c.causes[0].text == "breaker compile OPEN"
    clock.advance(10 * MIN)
    assert c.tick() is None and c.active
    breaker.transition_to_closed("ops")
    clock.advance(5 * MIN)
    assert c.tick() is not None and not c.active
    assert [e.conservative_mode.active for e in sink.of_kind("conservative_mode")] == [True, False]


def test_watching_a_breaker_already_open_enters_at_once() -> None:
    c, clock, _ = controller()
    breaker = CircuitBreaker("cache", clock=clock)
    breaker.transition_to_forced_open("ops")
    c.watch(breaker)
    assert c.active and c.causes[0].text == "breaker cache FORCED_OPEN"


def test_shell_auto_enable_off_and_force() -> None:
    c, clock, sink = controller(auto_enable=False)
    c.observe_breaker("compile", CircuitState.OPEN)
    assert not c.active
    c.force(True, "drill")
    clock.advance(60 * MIN)
    c.tick()
    assert c.active
    c.force(False, "drill over")
    assert not c.active
    assert [e.conservative_mode.active for e in sink.of_kind("conservative_mode")] == [True, False]


def test_events_leave_in_the_order_of_the_transitions_under_contention() -> None:
    c, _, sink = controller()
    barrier = threading.Barrier(8)

    def flip(on: bool) -> None:
        barrier.wait()
        for _ in range(200):
            c.force(on, "flip")

    threads = [threading.Thread(target=flip, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = [e.conservative_mode.active for e in sink.of_kind("conservative_mode")]
    assert states and states[0] is True
    assert all(a != b for a, b in itertools.pairwise(states))  # entered, left, entered, ...
    assert states[-1] is c.active


# -- readings ------------------------------------------------------------------------------------------------


class FakeNvml:
    """A libnvidia-ml double: fills the structures passed by reference as the library does."""

    def __init__(self, gpu: int = 37, used: int = 9, total: int = 10, fail: str = "") -> None:
        self.gpu, self.used, self.total, self.fail = gpu, used, total, fail

    def _code(self, name: str) -> int:
        return 999 if name == self.fail else 0

    def nvmlInit_v2(self) -> int:
        return self._code("nvmlInit_v2")

    def nvmlDeviceGetHandleByIndex_v2(self, index: object, handle: object) -> int:
        return self._code("nvmlDeviceGetHandleByIndex_v2")

    def nvmlDeviceGetUtilizationRates(self, handle: object, rates: object) -> int:
        rates._obj.gpu = self.gpu  # type: ignore[attr-defined]
        return self._code("nvmlDeviceGetUtilizationRates")

    def nvmlDeviceGetMemoryInfo(self, handle: object, memory: object) -> int:
        memory._obj.used, memory._obj.total = self.used, self.total  # type: ignore[attr-defined]
        return self._code("nvmlDeviceGetMemoryInfo")


def test_no_nvml_library_is_reported_absent_and_memory_is_the_hosts() -> None:
    nvml = Nvml(library="libnvidia-ml-that-does-not-exist.so.1")
    assert not nvml.available and "not loadable" in nvml.error
    assert nvml.utilisation_percent() is None and nvml.memory_fraction() is None
    sample = sample_resources(nvml)
    assert sample.gpu_percent is None and sample.memory_source == "host"
    assert sample.memory_fraction is not None and 0 < sample.memory_fraction < 1
    assert sample_resources(None).gpu_percent is None


def test_nvml_readings_and_failures() -> None:
    nvml = Nvml(library=FakeNvml())
    assert nvml.available and nvml.utilisation_percent() == 37.0 and nvml.memory_fraction() == 0.9
    assert sample_resources(nvml) == ResourceSample(37.0, 0.9, "gpu")
    assert not Nvml(library=FakeNvml(fail="nvmlInit_v2")).available
    no_device = Nvml(library=FakeNvml(fail="nvmlDeviceGetHandleByIndex_v2"))
    assert not no_device.available and "error 999" in no_device.error
    broken = Nvml(library=FakeNvml(fail="nvmlDeviceGetUtilizationRates"))
    assert broken.available and broken.utilisation_percent() is None


def test_the_shell_takes_a_sample() -> None:
    c, _, sink = controller()
    assert c.sample(ResourceSample(None, 0.5, "host")) == ()
    (entered,) = c.sample(sample_resources(Nvml(library=FakeNvml(gpu=50, used=9, total=10))))
    assert entered.active and entered.causes[0].kind is CauseKind.MEMORY_HIGH
    assert c.state.gpu_percent == 50.0 and c.state.gpu_high_since_ms == 0
    assert [e.conservative_mode.reasons[0] for e in sink.of_kind("conservative_mode")] == ["memory 90% above 80%"]
