"""The circuit breaker's state machine, its shell and its registry, with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import (
    BreakerCore,
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    CountWindow,
    TimeWindow,
    Transition,
    WindowType,
    safe_assert,
)
from esper.safety.clock import ManualClock
from esper.safety.config import ProductionSafetyConfig
from esper.safety.exceptions import CallNotPermittedError, ConfigError, UnknownBreakerError
from tests.sinks import MemorySink


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


def hung_call(b: CircuitBreaker, outcome: Callable[[], object] = ok) -> tuple[threading.Thread, threading.Event]:
    """A call admitted now (its thread holds the permit) that ends with outcome() once the event is set."""
    started, release = threading.Event(), threading.Event()

    def body() -> object:
        started.set()
        release.wait(5)
        return outcome()

    def run() -> None:
        with contextlib.suppress(Boom):
            b.call(body)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(5)
    return t, release


def reasons(sink: MemorySink) -> list[tuple[int, str]]:
    return [(e.breaker_transition.to_state, e.breaker_transition.reason) for e in sink.of_kind("breaker_transition")]


WAIT_LIMIT = "half-open wait limit (500 ms) reached before the probes decided"


def test_a_hung_probe_holds_half_open_only_until_the_wait_limit_then_a_fresh_probe_goes_through() -> None:
    clock, sink = ManualClock(), MemorySink()
    b = make(clock, sink, success_threshold=1, max_wait_in_half_open_ms=500)
    trip(b)
    clock.advance(1000)
    t, release = hung_call(b)
    clock.advance(499)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)  # the hung probe holds the only permit
    assert b.state is CircuitState.HALF_OPEN
    clock.advance(1)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)
    assert b.state is CircuitState.OPEN and reasons(sink)[-1] == (pb.CIRCUIT_OPEN, WAIT_LIMIT)
    clock.advance(999)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)  # open for timeout_ms, counted from the limit
    clock.advance(1)
    assert b.call(ok) == "ok"
    assert b.state is CircuitState.CLOSED
    release.set()
    t.join()


@pytest.mark.parametrize("late", [ok, fail], ids=["late success", "late failure"])
def test_a_late_result_of_a_probe_from_before_the_wait_limit_decides_nothing(late: Callable[[], object]) -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=2, max_wait_in_half_open_ms=500)
    trip(b)
    clock.advance(1000)
    t, release = hung_call(b, late)
    b.call(ok)  # the other probe of this set
    clock.advance(500)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)  # the wait limit: OPEN
    clock.advance(1000)
    b.call(ok)  # first probe of a fresh set
    release.set()
    t.join()  # the stale probe returns: it neither closes (2nd success) nor reopens (failure) the fresh set
    assert b.state is CircuitState.HALF_OPEN and b.get_stats().current_success_count == 1
    b.call(ok)
    assert b.state is CircuitState.CLOSED


def test_a_probe_that_returns_after_the_wait_limit_decides_nothing() -> None:
    clock, sink = ManualClock(), MemorySink()
    b = make(clock, sink, success_threshold=1, max_wait_in_half_open_ms=500)
    trip(b)
    clock.advance(1000)
    assert b.call(clock.advance, 500) == 1500  # the call's own result, though it outlived the limit
    assert b.state is CircuitState.OPEN and reasons(sink)[-1] == (pb.CIRCUIT_OPEN, WAIT_LIMIT)
    assert b.get_stats().total_successes == 1


def test_a_probe_failing_after_the_wait_limit_leaves_the_breaker_open_from_the_limit() -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=2, max_wait_in_half_open_ms=500)
    trip(b)
    clock.advance(1000)

    def fail_at_1700() -> None:  # after the limit (1500): this probe decides nothing
        clock.advance(700)
        fail()

    with pytest.raises(Boom):
        b.call(fail_at_1700)
    assert b.state is CircuitState.OPEN
    clock.advance(800)  # 2500: a timeout after the limit, not after the failure
    assert b.call(ok) == "ok"
    assert b.state is CircuitState.HALF_OPEN


def test_a_call_a_timeout_past_the_wait_limit_sees_both_transitions_and_is_a_fresh_probe() -> None:
    clock, sink = ManualClock(), MemorySink()
    b = make(clock, sink, success_threshold=2, max_wait_in_half_open_ms=500)
    trip(b)
    clock.advance(1000)
    b.call(ok)  # one probe of two, then no call until well after the limit
    clock.advance(1500)
    assert b.call(ok) == "ok"
    assert b.state is CircuitState.HALF_OPEN and b.get_stats().current_success_count == 1  # a fresh set
    assert reasons(sink)[1:] == [
        (pb.CIRCUIT_HALF_OPEN, "1000 ms open elapsed"),
        (pb.CIRCUIT_OPEN, WAIT_LIMIT),
        (pb.CIRCUIT_HALF_OPEN, "1000 ms open elapsed"),
    ]


def test_wait_limit_zero_waits_for_the_probes_forever() -> None:
    clock = ManualClock()
    b = make(clock, success_threshold=1, max_wait_in_half_open_ms=0)
    trip(b)
    clock.advance(1000)
    t, release = hung_call(b)
    clock.advance(24 * 3600 * 1000)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)
    assert b.state is CircuitState.HALF_OPEN
    release.set()
    t.join()
    assert b.state is CircuitState.CLOSED  # the probe decided, a day late


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


def test_total_calls_counts_every_call_as_the_spec_did() -> None:
    clock = ManualClock()
    b = make(clock, ignore_exceptions=(KeyError,))
    b.call(ok)
    with pytest.raises(KeyError):
        b.call(lambda: {}["x"])
    trip(b)
    with pytest.raises(CallNotPermittedError):
        b.call(ok)
    s = b.get_stats()
    assert (s.total_calls, s.total_successes, s.total_failures, s.total_rejected) == (6, 1, 3, 1)
    assert s.success_rate == pytest.approx(1 / 6)


def test_a_raising_listener_never_replaces_the_calls_own_result_or_exception() -> None:
    clock = ManualClock()
    sink = MemorySink()
    b = make(clock, sink=sink, success_threshold=1)
    seen: list[CircuitState] = []

    def broken(_: CircuitBreaker, t: Transition) -> None:
        raise RuntimeError("listener bug")

    b.add_listener(broken)
    b.add_listener(lambda _, t: seen.append(t.to_state))
    for _ in range(3):
        with pytest.raises(Boom):  # the third failure opens the breaker: still the call's own Boom
            b.call(fail)
    clock.advance(1000)
    assert b.call(ok) == "ok"  # HALF_OPEN -> CLOSED: still the call's own result
    assert seen == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert b.listener_errors == 3 and len(sink.of_kind("breaker_transition")) == 3


def test_record_predicate_decides_what_is_a_failure() -> None:
    b = make(record_failure_predicate=lambda e: "fatal" in str(e))
    for _ in range(5):
        with pytest.raises(ValueError):
            b.call(lambda: (_ for _ in ()).throw(ValueError("benign")))
    assert b.state is CircuitState.CLOSED
    assert b.get_stats().total_successes == 5


def judge_only_fatal(e: BaseException) -> bool:
    """A buggy predicate: KeyError for any message it was not written for."""
    return {"fatal": True, "benign": False}[str(e)]


def test_a_raising_predicate_makes_the_call_a_failure_and_the_caller_gets_its_own_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink()
    b = make(sink=sink, record_failure_predicate=judge_only_fatal)
    own = Boom("unjudged")
    for _ in range(3):
        with pytest.raises(Boom) as info:
            b.call(lambda: (_ for _ in ()).throw(own))
        assert info.value is own
    assert b.state is CircuitState.OPEN and b.get_stats().total_failures == 3
    assert b.predicate_errors == 3
    assert [f.breaker_failure.error_type for f in sink.of_kind("breaker_failure")] == ["Boom"] * 3
    assert sum("predicate" in r.getMessage() and r.exc_info is not None for r in caplog.records) == 3


def test_a_raising_predicate_on_a_probe_reopens_instead_of_keeping_its_permit() -> None:
    clock = ManualClock()
    b = make(clock, record_failure_predicate=judge_only_fatal)
    for _ in range(3):
        with pytest.raises(Boom):
            b.call(lambda: (_ for _ in ()).throw(Boom("fatal")))
    clock.advance(1000)
    with pytest.raises(Boom):
        b.call(lambda: (_ for _ in ()).throw(Boom("unjudged")))
    assert b.state is CircuitState.OPEN  # a failing probe, not a permit gone for good
    clock.advance(1000)
    assert (b.call(ok), b.call(ok)) == ("ok", "ok")
    assert b.state is CircuitState.CLOSED


def test_a_predicate_answering_none_counts_the_call_as_a_success_not_as_ignored() -> None:
    b = make(record_failure_predicate=lambda e: re.search("fatal", str(e)))  # a Match or None, not a bool
    with pytest.raises(Boom):
        b.call(lambda: (_ for _ in ()).throw(Boom("benign")))
    s = b.get_stats()
    assert (s.total_successes, s.total_failures, s.total_calls) == (1, 0, 1)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no str")


def test_an_exception_whose_str_raises_still_reaches_the_caller_and_is_recorded() -> None:
    sink = MemorySink()
    b = make(sink=sink)
    with pytest.raises(Unprintable):
        b.call(lambda: (_ for _ in ()).throw(Unprintable()))
    (event,) = sink.of_kind("breaker_failure")
    assert event.breaker_failure.error_type == "Unprintable" and b.get_stats().total_failures == 1


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


@pytest.mark.parametrize("state", list(CircuitState))
def test_trip_opens_only_a_closed_or_half_open_breaker(state: CircuitState) -> None:
    core = BreakerCore(CircuitBreakerConfig())
    core.force(state, 1.0, "setup")
    opened_at = core.opened_at_ms
    transition = core.trip(5.0, "verdict")
    if state in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
        assert transition == Transition(state, CircuitState.OPEN, "verdict", 5.0) and core.opened_at_ms == 5.0
    else:  # an open breaker keeps its timer; an operator's state stays
        assert transition is None and core.state is state and core.opened_at_ms == opened_at


def test_trip_says_whether_it_opened_and_publishes_only_then() -> None:
    sink = MemorySink()
    b = make(sink=sink)
    assert b.trip("verdict") and b.state is CircuitState.OPEN
    b.transition_to_forced_open()
    assert not b.trip("again") and b.state is CircuitState.FORCED_OPEN
    to_states = [e.breaker_transition.to_state for e in sink.of_kind("breaker_transition")]
    assert to_states == [pb.CIRCUIT_OPEN, pb.CIRCUIT_FORCED_OPEN]


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


def test_wait_limit_is_validated_and_on_by_default() -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(max_wait_in_half_open_ms=-1)
    assert info.value.violations == ("max_wait_in_half_open_ms must be >= 0 (0: wait forever), got -1",)
    assert CircuitBreakerConfig().max_wait_in_half_open_ms > 0  # a hung probe must not hold every caller off


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
    default_wait = CircuitBreakerConfig().max_wait_in_half_open_ms
    assert {b.config.max_wait_in_half_open_ms for b in [*reg, reg.get_or_create("custom")]} == {default_wait}
    with pytest.raises(UnknownBreakerError):
        reg.get("nope")
    other = BreakerRegistry.with_spec_breakers(ProductionSafetyConfig(kernel_loading_failure_threshold=4))
    assert other["kernel_loading"].config.failure_threshold == 4
    assert other["kernel_loading"] is not reg["kernel_loading"]  # no shared singletons


def test_other_breakers_of_a_spec_registry_open_for_circuit_breaker_timeout_ms() -> None:
    assert BreakerRegistry.with_spec_breakers().get_or_create("custom").config.timeout_ms == 60_000
    reg = BreakerRegistry.with_spec_breakers(ProductionSafetyConfig(circuit_breaker_timeout_ms=5000))
    assert reg.get_or_create("custom").config.timeout_ms == 5000
    assert CircuitBreakerConfig().timeout_ms == ProductionSafetyConfig().circuit_breaker_timeout_ms  # one default


# ---------------------------------------------------------------- property test against a reference model


class Reference:
    """The spec's breaker as simply as it can be written (sequential calls only)."""

    def __init__(self, ft: int, timeout: int, st: int, wait: int) -> None:
        self.ft, self.timeout, self.st, self.wait = ft, timeout, st, wait
        self.state, self.fails, self.opened, self.permits, self.succ = "CLOSED", 0, 0.0, 0, 0
        self.half_opened = 0.0

    def expire(self, now: float) -> bool:
        """Half-open for `wait` without the probes deciding: open, as from the moment the limit was reached."""
        if self.state == "HALF_OPEN" and self.wait and now - self.half_opened >= self.wait:
            self.state, self.opened = "OPEN", self.half_opened + self.wait
            return True
        return False

    def admit(self, now: float) -> None:
        self.expire(now)
        if self.state == "OPEN" and now - self.opened >= self.timeout:
            self.state, self.permits, self.succ, self.half_opened = "HALF_OPEN", self.st, 0, now

    def call(self, now: float, success: bool) -> str:
        self.admit(now)
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
    wait=st.sampled_from([0, 300, 1000]),
    ops=st.lists(st.tuples(st.integers(0, 700), st.booleans()), max_size=60),
)
def test_breaker_matches_reference_model(ft: int, st_: int, wait: int, ops: list[tuple[int, bool]]) -> None:
    clock = ManualClock()
    config = CircuitBreakerConfig(
        failure_threshold=ft, timeout_ms=1000, success_threshold=st_, max_wait_in_half_open_ms=wait
    )
    b = CircuitBreaker("p", config, clock=clock)
    ref = Reference(ft, 1000, st_, wait)
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


class RateReference(Reference):
    """The reference with the rate rules too: the count window is a plain deque of the last `size` outcomes."""

    def __init__(
        self, ft: int, timeout: int, st: int, wait: int, size: int, minimum: int, fr: float | None, sr: float | None
    ) -> None:
        super().__init__(ft, timeout, st, wait)
        self.minimum, self.fr, self.sr = minimum, fr, sr
        self.window: deque[tuple[bool, bool]] = deque(maxlen=size)  # (failed, slow)
        self.successes = self.failures = self.rejected = 0

    def rates_trip(self) -> bool:
        n = len(self.window)
        if n < self.minimum:
            return False
        failure_rate = 100.0 * sum(f for f, _ in self.window) / n
        slow_rate = 100.0 * sum(s for _, s in self.window) / n
        return (self.fr is not None and failure_rate >= self.fr) or (self.sr is not None and slow_rate >= self.sr)

    def open(self, now: float) -> None:
        self.state, self.opened = "OPEN", now

    def call_timed(self, start: float, success: bool, duration: float) -> str:
        end = start + duration
        self.admit(start)
        if self.state == "OPEN" or (self.state == "HALF_OPEN" and self.permits == 0):
            self.rejected += 1
            return "rejected"
        if self.state == "HALF_OPEN":
            self.permits -= 1
        # Successes are timed only with a slow-call rule; failures always are.
        slow = duration >= 100 and (not success or self.sr is not None)
        self.window.append((not success, slow))
        if self.expire(end):  # a probe that outlived the wait limit: counted, but it decides nothing
            self.successes += success
            self.failures += not success
            return "ok" if success else "failed"
        if success:
            self.successes += 1
            if self.state == "CLOSED":
                self.fails = 0
                if slow and self.rates_trip():
                    self.open(end)
            elif slow:
                self.open(end)
            else:
                self.succ += 1
                if self.succ >= self.st:
                    self.state, self.fails = "CLOSED", 0
                    self.window.clear()
            return "ok"
        self.failures += 1
        self.fails += 1
        if self.state == "CLOSED" and not (self.ft and self.fails >= self.ft) and not self.rates_trip():
            return "failed"
        self.open(end)
        return "failed"


@settings(max_examples=300, deadline=None)
@given(
    ft=st.integers(0, 4),
    st_=st.integers(1, 3),
    wait=st.sampled_from([0, 300, 1000]),
    size=st.integers(1, 6),
    minimum=st.integers(1, 6),
    fr=st.sampled_from([None, 25.0, 50.0, 75.0, 100.0]),
    sr=st.sampled_from([None, 50.0, 100.0]),
    ops=st.lists(st.tuples(st.integers(0, 700), st.booleans(), st.sampled_from([0, 50, 150])), max_size=80),
)
def test_breaker_with_rate_rules_matches_reference_model(
    ft: int,
    st_: int,
    wait: int,
    size: int,
    minimum: int,
    fr: float | None,
    sr: float | None,
    ops: list[tuple[int, bool, int]],
) -> None:
    """Sequences mostly of closed-state successes (the fast path) mixed with failures, slow calls, trips and
    probes: state, outcome and stats must match the reference at every step."""
    if ft == 0 and fr is None and sr is None:
        ft = 1
    clock = ManualClock()
    config = CircuitBreakerConfig(
        failure_threshold=ft,
        timeout_ms=1000,
        success_threshold=st_,
        max_wait_in_half_open_ms=wait,
        window_size=size,
        minimum_number_of_calls=minimum,
        failure_rate_threshold=fr,
        slow_call_rate_threshold=sr,
        slow_call_duration_ms=100,
    )
    b = CircuitBreaker("p", config, clock=clock)
    ref = RateReference(ft, 1000, st_, wait, size, minimum, fr, sr)

    def body(success: bool, duration: int) -> str:
        clock.advance(duration)
        if not success:
            raise Boom("x")
        return "ok"

    for dt, success, duration in ops:
        clock.advance(dt)
        expected = ref.call_timed(clock(), success, duration)
        try:
            got = b.call(body, success, duration)
        except CallNotPermittedError:
            got = "rejected"
        except Boom:
            got = "failed"
        assert got == expected
        assert b.state.name == ref.state
        s = b.get_stats()
        assert (s.total_successes, s.total_failures, s.total_rejected) == (ref.successes, ref.failures, ref.rejected)
        assert s.current_failure_count == ref.fails
        n = len(ref.window)
        assert s.failure_rate == (100.0 * sum(f for f, _ in ref.window) / n if n else 0.0)
        assert s.slow_call_rate == (100.0 * sum(sl for _, sl in ref.window) / n if n else 0.0)


@settings(max_examples=300, deadline=None)
@given(
    window_type=st.sampled_from(list(WindowType)),
    ft=st.integers(0, 3),
    wait=st.sampled_from([0, 500, 3000]),
    fr=st.sampled_from([None, 50.0]),
    sr=st.sampled_from([None, 50.0]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("acquire"), st.integers(0, 1500)),
            st.tuples(st.sampled_from(["success", "failure"]), st.integers(0, 20), st.sampled_from([0.0, 150.0])),
            st.tuples(st.just("force"), st.sampled_from(list(CircuitState))),
        ),
        max_size=80,
    ),
)
def test_core_fast_path_agrees_with_the_general_path(
    window_type: WindowType, ft: int, wait: int, fr: float | None, sr: float | None, ops: list[tuple[Any, ...]]
) -> None:
    """Two cores fed the same operations, one with its fast path switched off; outcomes may come back for permits
    of earlier epochs (late calls). Every result and every stats field must agree."""
    if ft == 0 and fr is None and sr is None:
        ft = 1
    config = CircuitBreakerConfig(
        failure_threshold=ft,
        timeout_ms=1000,
        success_threshold=2,
        max_wait_in_half_open_ms=wait,
        window_type=window_type,
        window_size=4,
        minimum_number_of_calls=2,
        failure_rate_threshold=fr,
        slow_call_rate_threshold=sr,
        slow_call_duration_ms=100,
    )
    fast, general = BreakerCore(config), BreakerCore(config)
    general.on_success = general._on_success  # type: ignore[method-assign]  # fast path off
    now = 0.0
    permits: list[int] = []
    for op in ops:
        if op[0] == "acquire":
            now += op[1]
            (epoch, t1), (epoch2, t2) = fast.acquire(now), general.acquire(now)
            assert epoch == epoch2 and t1 == t2
            if epoch is not None:
                permits.append(epoch)
        elif op[0] == "force":
            assert fast.force(op[1], now, "op") == general.force(op[1], now, "op")
        elif permits:
            epoch = permits.pop(op[1] % len(permits))
            outcome = "on_success" if op[0] == "success" else "on_failure"
            assert getattr(fast, outcome)(epoch, now, op[2]) == getattr(general, outcome)(epoch, now, op[2])
        assert fast.stats("c", now) == general.stats("c", now)
        assert (fast.epoch, fast.closed_epoch) == (general.epoch, general.closed_epoch)
        assert fast.closed_epoch == (fast.epoch if fast.state is CircuitState.CLOSED else None)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 8), outcomes=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60))
def test_count_window_matches_the_last_size_outcomes(size: int, outcomes: list[tuple[bool, bool]]) -> None:
    window, model = CountWindow(size), deque[tuple[bool, bool]](maxlen=size)
    for failed, slow in outcomes:
        window.record(0.0, failed, slow)
        assert len(window._marked) <= size  # failures are forgotten once they slide out, snapshot or not
        model.append((failed, slow))
        snap = window.snapshot(0.0)
        assert (snap.calls, snap.failures, snap.slow) == (
            len(model),
            sum(f for f, _ in model),
            sum(s for _, s in model),
        )


@settings(max_examples=200, deadline=None)
@given(
    size_s=st.integers(1, 4),
    steps=st.lists(st.tuples(st.integers(0, 1500), st.booleans(), st.booleans()), max_size=60),
)
def test_time_window_matches_the_calls_of_the_last_size_seconds(
    size_s: int, steps: list[tuple[int, bool, bool]]
) -> None:
    window, calls = TimeWindow(size_s), []  # calls: (second, failed, slow)

    def check(at: float) -> None:
        kept = [c for c in calls if c[0] > int(at // 1000) - size_s]
        snap = window.snapshot(at)
        assert (snap.calls, snap.failures, snap.slow) == (len(kept), sum(c[1] for c in kept), sum(c[2] for c in kept))

    now = 0.0
    for dt, failed, slow in steps:
        now += dt
        window.record(now, failed, slow)
        assert len(window._buckets) <= size_s  # recording evicts: memory stays bounded
        calls.append((int(now // 1000), failed, slow))
        check(now)
    for _ in range(size_s + 1):  # then time passes with nothing recorded (time never goes back for a window)
        now += 1000
        check(now)


def test_a_call_admitted_before_reset_does_not_count_after_it() -> None:
    b = make(failure_threshold=1)
    started, release = threading.Event(), threading.Event()

    def late_failure() -> None:
        started.set()
        release.wait(5)
        raise Boom("late")

    def run_late() -> None:
        with pytest.raises(Boom):
            b.call(late_failure)

    t = threading.Thread(target=run_late)
    t.start()
    started.wait(5)
    b.reset()
    release.set()
    t.join()
    assert b.state is CircuitState.CLOSED  # the late failure is counted but is not the fresh breaker's first failure
    assert b.get_stats().total_failures == 1


def test_default_clock_times_calls_in_milliseconds() -> None:
    sink = MemorySink()
    config = CircuitBreakerConfig(
        failure_threshold=0, slow_call_rate_threshold=100, slow_call_duration_ms=5, minimum_number_of_calls=1
    )
    b = CircuitBreaker("real", config, sink=sink)
    with pytest.raises(Boom):
        b.call(lambda: (time.sleep(0.01), fail()))
    assert sink.of_kind("breaker_failure")[0].breaker_failure.duration_ms >= 10
    assert b.state is CircuitState.OPEN and b.get_stats().slow_call_rate == 100.0
    b.reset()
    b.call(time.sleep, 0.01)  # a slow success is timed too
    assert b.state is CircuitState.OPEN


def test_every_call_is_counted_once_under_concurrent_transitions() -> None:
    """Lock-free CLOSED admission racing transitions: each call ends as exactly one success, failure or rejection."""
    clock = ManualClock()
    b = make(clock, failure_threshold=2, success_threshold=1, timeout_ms=1)
    per_thread, threads = 2000, 4

    def hammer(seed: int) -> None:
        for i in range(per_thread):
            clock.advance(0.5)
            with contextlib.suppress(Boom, CallNotPermittedError):
                b.call(fail if (i // 3 + seed) % 3 == 0 else ok)  # runs of 3 failures: trips and recoveries

    pool = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    s = b.get_stats()
    assert s.total_calls == per_thread * threads
    assert s.total_calls == s.total_successes + s.total_failures + s.total_rejected and s.state_transition_count > 0
