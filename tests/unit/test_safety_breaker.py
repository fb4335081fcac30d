"""The circuit breaker's state machine, its shell and its registry, with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    WindowType,
    safe_assert,
)
from esper.safety.clock import ManualClock
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import MemorySink
from esper.safety.exceptions import CallNotPermittedError, ConfigError, UnknownBreakerError


class Boom(RuntimeError):
    pass


def fail() -> None:
    raise Boom("boom")


def ok() -> str:
    return "ok"


def make(clock: ManualClock | None = None, sink: MemorySink | None = None, **cfg: object) -> CircuitBreaker:
    config = CircuitBreakerConfig(**{"failure_threshold": 3, "timeout_ms": 1000, "success_threshold": 2, **cfg})  # type: ignore[arg-type]
    return CircuitBreaker("b", config, clock=clock or ManualClock(), sink=sink)


def trip(b: CircuitBreaker, n: int = 3) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            b.call(fail)


def test_opens_after_failure_threshold_consecutive_failures_and_reraises() -> None:
    b = make()
    trip(b, 2)
    assert b.state is CircuitState.CLOSED
    b.call(ok)  # a success resets the consecutive count
    trip(b, 2)
    assert b.state is CircuitState.CLOSED
    trip(b, 1)
    assert b.state is CircuitState.OPEN


def test_open_breaker_rejects_with_a_typed_error_and_does_not_run_the_call() -> None:
    b = make()
    trip(b)
    ran = []
    with pytest.raises(CallNotPermittedError) as info:
        b.call(lambda: ran.append(1))
    assert ran == [] and info.value.breaker == "b" and info.value.state == "OPEN"
    assert b.get_stats().total_rejected == 1


def test_half_open_admits_exactly_success_threshold_probes_and_closes_on_the_last() -> None:
    clock = ManualClock()
    b = make(clock)
    trip(b)
    clock.advance(999)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)
    clock.advance(1)
    assert b.call(ok) == "ok"
    assert b.state is CircuitState.HALF_OPEN
    assert b.call(ok) == "ok"
    assert b.state is CircuitState.CLOSED  # closed as soon as the 2nd success is recorded, not one call later


def test_half_open_failure_reopens_and_restarts_the_timeout() -> None:
    clock = ManualClock()
    b = make(clock)
    trip(b)
    clock.advance(1000)
    b.call(ok)
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is CircuitState.OPEN
    clock.advance(999)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)


def test_half_open_permits_are_exact_under_concurrency() -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=3)
    trip(b)
    clock.advance(1000)
    release = threading.Event()
    admitted = []
    rejected = []

    def probe() -> None:
        try:
            b.call(lambda: (admitted.append(1), release.wait(5)))
        except CallNotPermittedError:
            rejected.append(1)

    threads = [threading.Thread(target=probe) for _ in range(10)]
    for t in threads:
        t.start()
    while len(admitted) + len(rejected) < 10:
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join()
    assert (len(admitted), len(rejected)) == (3, 7)
    assert b.state is CircuitState.CLOSED


def test_lock_is_not_held_during_the_protected_call() -> None:
    b = make()
    inner = []
    b.call(lambda: inner.append(b.get_stats().state))  # would deadlock if the lock were held
    assert inner == [pb.CIRCUIT_CLOSED]


def test_outcome_of_a_call_admitted_before_a_transition_is_not_a_probe() -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=1)
    started, release = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: b.call(lambda: (started.set(), release.wait(5))))
    t.start()
    started.wait(5)
    trip(b)
    clock.advance(1000)
    with pytest.raises(Boom):
        b.call(fail)  # takes the single probe permit and reopens
    release.set()
    t.join()  # the old call succeeds late: it must not close the breaker
    assert b.state is CircuitState.OPEN


def test_ignored_exceptions_are_not_failures_and_give_back_a_half_open_permit() -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=1, ignore_exceptions=(KeyError,))
    for _ in range(5):
        with pytest.raises(KeyError):
            b.call(lambda: {}["x"])
    assert b.state is CircuitState.CLOSED and b.get_stats().total_failures == 0
    trip(b)
    clock.advance(1000)
    with pytest.raises(KeyError):
        b.call(lambda: {}["x"])
    assert b.call(ok) == "ok"  # the permit came back
    assert b.state is CircuitState.CLOSED


def test_record_predicate_decides_what_is_a_failure() -> None:
    b = make(record_failure_predicate=lambda e: "fatal" in str(e))
    for _ in range(5):
        with pytest.raises(ValueError):
            b.call(lambda: (_ for _ in ()).throw(ValueError("benign")))
    assert b.state is CircuitState.CLOSED
    assert b.get_stats().total_successes == 5


def test_failure_rate_over_count_window_needs_the_minimum_number_of_calls() -> None:
    b = make(failure_threshold=0, failure_rate_threshold=50, window_size=4, minimum_number_of_calls=4)
    b.call(ok)
    b.call(ok)
    trip(b, 1)
    assert b.state is CircuitState.CLOSED  # 1/3 and below the minimum
    trip(b, 1)
    assert b.state is CircuitState.OPEN  # 2/4 = 50%


def test_count_window_slides() -> None:
    b = make(failure_threshold=0, failure_rate_threshold=75, window_size=4, minimum_number_of_calls=4)
    trip(b, 2)
    for _ in range(4):
        b.call(ok)
    trip(b, 2)
    assert b.state is CircuitState.CLOSED  # the first two failures slid out: 2/4
    trip(b, 1)
    assert b.state is CircuitState.OPEN  # 3/4


def test_time_window_forgets_old_seconds() -> None:
    clock = ManualClock()
    b = make(
        clock,
        failure_threshold=0,
        failure_rate_threshold=60,
        window_type=WindowType.TIME,
        window_size=2,
        minimum_number_of_calls=3,
    )
    trip(b, 2)
    clock.advance(2500)
    b.call(ok)
    trip(b, 1)
    assert b.state is CircuitState.CLOSED and b.get_stats().failure_rate == 50.0
    trip(b, 1)
    assert b.state is CircuitState.OPEN


def test_slow_calls_open_by_rate() -> None:
    clock = ManualClock()
    b = make(
        clock, failure_threshold=0, slow_call_rate_threshold=50, slow_call_duration_ms=100, minimum_number_of_calls=2
    )
    b.call(ok)
    b.call(lambda: clock.advance(150))
    assert b.state is CircuitState.OPEN
    assert b.get_stats().slow_call_rate == 50.0


def test_forced_disabled_and_metrics_only_states() -> None:
    sink = MemorySink()
    b = make(sink=sink)
    b.transition_to_forced_open()
    with pytest.raises(CallNotPermittedError):
        b.call(ok)
    b.transition_to_disabled()
    trip(b, 10)
    assert b.state is CircuitState.DISABLED and b.get_stats().total_failures == 0
    b.transition_to_metrics_only()
    trip(b, 10)
    assert b.state is CircuitState.METRICS_ONLY and b.get_stats().total_failures == 10
    b.reset()
    assert b.state is CircuitState.CLOSED and b.get_stats().total_calls == 0
    to_states = [e.breaker_transition.to_state for e in sink.of_kind("breaker_transition")]
    assert to_states == [pb.CIRCUIT_FORCED_OPEN, pb.CIRCUIT_DISABLED, pb.CIRCUIT_METRICS_ONLY, pb.CIRCUIT_CLOSED]


def test_every_failure_and_transition_is_an_event_with_stats() -> None:
    sink = MemorySink()
    b = make(sink=sink)
    trip(b)
    failures = sink.of_kind("breaker_failure")
    assert len(failures) == 3 and failures[0].breaker_failure.error_type == "Boom"
    assert failures[-1].breaker_failure.stats.current_failure_count == 3
    (t,) = sink.of_kind("breaker_transition")
    assert (t.breaker_transition.from_state, t.breaker_transition.to_state) == (pb.CIRCUIT_CLOSED, pb.CIRCUIT_OPEN)
    assert t.breaker_transition.stats.state == pb.CIRCUIT_OPEN and t.severity == pb.TELEMETRY_WARN


def test_get_stats_has_the_spec_fields() -> None:
    clock = ManualClock(5000)
    b = make(clock)
    b.call(ok)
    trip(b, 1)
    s = b.get_stats()
    assert (s.name, s.state, s.total_calls, s.total_successes, s.total_failures) == ("b", 1, 2, 1, 1)
    assert (s.current_failure_count, s.success_rate, s.last_failure_time_ms) == (1, 0.5, 5000)


def test_listeners_see_transitions() -> None:
    b = make()
    seen = []
    b.add_listener(lambda br, t: seen.append((br.name, t.to_state)))
    trip(b)
    assert seen == [("b", CircuitState.OPEN)]


def test_call_async() -> None:
    clock = ManualClock()
    b = make(clock)

    async def afail() -> None:
        raise Boom("x")

    async def aok() -> int:
        await asyncio.sleep(0)
        return 7

    async def scenario() -> None:
        assert await b.call_async(aok) == 7
        for _ in range(3):
            with pytest.raises(Boom):
                await b.call_async(afail)
        with pytest.raises(CallNotPermittedError):
            await b.call_async(aok)

    asyncio.run(scenario())
    assert b.state is CircuitState.OPEN


def test_safe_assert_returns_bools_through_the_breaker() -> None:
    b = make()
    assert safe_assert(True, "fine", b) is True
    assert [safe_assert(False, "broken", b) for _ in range(4)] == [False] * 4
    assert b.state is CircuitState.OPEN and b.get_stats().total_rejected == 1


def test_invalid_config_lists_every_violation() -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(failure_threshold=-1, success_threshold=0, window_size=0, failure_rate_threshold=150)
    assert len(info.value.violations) == 4


def test_registry_holds_the_spec_breakers_with_their_thresholds() -> None:
    sink = MemorySink()
    reg = BreakerRegistry.with_spec_breakers(sink=sink)
    got = {b.name: (b.config.failure_threshold, b.config.timeout_ms) for b in reg}
    assert got == {
        "gradient_isolation": (3, 30_000),
        "memory_bounds": (5, 60_000),
        "kernel_loading": (10, 30_000),
        "checkpoint_recompilation": (3, 120_000),
        "teacher_memory_overflow": (2, 180_000),
    }
    assert reg.get_or_create("gradient_isolation") is reg["gradient_isolation"]
    with pytest.raises(UnknownBreakerError):
        reg.get("nope")
    other = BreakerRegistry.with_spec_breakers(ProductionSafetyConfig(kernel_loading_failure_threshold=4))
    assert other["kernel_loading"].config.failure_threshold == 4
    assert other["kernel_loading"] is not reg["kernel_loading"]  # no shared singletons


# ---------------------------------------------------------------- property test against a reference model


class Reference:
    """The spec's breaker as simply as it can be written (sequential calls only)."""

    def __init__(self, ft: int, timeout: int, st: int) -> None:
        self.ft, self.timeout, self.st = ft, timeout, st
        self.state, self.fails, self.opened, self.permits, self.succ = "CLOSED", 0, 0.0, 0, 0

    def call(self, now: float, success: bool) -> str:
        if self.state == "OPEN" and now - self.opened >= self.timeout:
            self.state, self.permits, self.succ = "HALF_OPEN", self.st, 0
        if self.state == "OPEN" or (self.state == "HALF_OPEN" and self.permits == 0):
            return "rejected"
        if self.state == "HALF_OPEN":
            self.permits -= 1
        if success:
            if self.state == "CLOSED":
                self.fails = 0
            else:
                self.succ += 1
                if self.succ >= self.st:
                    self.state, self.fails = "CLOSED", 0
            return "ok"
        if self.state == "CLOSED":
            self.fails += 1
            if self.fails >= self.ft:
                self.state, self.opened = "OPEN", now
        else:
            self.state, self.opened = "OPEN", now
        return "failed"


@settings(max_examples=200, deadline=None)
@given(
    ft=st.integers(1, 4),
    st_=st.integers(1, 3),
    ops=st.lists(st.tuples(st.integers(0, 700), st.booleans()), max_size=60),
)
def test_breaker_matches_reference_model(ft: int, st_: int, ops: list[tuple[int, bool]]) -> None:
    clock = ManualClock()
    b = CircuitBreaker(
        "p", CircuitBreakerConfig(failure_threshold=ft, timeout_ms=1000, success_threshold=st_), clock=clock
    )
    ref = Reference(ft, 1000, st_)
    for dt, success in ops:
        clock.advance(dt)
        expected = ref.call(clock(), success)
        try:
            b.call(ok if success else fail)
            got = "ok"
        except CallNotPermittedError:
            got = "rejected"
        except Boom:
            got = "failed"
        assert got == expected
        assert b.state.name == ref.state
