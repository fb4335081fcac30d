"""Pause with identity kernels, and the pause quota.

`pause_enter` / `pause_exit` / `pause_expired` and `quota_request` are pure functions of (state, event, now);
`PauseController` and `PauseQuota` are their thread-safe shells that read the injected clock and emit events.
A pause is bounded: it ends by command, or by itself once its allowed duration (the smaller of the command's
maximum, the configured maximum and the quota granted) has passed. The quota is milliseconds of pause: at most
`max_pause_quota` per `pause_quota_reset_interval_ms`, granted in full, in part or not at all.
Every limit and switch comes from `ProductionSafetyConfig`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from esper.proto import leyline_pb2 as pb
from esper.safety.clock import Clock, monotonic_ms
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import EventSink, Reporter
from esper.safety.exceptions import InvalidPauseError, NotPausedError, PauseRefusedError

__all__ = [
    "PauseController",
    "PauseQuota",
    "Paused",
    "QuotaDecision",
    "QuotaState",
    "pause_enter",
    "pause_exit",
    "pause_expired",
    "pause_refusal",
    "pause_request_problems",
    "quota_request",
    "require_pause_allowed",
]

X = TypeVar("X")


@dataclass(frozen=True)
class Paused:
    """The state of a pause in force (no pause is `None`)."""

    reason: str
    since_ms: float
    allowed_ms: float
    quota_ms: int
    command_id: str = ""

    def elapsed_ms(self, now_ms: float) -> float:
        return max(0.0, now_ms - self.since_ms)

    def remaining_ms(self, now_ms: float) -> float:
        return max(0.0, self.allowed_ms - self.elapsed_ms(now_ms))


def pause_request_problems(quota_ms: int | None, max_duration_ms: float | None) -> list[str]:
    """What is wrong with a pause's values (None: not given); a given quota or maximum must be positive."""
    problems = []
    if quota_ms is not None and quota_ms < 1:
        problems.append(f"quota_ms must be at least 1 ms, got {quota_ms}")
    if max_duration_ms is not None and max_duration_ms <= 0:
        problems.append(f"max_duration_ms must be > 0, got {max_duration_ms}")
    return problems


def pause_refusal(config: ProductionSafetyConfig) -> str | None:
    """Why this configuration refuses every pause (None: pauses are allowed)."""
    if not config.pause_semantics_enabled:
        return "pause semantics are disabled (pause_semantics_enabled)"
    if not config.identity_kernel_enabled:
        return "a pause needs the identity kernel, which is disabled (identity_kernel_enabled)"
    return None


def require_pause_allowed(
    config: ProductionSafetyConfig, where: str, quota_ms: int | None = None, max_duration_ms: float | None = None
) -> None:
    """The checks every pause passes before anything is spent: InvalidPauseError for a quota or maximum that is not
    positive, PauseRefusedError when `config` refuses pauses."""
    problems = pause_request_problems(quota_ms, max_duration_ms)
    if problems:
        raise InvalidPauseError("; ".join(problems))
    refusal = pause_refusal(config)
    if refusal is not None:
        raise PauseRefusedError(f"pause refused on {where}: {refusal}")


def pause_enter(
    state: Paused | None, now_ms: float, reason: str, allowed_ms: float, quota_ms: int, command_id: str = ""
) -> tuple[Paused, bool]:
    """The new state and whether a pause was entered (False: already paused, the pause in force is kept)."""
    if state is not None:
        return state, False
    return Paused(reason, now_ms, allowed_ms, quota_ms, command_id), True


def pause_exit(state: Paused | None, now_ms: float) -> tuple[None, float | None]:
    """No pause, and the duration of the pause that ended (None when there was none)."""
    return None, (None if state is None else state.elapsed_ms(now_ms))


def pause_expired(state: Paused | None, now_ms: float) -> bool:
    return state is not None and state.elapsed_ms(now_ms) >= state.allowed_ms


class PauseController:
    """The pause of one slot (or instance): enter, exit, expire, the identity kernel, stats and events.

    `on_change(paused)` is called whenever a pause begins (True) or ends (False), under the controller's lock and
    before the new state is visible, so that a mirror of the state (a slot's control buffer) is written in the same
    critical section as the state: changes from two threads cannot leave the mirror behind. It must not call back
    into the controller; when it raises, the state is left unchanged. Events are emitted after the lock is
    released."""

    def __init__(
        self,
        instance_id: str,
        slot_id: str = "",
        *,
        config: ProductionSafetyConfig | None = None,
        clock: Clock = monotonic_ms,
        sink: EventSink | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.slot_id = slot_id
        self.config = config or ProductionSafetyConfig()
        self._clock = clock
        self._report = Reporter(sink, instance_id)
        self._on_change = on_change
        self._state: Paused | None = None
        self._lock = threading.Lock()
        self._identity_calls = 0

    @property
    def max_duration_ms(self) -> int:
        return self.config.max_pause_duration_ms

    @property
    def identity_calls(self) -> int:
        """Identity service so far: calls of `identity_kernel_output`, plus the steps counted by `count_step`."""
        return self._identity_calls

    @property
    def is_paused(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> Paused | None:
        return self._state

    def enter_pause_with_identity_kernel(
        self, reason: str, quota_ms: int | None = None, max_duration_ms: float | None = None, command_id: str = ""
    ) -> bool:
        """Enter a pause allowed to last the smallest of max_duration_ms, the quota granted (quota_ms) and the
        configured maximum (None: not given). False when already paused; InvalidPauseError for a quota or maximum
        that is not positive; PauseRefusedError when the configuration disables pauses."""
        require_pause_allowed(self.config, self._where(), quota_ms, max_duration_ms)
        now = self._clock()
        allowed = min(
            self.max_duration_ms,
            self.max_duration_ms if max_duration_ms is None else max_duration_ms,
            self.max_duration_ms if quota_ms is None else quota_ms,
        )
        with self._lock:
            state, entered = pause_enter(self._state, now, reason, allowed, quota_ms or 0, command_id)
            if entered:
                self._change(state)
        if entered:
            detail = pb.PauseEntered(
                instance_id=self.instance_id,
                slot_id=self.slot_id,
                reason=reason,
                quota_ms=quota_ms or 0,
                identity_kernel_active=True,
                max_duration_ms=int(allowed),
                command_id=command_id,
            )
            self._report(pb.TELEMETRY_INFO, f"pause entered on {self._where()}: {reason}", detail)
        return entered

    def exit_pause(self, cause: str = "command", command_id: str = "") -> bool:
        """Leave the pause; False when not paused."""
        return self._exit(cause, command_id, only_if_due=False)

    def expire_if_due(self) -> bool:
        """End the pause when its allowed duration has passed; True when it ended now."""
        return self._exit("expired", "", only_if_due=True)

    def _exit(self, cause: str, command_id: str, *, only_if_due: bool) -> bool:
        now = self._clock()  # read before the lock: a clock is foreign code
        with self._lock:
            # The due check and the exit in one section: a pause begun in between is never ended as expired.
            if only_if_due and not pause_expired(self._state, now):
                return False
            state, duration = pause_exit(self._state, now)
            if duration is None:
                return False
            self._change(state)
        detail = pb.PauseExited(
            instance_id=self.instance_id,
            slot_id=self.slot_id,
            duration_ms=int(duration),
            cause=cause,
            command_id=command_id,
        )
        self._report(pb.TELEMETRY_INFO, f"pause exited on {self._where()} after {duration:.0f} ms ({cause})", detail)
        return True

    def _change(self, state: Paused | None) -> None:
        """Under the lock: the mirror first, so that a mirror that raises leaves the state as it was."""
        if self._on_change is not None:
            self._on_change(state is not None)
        self._state = state

    def identity_kernel_output(self, x: X) -> X:
        """The identity kernel: the input itself, values unchanged. Raises NotPausedError outside a pause."""
        if not self.count_step():
            raise NotPausedError(f"identity kernel used outside a pause on {self._where()}")
        return x

    def count_step(self) -> bool:
        """One step of work that runs the identity kernel elsewhere (a slot's forward, which counts nothing itself)
        is done: counted as one identity call when it ends inside a pause. True when it was counted."""
        with self._lock:
            if self._state is None:
                return False
            self._identity_calls += 1
            return True

    def get_pause_stats(self) -> dict[str, Any]:
        now = self._clock()
        state = self._state
        return {
            "is_paused": state is not None,
            "pause_reason": state.reason if state else None,
            "pause_duration_ms": state.elapsed_ms(now) if state else 0.0,
            "identity_kernel_active": state is not None,
            "pause_quota_remaining": state.remaining_ms(now) if state else 0.0,
            "identity_calls": self.identity_calls,
        }

    def _where(self) -> str:
        return f"{self.instance_id}/{self.slot_id}" if self.slot_id else self.instance_id


@dataclass(frozen=True)
class QuotaState:
    """Pause time granted in the current interval."""

    used: int
    window_start_ms: float


@dataclass(frozen=True)
class QuotaDecision:
    """A grant: full (requested <= remaining), partial (what was left) or denied (nothing left)."""

    outcome: int  # pb.QuotaOutcome
    requested: int
    granted: int
    remaining: int

    @property
    def full(self) -> bool:
        return self.outcome == pb.QUOTA_FULL


def quota_request(
    state: QuotaState, now_ms: float, requested: int, max_quota: int, interval_ms: int
) -> tuple[QuotaState, QuotaDecision, int | None]:
    """(new state, decision, the previous interval's use when the interval rolled over before deciding, else None).
    A request below 1 ms is an InvalidPauseError (a negative one would otherwise be granted in full)."""
    problems = pause_request_problems(requested, None)
    if problems:
        raise InvalidPauseError("; ".join(problems))
    reset_from: int | None = None
    if now_ms - state.window_start_ms >= interval_ms:
        reset_from = state.used
        state = QuotaState(0, now_ms)
    remaining = max_quota - state.used
    if requested <= remaining:
        outcome, granted = pb.QUOTA_FULL, requested
    elif remaining > 0:
        outcome, granted = pb.QUOTA_PARTIAL, remaining
    else:
        outcome, granted = pb.QUOTA_DENIED, 0
    state = QuotaState(state.used + granted, state.window_start_ms)
    return state, QuotaDecision(outcome, requested, granted, max_quota - state.used), reset_from


class PauseQuota:
    """Server-side pause-quota enforcement: at most `max_pause_quota` ms of pause per
    `pause_quota_reset_interval_ms` (both from the config)."""

    def __init__(
        self,
        config: ProductionSafetyConfig | None = None,
        *,
        clock: Clock = monotonic_ms,
        sink: EventSink | None = None,
        source_id: str = "",
    ) -> None:
        config = config or ProductionSafetyConfig()
        self.max_quota = config.max_pause_quota
        self.interval_ms = config.pause_quota_reset_interval_ms
        self._clock = clock
        self._report = Reporter(sink, source_id)
        self._state = QuotaState(0, clock())
        self._lock = threading.Lock()

    def request_pause_quota(self, requested: int) -> QuotaDecision:
        now = self._clock()
        with self._lock:
            self._state, decision, reset_from = quota_request(
                self._state, now, requested, self.max_quota, self.interval_ms
            )
        if reset_from is not None:
            reset = pb.QuotaReset(previous_used=reset_from, max_quota=self.max_quota, interval_ms=self.interval_ms)
            self._report(pb.TELEMETRY_INFO, f"pause quota reset to {self.max_quota}", reset)
        detail = pb.QuotaDecision(
            outcome=decision.outcome,  # type: ignore[arg-type]
            requested=requested,
            granted=decision.granted,
            used=self.max_quota - decision.remaining,
            remaining=decision.remaining,
            max_quota=self.max_quota,
        )
        severity = pb.TELEMETRY_INFO if decision.full else pb.TELEMETRY_WARN
        label = pb.QuotaOutcome.Name(decision.outcome)
        self._report(severity, f"pause quota {label}: {decision.granted}/{requested} ms", detail)
        return decision

    @property
    def remaining(self) -> int:
        return self.max_quota - self._state.used
