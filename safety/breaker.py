"""Circuit breakers that replace assert-based crashes: the spec's three states plus what resilience4j users expect.

Pieces, one idea each:
  `CircuitBreakerConfig`  immutable, validated once;
  `CountWindow`/`TimeWindow`  sliding-window metrics, kept apart from state;
  `BreakerCore`  the state machine: deterministic, no lock, no clock reads, no I/O (time is an argument);
  `CircuitBreaker`  the thread-safe shell: reads the injected clock, holds its lock only around the core (never
                    during the protected call), raises `CallNotPermittedError` on rejection, and emits every failure
                    and transition as a SafetyEvent after releasing the lock;
  `BreakerRegistry`  the named breakers of a process, passed in where needed (no module-level singletons).
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CircuitState  # numbered as on the wire (CLOSED=1, OPEN=2, HALF_OPEN=3)
from esper.safety.clock import Clock, monotonic_ms
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import EventSink, NullSink, Reporter, notify
from esper.safety.exceptions import CallNotPermittedError, ConfigError, UnknownBreakerError

__all__ = [
    "SPEC_BREAKERS",
    "BreakerCore",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "CountWindow",
    "TimeWindow",
    "Transition",
    "WindowSnapshot",
    "WindowType",
    "breaker_check",
    "safe_assert",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class WindowType(enum.StrEnum):
    """COUNT: the last `window_size` calls; TIME: the calls of the last `window_size` seconds."""

    COUNT = "count"
    TIME = "time"


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """How a breaker decides; validated at construction (one ConfigError lists every violated rule).

    The spec's rule: `failure_threshold` consecutive failures open the breaker (0 turns that rule off); after
    `timeout_ms` it lets exactly `success_threshold` probe calls through, closes as soon as they all succeeded and
    reopens on the first failing probe. As in resilience4j, a breaker HALF_OPEN for `max_wait_in_half_open_ms`
    (0: no limit) without the probes deciding is OPEN again from that moment (seen by the next call or probe result,
    as the open timeout is); probe results that come later decide nothing. The rate rules (off when their threshold
    is None) open it when, over a window of at least `minimum_number_of_calls`, the failure or slow-call percentage
    reaches its threshold. Successful calls are timed only when the slow-call rule is on (it saves a clock read per
    call).
    """

    failure_threshold: int = 5
    timeout_ms: int = ProductionSafetyConfig.model_fields["circuit_breaker_timeout_ms"].default
    success_threshold: int = 3
    window_type: WindowType = WindowType.COUNT
    window_size: int = 100
    minimum_number_of_calls: int = 10
    failure_rate_threshold: float | None = None
    slow_call_rate_threshold: float | None = None
    slow_call_duration_ms: float = 60_000.0
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    record_failure_predicate: Callable[[BaseException], bool] | None = None
    # Not resilience4j's 0 (wait forever): then one hung probe rejects every other caller for good. Five minutes
    # bounds that, and still lets the probes of a breaker called only every minute or two all come in (a limit
    # shorter than the time `success_threshold` probes take reopens the breaker before they decide: it never closes).
    max_wait_in_half_open_ms: int = 300_000

    def __post_init__(self) -> None:
        problems = []
        if self.failure_threshold < 0:
            problems.append(f"failure_threshold must be >= 0, got {self.failure_threshold}")
        if self.timeout_ms < 0:
            problems.append(f"timeout_ms must be >= 0, got {self.timeout_ms}")
        if self.max_wait_in_half_open_ms < 0:
            problems.append(
                f"max_wait_in_half_open_ms must be >= 0 (0: wait forever), got {self.max_wait_in_half_open_ms}"
            )
        if self.success_threshold < 1:
            problems.append(f"success_threshold must be >= 1, got {self.success_threshold}")
        if self.window_size < 1:
            problems.append(f"window_size must be >= 1, got {self.window_size}")
        if self.minimum_number_of_calls < 1:
            problems.append(f"minimum_number_of_calls must be >= 1, got {self.minimum_number_of_calls}")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                problems.append(f"{name} is a percentage in (0, 100], got {value}")
        if self.slow_call_duration_ms <= 0:
            problems.append(f"slow_call_duration_ms must be > 0, got {self.slow_call_duration_ms}")
        if (
            self.failure_threshold == 0
            and self.failure_rate_threshold is None
            and self.slow_call_rate_threshold is None
        ):
            problems.append("no opening rule: set failure_threshold or a rate threshold")
        if problems:
            raise ConfigError("CircuitBreakerConfig", problems)

    def is_failure(self, error: BaseException) -> bool | None:
        """True: a recorded failure; False: counts as a success; None: ignored (neither). Raises what the
        predicate raises (the breaker records that call as a failure)."""
        if isinstance(error, self.ignore_exceptions):
            return None
        if not isinstance(error, self.record_exceptions):
            return None
        if self.record_failure_predicate is not None:
            # bool(): a falsy answer such as re.search's None is "not a failure", never "ignored"
            return bool(self.record_failure_predicate(error))
        return True


@dataclass(frozen=True)
class WindowSnapshot:
    """Aggregates of a sliding window."""

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return 100.0 * self.slow / self.calls if self.calls else 0.0


class CountWindow:
    """The outcomes of the last `size` calls. Only failed or slow calls are stored, with their call number, and they
    leave lazily once `size` newer calls were recorded: a fast success is just `seen += 1` (the common case, which
    the core's fast path does inline), and totals are kept running, so every operation is amortised O(1)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen = 0  # calls recorded since the last reset; the window is the last min(seen, size) of them
        self._marked: deque[tuple[int, bool, bool]] = deque()  # (call number, failed, slow), oldest first
        self._failures = 0
        self._slow = 0

    def record(self, now_ms: float, failed: bool, slow: bool) -> None:
        del now_ms
        if failed or slow:
            self._marked.append((self.seen, failed, slow))
            self._failures += failed
            self._slow += slow
            self.seen += 1
            self._evict()  # here, not per success: bounds `_marked` to `size` entries
        else:
            self.seen += 1

    def _evict(self) -> None:
        first = self.seen - self.size  # the oldest call number still in the window
        marked = self._marked
        while marked and marked[0][0] < first:
            _, failed, slow = marked.popleft()
            self._failures -= failed
            self._slow -= slow

    def snapshot(self, now_ms: float) -> WindowSnapshot:
        del now_ms
        self._evict()
        return WindowSnapshot(min(self.seen, self.size), self._failures, self._slow)

    def reset(self) -> None:
        self.seen = 0
        self._marked.clear()
        self._failures = self._slow = 0


class TimeWindow:
    """The calls of the last `size_s` seconds, aggregated in one bucket per second."""

    def __init__(self, size_s: int) -> None:
        self._size = size_s
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures, slow]
        self._calls = self._failures = self._slow = 0

    def _evict(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._size:
            _, calls, failures, slow = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures
            self._slow -= slow

    def record(self, now_ms: float, failed: bool, slow: bool) -> None:
        second = int(now_ms // 1000)
        buckets = self._buckets
        # Still the last record's second: that record evicted all that has expired by now, so skip `_evict`.
        if not buckets or buckets[-1][0] != second:
            self._evict(second)
            buckets.append([second, 0, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        self._calls += 1
        if failed:
            bucket[2] += 1
            self._failures += 1
        if slow:
            bucket[3] += 1
            self._slow += 1

    def snapshot(self, now_ms: float) -> WindowSnapshot:
        self._evict(int(now_ms // 1000))
        return WindowSnapshot(self._calls, self._failures, self._slow)

    def reset(self) -> None:
        self._buckets.clear()
        self._calls = self._failures = self._slow = 0


@dataclass(frozen=True)
class Transition:
    """One state change of a breaker and why it happened."""

    from_state: CircuitState
    to_state: CircuitState
    reason: str
    at_ms: float


class BreakerCore:
    """The breaker's state machine: deterministic given (state, outcome, now); the shell serialises access.

    A permit is an epoch number: outcomes of calls admitted under an earlier state (a slow call admitted while
    CLOSED that returns during HALF_OPEN) update the totals but never count as a probe or move the state.
    `closed_epoch` is the epoch while CLOSED and None otherwise: one attribute, so the shell can admit CLOSED calls
    by reading it without the lock. `epoch` starts where a replaced core's left off (see `CircuitBreaker.reset`).
    """

    def __init__(self, config: CircuitBreakerConfig, epoch: int = 0) -> None:
        self.config = config
        self.window: CountWindow | TimeWindow = (
            CountWindow(config.window_size)
            if config.window_type is WindowType.COUNT
            else TimeWindow(config.window_size)
        )
        # For the fast path in on_success (the config is frozen, so these never go stale).
        self._count_window = self.window if isinstance(self.window, CountWindow) else None
        self._slow_ms = config.slow_call_duration_ms
        self.state = CircuitState.CLOSED
        self.epoch = epoch
        self.closed_epoch: int | None = epoch
        self.opened_at_ms = 0.0
        self.half_opened_at_ms = 0.0
        self.consecutive_failures = 0
        self.half_open_permits = 0
        self.half_open_successes = 0
        # Totals since creation. As in the spec, every call counts in total_calls: successes + failures + rejected +
        # ignored (calls that ended in an ignored exception), so success_rate is successes over all calls.
        self.successes = 0
        self.failures = 0
        self.rejected = 0
        self.ignored = 0
        self.transitions = 0
        self.last_failure_ms = 0.0

    # -- permissions ---------------------------------------------------------------------------------------

    def acquire(self, now_ms: float) -> tuple[int | None, tuple[Transition, ...]]:
        """A permit (the epoch) or None when rejected, and the transitions acquiring caused, oldest first: HALF_OPEN
        -> OPEN at the half-open wait limit, OPEN -> HALF_OPEN once `timeout_ms` elapsed (both when a call comes a
        whole timeout after the limit)."""
        if self.state is CircuitState.CLOSED:
            return self.epoch, ()
        expired = self._expire_half_open(now_ms)
        transitions: tuple[Transition, ...] = () if expired is None else (expired,)
        if self.state is CircuitState.OPEN and now_ms - self.opened_at_ms >= self.config.timeout_ms:
            transitions += (self._move(CircuitState.HALF_OPEN, now_ms, f"{self.config.timeout_ms} ms open elapsed"),)
        state = self.state
        if state is CircuitState.HALF_OPEN:
            if self.half_open_permits > 0:
                self.half_open_permits -= 1
                return self.epoch, transitions
        elif state in (CircuitState.METRICS_ONLY, CircuitState.DISABLED):
            return self.epoch, transitions
        self.rejected += 1
        return None, transitions

    def _expire_half_open(self, now_ms: float) -> Transition | None:
        """HALF_OPEN -> OPEN once the probes have not decided within `max_wait_in_half_open_ms`, dated at the limit
        (as if a timer had fired there), so the next probes come a `timeout_ms` after it. The move starts a new
        epoch: outstanding probes become late calls whose results decide nothing."""
        wait = self.config.max_wait_in_half_open_ms
        if self.state is not CircuitState.HALF_OPEN or not wait:
            return None
        limit_ms = self.half_opened_at_ms + wait
        if now_ms < limit_ms:
            return None
        return self._move(
            CircuitState.OPEN, limit_ms, f"half-open wait limit ({wait} ms) reached before the probes decided"
        )

    def release(self, epoch: int) -> None:
        """Count a call that ended in an ignored exception and give back its permit (it proved nothing)."""
        if self.state is CircuitState.DISABLED:
            return  # a disabled breaker counts nothing
        self.ignored += 1
        if epoch == self.epoch and self.state is CircuitState.HALF_OPEN:
            self.half_open_permits += 1

    # -- outcomes ------------------------------------------------------------------------------------------

    def on_success(self, epoch: int, now_ms: float, duration_ms: float) -> Transition | None:
        # Fast path, nearly every call: a fast success admitted in the current CLOSED epoch cannot change the state;
        # it only counts. Same effect as `_on_success` (the tests compare them), in fewer steps.
        if epoch == self.closed_epoch and duration_ms < self._slow_ms:
            self.successes += 1
            self.consecutive_failures = 0
            window = self._count_window
            if window is not None:
                window.seen += 1  # = window.record(now_ms, False, False), inlined
            else:
                self.window.record(now_ms, False, False)
            return None
        return self._on_success(epoch, now_ms, duration_ms)

    def _on_success(self, epoch: int, now_ms: float, duration_ms: float) -> Transition | None:
        """The general path of `on_success`: any state, any window, slow or not."""
        if self.state is CircuitState.DISABLED:
            return None
        expired = self._expire_half_open(now_ms)
        slow = duration_ms >= self._slow_ms
        self.successes += 1
        self.window.record(now_ms, False, slow)
        if epoch != self.epoch:
            return expired
        if self.state is CircuitState.CLOSED:
            self.consecutive_failures = 0
            return self._check_rates(now_ms) if slow else None
        if self.state is CircuitState.HALF_OPEN:
            if slow and self.config.slow_call_rate_threshold is not None:
                return self._move(CircuitState.OPEN, now_ms, f"slow probe ({duration_ms:.1f} ms) in half-open")
            self.half_open_successes += 1
            if self.half_open_successes >= self.config.success_threshold:
                return self._move(CircuitState.CLOSED, now_ms, f"{self.half_open_successes} probe(s) succeeded")
        return None

    def on_failure(self, epoch: int, now_ms: float, duration_ms: float) -> Transition | None:
        if self.state is CircuitState.DISABLED:
            return None
        expired = self._expire_half_open(now_ms)
        slow = duration_ms >= self._slow_ms
        self.failures += 1
        self.last_failure_ms = now_ms
        self.window.record(now_ms, True, slow)
        if epoch != self.epoch:
            return expired
        if self.state is CircuitState.CLOSED:
            self.consecutive_failures += 1
            threshold = self.config.failure_threshold
            if threshold and self.consecutive_failures >= threshold:
                return self._move(CircuitState.OPEN, now_ms, f"{self.consecutive_failures} consecutive failures")
            return self._check_rates(now_ms)
        if self.state is CircuitState.HALF_OPEN:
            self.consecutive_failures += 1
            return self._move(CircuitState.OPEN, now_ms, "probe failed in half-open")
        return None

    def _check_rates(self, now_ms: float) -> Transition | None:
        cfg = self.config
        if cfg.failure_rate_threshold is None and cfg.slow_call_rate_threshold is None:
            return None
        snap = self.window.snapshot(now_ms)
        if snap.calls < cfg.minimum_number_of_calls:
            return None
        if cfg.failure_rate_threshold is not None and snap.failure_rate >= cfg.failure_rate_threshold:
            return self._move(CircuitState.OPEN, now_ms, f"failure rate {snap.failure_rate:.1f}% over {snap.calls}")
        if cfg.slow_call_rate_threshold is not None and snap.slow_call_rate >= cfg.slow_call_rate_threshold:
            return self._move(CircuitState.OPEN, now_ms, f"slow-call rate {snap.slow_call_rate:.1f}% over {snap.calls}")
        return None

    # -- transitions ---------------------------------------------------------------------------------------

    def trip(self, now_ms: float, reason: str) -> Transition | None:
        """Open a CLOSED or HALF_OPEN breaker on a caller's verdict, whatever its opening rules say; None in any other
        state (an OPEN breaker keeps its timer, an operator's FORCED_OPEN, DISABLED or METRICS_ONLY stays)."""
        if self.state not in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
            return None
        return self._move(CircuitState.OPEN, now_ms, reason)

    def force(self, to_state: CircuitState, now_ms: float, reason: str) -> Transition | None:
        """An operator's transition (any state to any state); None when already there."""
        if to_state is self.state:
            return None
        return self._move(to_state, now_ms, reason)

    def _move(self, to_state: CircuitState, now_ms: float, reason: str) -> Transition:
        transition = Transition(self.state, to_state, reason, now_ms)
        self.state = to_state
        self.epoch += 1
        self.closed_epoch = self.epoch if to_state is CircuitState.CLOSED else None
        self.transitions += 1
        self.half_open_successes = 0
        self.half_open_permits = self.config.success_threshold if to_state is CircuitState.HALF_OPEN else 0
        if to_state is CircuitState.OPEN:
            self.opened_at_ms = now_ms
        elif to_state is CircuitState.HALF_OPEN:
            self.half_opened_at_ms = now_ms
        if to_state in (CircuitState.CLOSED, CircuitState.METRICS_ONLY):
            self.consecutive_failures = 0
            self.window.reset()
        return transition

    def stats(self, name: str, now_ms: float) -> pb.BreakerStats:
        snap = self.window.snapshot(now_ms)
        calls = self.successes + self.failures + self.rejected + self.ignored
        return pb.BreakerStats(
            name=name,
            state=int(self.state),  # type: ignore[arg-type]
            total_calls=calls,
            total_successes=self.successes,
            total_failures=self.failures,
            current_failure_count=self.consecutive_failures,
            current_success_count=self.half_open_successes,
            success_rate=self.successes / calls if calls else 0.0,
            state_transition_count=self.transitions,
            last_failure_time_ms=int(self.last_failure_ms),
            total_rejected=self.rejected,
            failure_rate=snap.failure_rate,
            slow_call_rate=snap.slow_call_rate,
        )


TransitionListener = Callable[["CircuitBreaker", Transition], None]


def _error_text(error: BaseException) -> str:
    """str(error), or a stand-in when its __str__ raises: the caller must still get its own exception."""
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__}: str() raised>"


class CircuitBreaker:
    """A named, thread-safe breaker around calls; failures and transitions become SafetyEvents on its sink."""

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock = monotonic_ms,
        sink: EventSink | None = None,
        source_id: str = "",
    ) -> None:
        self.name = name
        self.config = config or CircuitBreakerConfig()
        self._core = BreakerCore(self.config)
        self._clock = clock
        self._report = Reporter(sink, source_id)
        self._lock = threading.Lock()
        self._listeners: list[TransitionListener] = []
        self.listener_errors = 0  # listeners that raised (logged; the protected call never sees them)
        self.predicate_errors = 0  # record_failure_predicate calls that raised (logged; the call counted as failed)
        self._timed = self.config.slow_call_rate_threshold is not None
        # The default clock is read as time.monotonic_ns() / 1e6 inline on the call path (the same value as
        # monotonic_ms, minus a Python frame); any other clock (a test's ManualClock) is called as given.
        self._monotonic_ns = time.monotonic_ns if clock is monotonic_ms else None

    # -- calling -------------------------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn through the breaker; re-raise its exception after recording it; CallNotPermittedError if rejected."""
        ns = self._monotonic_ns
        start = ns() / 1_000_000 if ns is not None else self._clock()
        # While CLOSED, admission needs no lock: `closed_epoch` is one attribute, rewritten under the lock by every
        # transition, so this read sees the state before or after any transition; a call that read the old epoch
        # was admitted just before it, which the epoch check on its outcome already handles.
        epoch = self._core.closed_epoch
        if epoch is None:
            epoch = self._acquire(start)
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            self._record_error(epoch, e, start)
            raise
        self._record_success(epoch, start)
        return result

    async def call_async(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """The asyncio form of `call`: awaits fn without holding the breaker's lock."""
        ns = self._monotonic_ns
        start = ns() / 1_000_000 if ns is not None else self._clock()
        epoch = self._core.closed_epoch  # lock-free while CLOSED, as in `call`
        if epoch is None:
            epoch = self._acquire(start)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as e:
            self._record_error(epoch, e, start)
            raise
        self._record_success(epoch, start)
        return result

    def decorate(self, fn: Callable[P, T]) -> Callable[P, T]:
        """fn wrapped so that every call goes through this breaker."""

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def _acquire(self, now: float) -> int:
        with self._lock:
            epoch, transitions = self._core.acquire(now)
            state = self._core.state
        for transition in transitions:
            self._publish_transition(transition)
        if epoch is None:
            raise CallNotPermittedError(self.name, state.name)
        return epoch

    def _record_success(self, epoch: int, start: float) -> None:
        # Without a slow-call rule the call's duration decides nothing: a success admitted while CLOSED skips the
        # second clock read. Any other needs the time it ended: a probe that outlived the half-open wait limit.
        if self._timed:
            now = self._clock()
            with self._lock:
                transition = self._core.on_success(epoch, now, now - start)
        elif epoch == self._core.closed_epoch:
            with self._lock:
                transition = self._core.on_success(epoch, start, 0.0)
        else:
            now = self._clock()
            with self._lock:
                transition = self._core.on_success(epoch, now, 0.0)
        if transition is not None:
            self._publish_transition(transition)

    def _record_error(self, epoch: int, error: BaseException, start: float) -> None:
        try:
            verdict = self.config.is_failure(error)
            predicate_failed = False
        except Exception:
            # A broken predicate must not hide the failure, keep a probe's permit, or replace the call's exception.
            log.exception(
                "circuit breaker %s: record_failure_predicate raised; %s counted as a failure",
                self.name,
                type(error).__name__,
            )
            verdict, predicate_failed = True, True
        now = self._clock()
        duration_ms = now - start
        with self._lock:
            self.predicate_errors += predicate_failed
            if verdict is None:
                self._core.release(epoch)
                return
            if not verdict:
                transition = self._core.on_success(epoch, now, duration_ms)
            else:
                transition = self._core.on_failure(epoch, now, duration_ms)
            stats = self._core.stats(self.name, now) if verdict else None
        if stats is not None:
            text = _error_text(error)
            detail = pb.BreakerFailure(
                stats=stats, error_type=type(error).__name__, error=text[:500], duration_ms=duration_ms
            )
            self._report(pb.TELEMETRY_ERROR, f"circuit breaker {self.name} recorded failure: {text}", detail)
        if transition is not None:
            self._publish_transition(transition)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        return self._core.state

    def get_stats(self) -> pb.BreakerStats:
        now = self._clock()
        with self._lock:
            return self._core.stats(self.name, now)

    def add_listener(self, listener: TransitionListener) -> None:
        """Call listener(breaker, transition) after every state change (outside the lock); a listener that raises
        is logged and counted in `listener_errors`, never propagated to the call that caused the transition."""
        self._listeners = [*self._listeners, listener]

    def trip(self, reason: str) -> bool:
        """Open the breaker if it is CLOSED or HALF_OPEN (see `BreakerCore.trip`); True when it opened. The state is
        checked and changed under the lock, so an operator's transition made meanwhile is never overridden."""
        now = self._clock()
        with self._lock:
            transition = self._core.trip(now, reason)
        if transition is not None:
            self._publish_transition(transition)
        return transition is not None

    def transition_to_closed(self, reason: str = "operator") -> None:
        self._force(CircuitState.CLOSED, reason)

    def transition_to_open(self, reason: str = "operator") -> None:
        self._force(CircuitState.OPEN, reason)

    def transition_to_forced_open(self, reason: str = "operator") -> None:
        self._force(CircuitState.FORCED_OPEN, reason)

    def transition_to_disabled(self, reason: str = "operator") -> None:
        self._force(CircuitState.DISABLED, reason)

    def transition_to_metrics_only(self, reason: str = "operator") -> None:
        self._force(CircuitState.METRICS_ONLY, reason)

    def reset(self) -> None:
        """Back to a fresh CLOSED breaker with empty metrics (a transition event when the state changes)."""
        now = self._clock()
        with self._lock:
            old_core = self._core
            # Epochs go on from the old core's, so outcomes of calls admitted before the reset cannot count as
            # this core's (they are recorded in its totals, as any late outcome is, but decide nothing).
            self._core = BreakerCore(self.config, epoch=old_core.epoch + 1)
            old = old_core.state
        if old is not CircuitState.CLOSED:
            self._publish_transition(Transition(old, CircuitState.CLOSED, "reset", now))

    def _force(self, to_state: CircuitState, reason: str) -> None:
        now = self._clock()
        with self._lock:
            transition = self._core.force(to_state, now, reason)
        if transition is not None:
            self._publish_transition(transition)

    # -- events ----------------------------------------------------------------------------------------------

    def _publish_transition(self, t: Transition) -> None:
        detail = pb.BreakerTransition(
            stats=self.get_stats(),
            from_state=int(t.from_state),  # type: ignore[arg-type]
            to_state=int(t.to_state),  # type: ignore[arg-type]
            reason=t.reason,
        )
        severity = pb.TELEMETRY_WARN if t.to_state is not CircuitState.CLOSED else pb.TELEMETRY_INFO
        message = f"circuit breaker {self.name}: {t.from_state.name} -> {t.to_state.name} ({t.reason})"
        self._report(severity, message, detail)
        self.listener_errors += notify(self._listeners, self, t)


def breaker_check(breaker: CircuitBreaker, failure: Exception | None, passed: bool = True) -> bool:
    """One check recorded through `breaker` without crashing: `failure`, when given, is raised inside the call (so
    the breaker records it, with its type) and the result is False; otherwise the call succeeds and the result is
    `passed`. A rejection while the breaker is open is False too."""

    def check() -> bool:
        if failure is not None:
            raise failure
        return passed

    try:
        return breaker.call(check)
    except CallNotPermittedError:
        return False
    except Exception as e:
        if e is failure:
            return False
        raise


def safe_assert(condition: bool, message: str, breaker: CircuitBreaker) -> bool:
    """The assert replacement: True when the condition holds; False (a recorded failure, or a rejection while the
    breaker is open) instead of crashing the training process."""
    return breaker_check(breaker, None if condition else AssertionError(message))


# The spec's named breakers: name -> (ProductionSafetyConfig field of the failure threshold, timeout_ms).
SPEC_BREAKERS: dict[str, tuple[str, int]] = {
    "gradient_isolation": ("gradient_isolation_failure_threshold", 30_000),
    "memory_bounds": ("memory_bounds_failure_threshold", 60_000),
    "kernel_loading": ("kernel_loading_failure_threshold", 30_000),
    "checkpoint_recompilation": ("checkpoint_recompilation_threshold", 120_000),
    "teacher_memory_overflow": ("teacher_memory_overflow_threshold", 180_000),
}


@dataclass
class BreakerRegistry:
    """The breakers of one process, by name; created once and passed to whatever needs a breaker."""

    clock: Clock = monotonic_ms
    sink: EventSink = field(default_factory=NullSink)
    source_id: str = ""
    default_config: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @classmethod
    def with_spec_breakers(cls, safety: ProductionSafetyConfig | None = None, **kwargs: Any) -> BreakerRegistry:
        """A registry holding the spec's five named breakers with the thresholds of `safety` (spec defaults:
        gradient_isolation 3/30 s, memory_bounds 5/60 s, kernel_loading 10/30 s, checkpoint_recompilation 3/120 s,
        teacher_memory_overflow 2/180 s); any other breaker it creates opens for `circuit_breaker_timeout_ms`."""
        safety = safety or ProductionSafetyConfig()
        kwargs.setdefault("default_config", CircuitBreakerConfig(timeout_ms=safety.circuit_breaker_timeout_ms))
        registry = cls(**kwargs)
        for name, (threshold_field, timeout_ms) in SPEC_BREAKERS.items():
            config = CircuitBreakerConfig(failure_threshold=getattr(safety, threshold_field), timeout_ms=timeout_ms)
            registry.get_or_create(name, config)
        return registry

    def get_or_create(self, name: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(
                    name, config or self.default_config, clock=self.clock, sink=self.sink, source_id=self.source_id
                )
                self._breakers[name] = breaker
            return breaker

    def get(self, name: str) -> CircuitBreaker:
        try:
            return self._breakers[name]
        except KeyError:
            raise UnknownBreakerError(
                f"no breaker named {name!r}; known: {', '.join(sorted(self._breakers))}"
            ) from None

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self.get(name)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def all_stats(self) -> list[pb.BreakerStats]:
        return [b.get_stats() for b in self]
