"""Pause (identity kernel, bounded duration) and the pause quota, as pure functions and as shells."""

from __future__ import annotations

import threading

import pytest
import torch

from esper.proto import leyline_pb2 as pb
from esper.safety.clock import ManualClock
from esper.safety.config import ProductionSafetyConfig
from esper.safety.exceptions import InvalidPauseError, NotPausedError, PauseRefusedError
from esper.safety.pause import (
    PauseController,
    PauseQuota,
    QuotaState,
    pause_enter,
    pause_exit,
    pause_expired,
    quota_request,
)
from tests.sinks import MemorySink


def test_pure_pause_transitions() -> None:
    state, entered = pause_enter(None, 100, "ops", 50, 10)
    assert entered and state.since_ms == 100
    again, entered_again = pause_enter(state, 120, "other", 999, 10)
    assert again is state and not entered_again
    assert not pause_expired(state, 149) and pause_expired(state, 150)
    assert pause_exit(state, 130) == (None, 30)
    assert pause_exit(None, 130) == (None, None)


def test_identity_kernel_returns_the_input_itself_only_while_paused() -> None:
    sink = MemorySink()
    p = PauseController("k1", "s0", clock=ManualClock(), sink=sink)
    x = torch.randn(3, 4)
    with pytest.raises(NotPausedError):
        p.identity_kernel_output(x)
    assert p.enter_pause_with_identity_kernel("maintenance", quota_ms=500)
    out = p.identity_kernel_output(x)
    assert out is x and torch.equal(out, x)
    (entered,) = sink.of_kind("pause_entered")
    assert entered.pause_entered.slot_id == "s0" and entered.pause_entered.identity_kernel_active


def test_identity_calls_count_kernel_calls_and_steps_that_end_paused() -> None:
    p = PauseController("k1", "s0", clock=ManualClock())
    assert not p.count_step()  # a step outside a pause is no identity service
    p.enter_pause_with_identity_kernel("ops")
    p.identity_kernel_output(torch.zeros(1))
    assert p.count_step()
    assert p.identity_calls == 2 and p.get_pause_stats()["identity_calls"] == 2


def test_pause_expires_after_its_maximum_duration() -> None:
    clock = ManualClock()
    sink = MemorySink()
    p = PauseController("k1", config=ProductionSafetyConfig(max_pause_duration_ms=1000), clock=clock, sink=sink)
    p.enter_pause_with_identity_kernel("x", max_duration_ms=400)
    clock.advance(399)
    assert not p.expire_if_due() and p.is_paused
    assert p.get_pause_stats()["pause_quota_remaining"] == 1
    clock.advance(1)
    assert p.expire_if_due() and not p.is_paused
    (exited,) = sink.of_kind("pause_exited")
    assert (exited.pause_exited.cause, exited.pause_exited.duration_ms) == ("expired", 400)


def test_configured_maximum_caps_a_command_asking_for_more() -> None:
    clock = ManualClock()
    p = PauseController("k1", config=ProductionSafetyConfig(max_pause_duration_ms=100), clock=clock)
    p.enter_pause_with_identity_kernel("x", max_duration_ms=10_000)
    clock.advance(100)
    assert p.expire_if_due()
    p.enter_pause_with_identity_kernel("x")  # no maximum given: the configured one
    clock.advance(99)
    assert not p.expire_if_due()
    clock.advance(1)
    assert p.expire_if_due()


def test_the_quota_granted_bounds_the_pause() -> None:
    clock = ManualClock()
    sink = MemorySink()
    p = PauseController("k1", clock=clock, sink=sink)
    p.enter_pause_with_identity_kernel("x", quota_ms=250, max_duration_ms=10_000)
    assert sink.of_kind("pause_entered")[0].pause_entered.max_duration_ms == 250
    clock.advance(249)
    assert not p.expire_if_due()
    clock.advance(1)
    assert p.expire_if_due()


@pytest.mark.parametrize(("quota_ms", "max_duration_ms"), [(-5000, None), (0, None), (None, -1), (None, 0), (1, 0.0)])
def test_a_pause_with_values_out_of_range_is_a_typed_error(quota_ms: int | None, max_duration_ms: float | None) -> None:
    p = PauseController("k1", clock=ManualClock())
    with pytest.raises(InvalidPauseError):
        p.enter_pause_with_identity_kernel("x", quota_ms=quota_ms, max_duration_ms=max_duration_ms)
    assert not p.is_paused


@pytest.mark.parametrize("switch", ["pause_semantics_enabled", "identity_kernel_enabled"])
def test_a_configuration_without_pauses_refuses_them(switch: str) -> None:
    p = PauseController("k1", config=ProductionSafetyConfig(**{switch: False}), clock=ManualClock())
    with pytest.raises(PauseRefusedError, match=switch):
        p.enter_pause_with_identity_kernel("x")
    assert not p.is_paused


def test_exit_reports_duration_and_cause() -> None:
    clock = ManualClock()
    sink = MemorySink()
    p = PauseController("k1", clock=clock, sink=sink)
    assert not p.exit_pause()
    p.enter_pause_with_identity_kernel("x")
    clock.advance(25)
    stats = p.get_pause_stats()
    assert stats["is_paused"] and stats["pause_duration_ms"] == 25 and stats["pause_reason"] == "x"
    assert p.exit_pause(command_id="c1")
    assert sink.of_kind("pause_exited")[0].pause_exited.command_id == "c1"
    assert p.get_pause_stats()["is_paused"] is False


def test_a_quota_request_below_1_ms_is_a_typed_error_not_a_grant() -> None:
    for requested in (-5000, 0):
        with pytest.raises(InvalidPauseError):
            quota_request(QuotaState(0, 0), 0, requested, 1000, 60_000)
    q = PauseQuota(clock=ManualClock())
    with pytest.raises(InvalidPauseError):
        q.request_pause_quota(-5000)
    assert q.remaining == 10_000


def test_quota_full_partial_denied_and_reset() -> None:
    s = QuotaState(0, 0)
    s, d, reset = quota_request(s, 0, 600, 1000, 60_000)
    assert (d.outcome, d.granted, d.remaining, reset) == (pb.QUOTA_FULL, 600, 400, None)
    s, d, _ = quota_request(s, 10, 600, 1000, 60_000)
    assert (d.outcome, d.granted, d.remaining) == (pb.QUOTA_PARTIAL, 400, 0)
    s, d, _ = quota_request(s, 20, 1, 1000, 60_000)
    assert (d.outcome, d.granted) == (pb.QUOTA_DENIED, 0)
    s, d, reset = quota_request(s, 60_000, 300, 1000, 60_000)
    assert (d.outcome, d.granted, reset, s.window_start_ms) == (pb.QUOTA_FULL, 300, 1000, 60_000)


def test_quota_shell_reports_every_decision_and_reset() -> None:
    clock = ManualClock()
    sink = MemorySink()
    config = ProductionSafetyConfig(max_pause_quota=1000, pause_quota_reset_interval_ms=60_000)
    q = PauseQuota(config, clock=clock, sink=sink)
    assert q.request_pause_quota(1500).granted == 1000
    assert q.request_pause_quota(1).granted == 0
    clock.advance(60_000)
    assert q.request_pause_quota(10).full and q.remaining == 990
    outcomes = [e.quota_decision.outcome for e in sink.of_kind("quota_decision")]
    assert outcomes == [pb.QUOTA_PARTIAL, pb.QUOTA_DENIED, pb.QUOTA_FULL]
    (reset,) = sink.of_kind("quota_reset")
    assert reset.quota_reset.previous_used == 1000


def test_quota_defaults_come_from_the_config() -> None:
    clock = ManualClock()
    q = PauseQuota(ProductionSafetyConfig(max_pause_quota=300, pause_quota_reset_interval_ms=1000), clock=clock)
    assert q.request_pause_quota(500).granted == 300
    clock.advance(1000)
    assert q.request_pause_quota(500).granted == 300
    assert (PauseQuota().max_quota, PauseQuota().interval_ms) == (10_000, 60_000)  # the spec's, via the config


def test_expiry_never_ends_a_pause_begun_after_it_found_the_last_one_due() -> None:
    # A listener ends the due pause and begins another while expire_if_due is running: at every clock read the
    # expiring thread makes, the listener's thread is given up to half a second to do it.
    clock = ManualClock()
    expiring = threading.current_thread()
    listener: threading.Thread | None = None

    def reads() -> float:
        nonlocal listener
        if threading.current_thread() is expiring and listener is not None:
            if listener.ident is None:
                listener.start()
            listener.join(timeout=0.5)
        return clock()

    p = PauseController("k1", clock=reads)
    p.enter_pause_with_identity_kernel("first", max_duration_ms=10, command_id="c1")
    clock.advance(10)

    def exit_and_enter() -> None:
        p.exit_pause(command_id="c1")
        p.enter_pause_with_identity_kernel("second", max_duration_ms=10, command_id="c2")

    listener = threading.Thread(target=exit_and_enter)
    p.expire_if_due()
    listener.join()
    assert p.state is not None and p.state.command_id == "c2"


def test_on_change_mirrors_every_change_and_a_failing_mirror_changes_nothing() -> None:
    clock = ManualClock()
    seen: list[bool] = []
    p = PauseController("k1", clock=clock, on_change=seen.append)
    p.enter_pause_with_identity_kernel("x", max_duration_ms=10)
    p.enter_pause_with_identity_kernel("again")  # already paused: no change
    p.exit_pause()
    p.exit_pause()  # not paused: no change
    p.enter_pause_with_identity_kernel("x", max_duration_ms=10)
    clock.advance(10)
    p.expire_if_due()
    assert seen == [True, False, True, False]

    def broken(paused: bool) -> None:
        raise RuntimeError("mirror unavailable")

    q = PauseController("k1", clock=clock, on_change=broken)
    with pytest.raises(RuntimeError):
        q.enter_pause_with_identity_kernel("x")
    assert not q.is_paused
