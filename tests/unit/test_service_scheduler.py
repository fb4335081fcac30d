"""The compile service's scheduling core: lanes, ordering, coalescing, expiry, discard, background work, and the
dynamic strategy selection; with properties over any sequence of operations."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.compiler.conservative import CONSERVATIVE_POLICY, NORMAL_POLICY
from esper.compiler.service.scheduler import (
    ASSUMED_JOB_MS,
    Admission,
    Scheduler,
    Ticket,
    choose_strategy,
    queue_wait_ms,
    tier_timeout_ms,
)
from esper.proto.enums import CompilationStrategy as S
from esper.safety.exceptions import ConfigError


def ticket(
    tid: str,
    key: str | None = None,
    *,
    priority: int = 0,
    emergency: bool = False,
    deadline: float | None = None,
    strategy: S = S.STANDARD,
    at: float = 0.0,
) -> Ticket:
    return Ticket(
        ticket_id=tid,
        request_id=f"req-{tid}",
        job_key=key or f"job-{tid}",
        strategy=strategy,
        priority=priority,
        emergency=emergency,
        deadline_ms=deadline,
        submitted_ms=at,
    )


def started_keys(sched: Scheduler, now: float = 0.0, limit: int | None = None) -> list[str]:
    return [s.job_key for s in sched.start(now, limit)]


def drain(sched: Scheduler, now: float = 0.0) -> list[str]:
    """Start and finish one job at a time (max_concurrent=1) until idle: the order jobs run in."""
    order = []
    while not sched.idle:
        starts = sched.start(now, 1)
        assert starts, "work queued but nothing could start"
        for s in starts:
            order.append(s.job_key)
            sched.finish(s.job_key)
    return order


# -- ordering ---------------------------------------------------------------------------------------------------


def test_higher_priority_starts_first() -> None:
    sched = Scheduler()
    for tid, priority in [("low", 0), ("high", 5), ("mid", 2)]:
        assert sched.submit(ticket(tid, priority=priority), 0.0) is Admission.QUEUED
    assert drain(sched) == ["job-high", "job-mid", "job-low"]


def test_submission_order_within_a_priority() -> None:
    sched = Scheduler()
    for tid in ["a", "b", "c", "d"]:
        sched.submit(ticket(tid, priority=1), 0.0)
    assert drain(sched) == ["job-a", "job-b", "job-c", "job-d"]


def test_earliest_deadline_first_within_a_priority_and_none_last() -> None:
    sched = Scheduler()
    sched.submit(ticket("none"), 0.0)
    sched.submit(ticket("late", deadline=9_000.0), 0.0)
    sched.submit(ticket("soon", deadline=1_000.0), 0.0)
    sched.submit(ticket("urgent-low", priority=-1, deadline=10.0), 0.0)
    assert drain(sched) == ["job-soon", "job-late", "job-none", "job-urgent-low"]


def test_a_joining_ticket_raises_the_queued_jobs_priority_and_deadline() -> None:
    sched = Scheduler()
    sched.submit(ticket("a"), 0.0)
    sched.submit(ticket("b"), 0.0)
    sched.submit(ticket("c1", "job-c"), 0.0)
    assert sched.submit(ticket("c2", "job-c", priority=3), 0.0) is Admission.COALESCED
    sched.submit(ticket("b2", "job-b", deadline=50.0), 0.0)
    assert drain(sched) == ["job-c", "job-b", "job-a"]


def test_start_respects_max_concurrent() -> None:
    sched = Scheduler(max_concurrent=2)
    for tid in "abcd":
        sched.submit(ticket(tid), 0.0)
    assert started_keys(sched) == ["job-a", "job-b"]
    assert started_keys(sched) == []
    assert sched.finish("job-a")[0].ticket_id == "a"
    assert started_keys(sched) == ["job-c"]
    assert sched.running_keys() == ("job-b", "job-c")
    assert (sched.queued_jobs, sched.running_jobs) == (1, 2)


def test_conservative_override_runs_one_normal_job() -> None:
    sched = Scheduler(max_concurrent=2)
    for tid in "abc":
        sched.submit(ticket(tid), 0.0)
    assert started_keys(sched, limit=1) == ["job-a"]
    assert started_keys(sched, limit=1) == []
    assert started_keys(sched) == ["job-b"]  # back to the constructor's 2
    sched.finish("job-a")
    sched.finish("job-b")
    assert started_keys(sched, limit=0) == []  # 0 holds normal work
    assert started_keys(sched, limit=1) == ["job-c"]


# -- coalescing and duplicates ------------------------------------------------------------------------------------


def test_two_tickets_one_job_and_finish_returns_both() -> None:
    sched = Scheduler()
    assert sched.submit(ticket("t1", "k"), 0.0) is Admission.QUEUED
    assert sched.submit(ticket("t2", "k"), 0.0) is Admission.COALESCED
    [start] = sched.start(0.0)
    assert start.job_key == "k" and [t.ticket_id for t in start.tickets] == ["t1", "t2"]
    assert not start.background and not start.emergency
    assert sched.submit(ticket("t3", "k"), 1.0) is Admission.COALESCED  # joins the running job
    assert sched.queued_jobs == 0 and sched.waiting_tickets == 3
    assert [t.ticket_id for t in sched.finish("k")] == ["t1", "t2", "t3"]
    assert sched.idle and sched.waiting_tickets == 0
    assert sched.finish("k") == ()


def test_a_redelivered_ticket_id_is_ignored_while_held() -> None:
    sched = Scheduler()
    original = ticket("r", "k")
    assert sched.submit(original, 0.0) is Admission.QUEUED
    assert sched.submit(ticket("r", "other", priority=9), 0.0) is Admission.COALESCED
    assert sched.waiting_tickets == 1 and sched.queued_jobs == 1
    sched.start(0.0)
    assert sched.submit(original, 0.0) is Admission.COALESCED
    assert sched.finish("k") == (original,)
    assert sched.submit(original, 0.0) is Admission.QUEUED  # answered already: a new request to the scheduler


def test_finish_of_an_unknown_or_queued_key_returns_nothing() -> None:
    sched = Scheduler(max_concurrent=1)
    sched.submit(ticket("a"), 0.0)
    sched.submit(ticket("b"), 0.0)
    sched.start(0.0)
    assert sched.finish("nope") == ()
    assert sched.finish("job-b") == ()  # queued, not running: stays queued
    assert sched.queued_jobs == 1 and sched.waiting_tickets == 2


# -- the emergency lane -------------------------------------------------------------------------------------------


def test_an_emergency_takes_its_reserved_slot_while_the_normal_lane_is_full() -> None:
    sched = Scheduler(max_concurrent=2, emergency_slots=1)
    for tid in "abc":
        sched.submit(ticket(tid, priority=9), 0.0)
    assert started_keys(sched) == ["job-a", "job-b"]
    sched.submit(ticket("e", emergency=True), 1.0)
    [start] = sched.start(1.0)
    assert (start.job_key, start.emergency) == ("job-e", True)
    assert sched.snapshot()["slots_busy"] == {"emergency": 1, "normal": 2}


def test_an_emergency_takes_a_free_normal_slot_when_its_reserved_ones_are_busy() -> None:
    sched = Scheduler(max_concurrent=2, emergency_slots=1)
    sched.submit(ticket("e1", emergency=True), 0.0)
    sched.submit(ticket("e2", emergency=True), 0.0)
    sched.submit(ticket("n"), 0.0)
    assert started_keys(sched) == ["job-e1", "job-e2", "job-n"]
    assert sched.snapshot()["slots_busy"] == {"emergency": 1, "normal": 2}
    sched.submit(ticket("e3", emergency=True), 0.0)
    assert started_keys(sched) == []  # every slot busy: it waits at the head of the queue
    sched.finish("job-n")
    assert started_keys(sched, limit=0) == []  # a normal slot, but conservative mode's override of 0 holds it
    sched.finish("job-e1")
    assert started_keys(sched, limit=0) == ["job-e3"]  # its reserved slot


def test_without_reserved_slots_emergencies_still_go_first() -> None:
    sched = Scheduler(max_concurrent=1, emergency_slots=0)
    sched.submit(ticket("n", priority=100), 0.0)
    sched.submit(ticket("e", emergency=True), 0.0)
    assert drain(sched) == ["job-e", "job-n"]


def test_an_emergency_ticket_promotes_a_queued_job() -> None:
    sched = Scheduler(max_concurrent=1, emergency_slots=1)
    sched.submit(ticket("busy"), 0.0)
    sched.start(0.0)
    sched.submit(ticket("n1", "k"), 0.0)
    assert sched.snapshot()["queued"] == {"emergency": 0, "normal": 1, "background": 0}
    assert sched.submit(ticket("e1", "k", emergency=True), 0.0) is Admission.COALESCED
    assert sched.snapshot()["queued"] == {"emergency": 1, "normal": 0, "background": 0}
    [start] = sched.start(0.0)
    assert start.job_key == "k" and start.emergency and len(start.tickets) == 2


# -- expiry and discard -------------------------------------------------------------------------------------------


def test_a_ticket_past_its_deadline_is_refused() -> None:
    sched = Scheduler()
    assert sched.submit(ticket("late", deadline=100.0), 100.0) is Admission.EXPIRED
    assert sched.idle and sched.waiting_tickets == 0


def test_expire_drops_a_queued_job_left_empty_and_keeps_one_with_tickets() -> None:
    sched = Scheduler(max_concurrent=1)
    sched.submit(ticket("run"), 0.0)
    sched.start(0.0)
    sched.submit(ticket("q1", "q", deadline=100.0), 0.0)
    sched.submit(ticket("q2", "q", deadline=500.0), 0.0)
    sched.submit(ticket("gone", deadline=200.0), 0.0)
    assert sched.next_deadline_ms() == 100.0
    assert sched.expire(99.0) == ()
    assert [t.ticket_id for t in sched.expire(200.0)] == ["q1", "gone"]
    assert sched.queued_jobs == 1 and sched.next_deadline_ms() == 500.0
    sched.finish("job-run")
    assert started_keys(sched, 200.0) == ["q"]


def test_expire_takes_tickets_from_a_running_job_which_keeps_running() -> None:
    sched = Scheduler()
    sched.submit(ticket("a", "k", deadline=100.0), 0.0)
    sched.submit(ticket("b", "k"), 0.0)
    sched.start(0.0)
    assert [t.ticket_id for t in sched.expire(150.0)] == ["a"]
    assert sched.running_keys() == ("k",)
    assert [t.ticket_id for t in sched.finish("k")] == ["b"]
    sched.submit(ticket("c", "k2", deadline=100.0), 0.0)
    sched.start(0.0)
    assert [t.ticket_id for t in sched.expire(100.0)] == ["c"]
    assert sched.running_keys() == ("k2",) and sched.waiting_tickets == 0  # its result still fills the cache
    assert sched.finish("k2") == ()


def test_start_skips_a_job_whose_every_ticket_is_past_its_deadline() -> None:
    sched = Scheduler()
    sched.submit(ticket("stale", deadline=10.0), 0.0)
    sched.submit(ticket("fresh"), 0.0)
    assert started_keys(sched, 20.0) == ["job-fresh"]
    assert [t.ticket_id for t in sched.expire(20.0)] == ["stale"]
    assert sched.queued_jobs == 0


def test_discard_drops_tickets_from_lost_partitions() -> None:
    sched = Scheduler(max_concurrent=1)
    sched.submit(ticket("p0:1", "run"), 0.0)
    sched.submit(ticket("p1:1", "run"), 0.0)
    sched.start(0.0)
    sched.submit(ticket("p1:2", "q"), 0.0)
    sched.submit(ticket("p0:2", "keep"), 0.0)
    lost = sched.discard(lambda t: not t.ticket_id.startswith("p1:"))
    assert sorted(t.ticket_id for t in lost) == ["p1:1", "p1:2"]
    assert sched.running_keys() == ("run",) and sched.queued_jobs == 1
    assert [t.ticket_id for t in sched.finish("run")] == ["p0:1"]
    assert started_keys(sched) == ["keep"]


# -- background work ----------------------------------------------------------------------------------------------


def test_background_jobs_run_only_when_no_ticketed_job_waits() -> None:
    sched = Scheduler(max_concurrent=1)
    assert sched.add_background("up", S.AGGRESSIVE, 0.0)
    assert not sched.add_background("up", S.AGGRESSIVE, 0.0)
    sched.submit(ticket("a"), 1.0)
    sched.submit(ticket("b"), 1.0)
    assert started_keys(sched) == ["job-a"]
    assert started_keys(sched, limit=2) == ["job-b"]
    sched.submit(ticket("c"), 2.0)  # queued after the background job, ranked before it
    sched.finish("job-a")
    assert started_keys(sched, limit=2) == ["job-c"]
    sched.finish("job-b")
    assert started_keys(sched, limit=2) == ["up"]
    sched.finish("job-c")
    assert sched.finish("up") == ()
    assert sched.idle


def test_background_waits_for_a_free_normal_slot_and_can_be_held() -> None:
    sched = Scheduler(max_concurrent=1)
    sched.submit(ticket("a"), 0.0)
    sched.start(0.0)
    sched.add_background("up", S.AGGRESSIVE, 0.0)
    assert sched.start(0.0) == []
    sched.finish("job-a")
    assert sched.start(0.0, background=False) == []  # conservative mode: no idle recompilation
    [start] = sched.start(0.0)
    assert (start.job_key, start.strategy, start.background, start.tickets) == ("up", S.AGGRESSIVE, True, ())
    assert not sched.add_background("up", S.AGGRESSIVE, 0.0)  # running


def test_a_ticket_joining_background_work_makes_it_ticketed_and_it_survives_the_ticket() -> None:
    sched = Scheduler(max_concurrent=1)
    sched.add_background("k", S.STANDARD, 0.0)
    sched.submit(ticket("busy"), 0.0)
    sched.start(0.0)
    assert sched.submit(ticket("t", "k", deadline=50.0), 0.0) is Admission.COALESCED
    assert sched.snapshot()["queued"] == {"emergency": 0, "normal": 1, "background": 0}
    assert [t.ticket_id for t in sched.expire(60.0)] == ["t"]
    assert sched.snapshot()["queued"] == {"emergency": 0, "normal": 0, "background": 1}


def test_snapshot_is_json_and_counts_lanes() -> None:
    sched = Scheduler(max_concurrent=1, emergency_slots=1)
    sched.submit(ticket("e", emergency=True, deadline=900.0), 10.0)
    sched.submit(ticket("n"), 20.0)
    sched.submit(ticket("m"), 30.0)
    sched.add_background("bg", S.AGGRESSIVE, 40.0)
    sched.start(50.0)
    snap = sched.snapshot(now_ms=100.0)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["queued"] == {"emergency": 0, "normal": 1, "background": 1}
    assert snap["running"] == {"emergency": 1, "normal": 1, "background": 0}
    assert snap["slots_busy"] == {"emergency": 1, "normal": 1}
    assert (snap["waiting_tickets"], snap["next_deadline_ms"]) == (3, 900.0)
    assert (snap["oldest_queued_ms"], snap["oldest_wait_ms"]) == (30.0, 70.0)
    assert "oldest_wait_ms" not in sched.snapshot()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        Scheduler(max_concurrent=0, emergency_slots=-1)
    assert len(err.value.violations) == 2
    with pytest.raises(ValueError):
        Scheduler().start(0.0, -1)


# -- properties over any sequence of operations -------------------------------------------------------------------

KEYS = ["k0", "k1", "k2", "k3"]
_submit = st.tuples(
    st.just("submit"),
    st.integers(0, 7),  # ticket id: a small pool, so re-deliveries happen
    st.sampled_from(KEYS),
    st.integers(0, 2),
    st.booleans(),
    st.none() | st.integers(0, 60),  # deadline, relative to now
)
_ops = st.lists(
    st.one_of(
        _submit,
        st.tuples(st.just("start"), st.none() | st.integers(0, 3), st.booleans()),
        st.tuples(st.just("finish"), st.sampled_from(KEYS)),
        st.tuples(st.just("expire"), st.integers(0, 30)),
        st.tuples(st.just("discard"), st.frozensets(st.integers(0, 7))),
        st.tuples(st.just("background"), st.sampled_from(KEYS)),
    ),
    max_size=60,
)


def keeping_all_but(lost: frozenset[object]) -> Callable[[Ticket], bool]:
    return lambda t: int(t.ticket_id[1:]) not in lost


@settings(max_examples=300, deadline=None)
@given(max_concurrent=st.integers(1, 3), emergency_slots=st.integers(0, 2), ops=_ops)
def test_every_ticket_is_answered_once_and_slots_are_never_exceeded(
    max_concurrent: int, emergency_slots: int, ops: list[tuple[object, ...]]
) -> None:
    sched = Scheduler(max_concurrent=max_concurrent, emergency_slots=emergency_slots)
    held: dict[str, Ticket] = {}
    now = 0.0

    def answered(tickets: tuple[Ticket, ...]) -> None:
        for t in tickets:
            assert held.pop(t.ticket_id) is t  # held, once

    for op in ops:
        match op:
            case ("submit", int(i), str(key), int(priority), bool(emergency), deadline):
                t = ticket(
                    f"t{i}",
                    key,
                    priority=priority,
                    emergency=emergency,
                    deadline=None if deadline is None else now + float(deadline),  # type: ignore[arg-type]
                    at=now,
                )
                admission = sched.submit(t, now)
                if t.ticket_id in held:
                    assert admission is Admission.COALESCED
                elif t.deadline_ms is not None and t.deadline_ms <= now:
                    assert admission is Admission.EXPIRED
                else:
                    assert admission in (Admission.QUEUED, Admission.COALESCED)
                    held[t.ticket_id] = t
            case ("start", limit, bool(background)):
                answered(sched.expire(now))  # as the shell does, so no queued job is all past its deadline
                before = sched.snapshot()["slots_busy"]
                assert isinstance(before, dict)
                starts = sched.start(now, limit, background=background)  # type: ignore[arg-type]
                snap = sched.snapshot()
                busy, queued = snap["slots_busy"], snap["queued"]
                assert isinstance(busy, dict) and isinstance(queued, dict)
                cap = max_concurrent if limit is None else limit
                assert busy["normal"] - before["normal"] <= max(cap - before["normal"], 0)
                assert busy["emergency"] <= emergency_slots
                if queued["emergency"]:  # an emergency waits only when every slot it may take is busy
                    assert busy["emergency"] == emergency_slots and busy["normal"] >= cap
                if any(s.background for s in starts):
                    assert background and queued["emergency"] == queued["normal"] == 0
                assert all(s.background == (not s.tickets) for s in starts)
            case ("finish", str(key)):
                answered(sched.finish(key))
            case ("expire", int(dt)):
                now += dt
                answered(sched.expire(now))
            case ("discard", frozenset() as lost):
                answered(sched.discard(keeping_all_but(lost)))
            case ("background", str(key)):
                sched.add_background(key, S.AGGRESSIVE, now)
        assert sched.waiting_tickets == len(held)
        assert sched.next_deadline_ms() == min(
            (t.deadline_ms for t in held.values() if t.deadline_ms is not None), default=None
        )

    for _ in range(2):  # drain: end what runs, then start every queued job (one per key, room for all) and end it
        answered(sched.expire(now))
        for key in sched.running_keys():
            answered(sched.finish(key))
        for start in sched.start(now, len(KEYS)):
            answered(sched.finish(start.job_key))
    assert sched.idle and not held


# -- dynamic strategy selection -----------------------------------------------------------------------------------

MIDDLE = {"params": 1_000_000, "flops": 100_000_000}


def choose(**kw: object) -> tuple[S, str]:
    args: dict[str, object] = {
        **MIDDLE,
        "deadline_left_ms": None,
        "queued": 0,
        "running": 0,
        "policy": NORMAL_POLICY,
        "default": S.STANDARD,
    }
    args.update(kw)
    choice = choose_strategy(**args)  # type: ignore[arg-type]
    return choice.strategy, choice.reason


def test_complexity_picks_the_base_tier() -> None:
    assert choose(params=5_000, flops=200_000)[0] is S.FAST
    assert choose()[0] is S.STANDARD
    assert choose(default=S.FAST)[0] is S.FAST
    assert choose(params=5_000_000)[0] is S.AGGRESSIVE
    strategy, reason = choose(params=200, flops=2_000_000_000)
    assert strategy is S.AGGRESSIVE
    assert reason == "AGGRESSIVE: 200 parameters and 2 GFLOPs per sample make a large blueprint: AGGRESSIVE."


def test_high_load_and_conservative_mode_each_go_one_tier_cheaper() -> None:
    assert choose(queued=3)[0] is S.STANDARD  # 3 < 2 x 2 slots
    strategy, reason = choose(queued=4)
    assert strategy is S.FAST and "4 queued for 2 slot(s) is high load" in reason
    strategy, reason = choose(policy=CONSERVATIVE_POLICY)
    assert strategy is S.FAST and reason.endswith("conservative mode: FAST.")
    assert choose(policy=CONSERVATIVE_POLICY, queued=2)[0] is S.EMERGENCY  # 2 >= 2 x 1 slot, then conservative


def test_the_deadline_caps_the_tier_with_the_queue_wait_counted() -> None:
    assert choose(deadline_left_ms=300_000.0)[0] is S.STANDARD  # 250 s fits
    strategy, reason = choose(deadline_left_ms=300_000.0, running=2)  # 250 s + 60 s wait does not
    assert strategy is S.FAST
    assert reason == (
        "FAST: 1,000,000 parameters and 100 MFLOPs per sample: the default, STANDARD; "
        "300 s to the deadline fits only FAST (65 s timeout + ~60 s queue wait)."
    )
    assert choose(deadline_left_ms=64_000.0)[0] is S.EMERGENCY
    strategy, reason = choose(deadline_left_ms=5_000.0)
    assert strategy is S.EMERGENCY and "fits no tier (EMERGENCY: 10 s timeout" in reason
    # conservative timeouts are x1.5: FAST needs 97.5 s; the deadline does not lower a second time
    assert choose(deadline_left_ms=90_000.0, policy=CONSERVATIVE_POLICY)[0] is S.EMERGENCY
    assert choose(params=9_000_000, deadline_left_ms=400_000.0, policy=CONSERVATIVE_POLICY)[0] is S.STANDARD


def test_queue_wait_estimate() -> None:
    assert queue_wait_ms(queued=0, running=1, slots=2) == 0.0
    assert queue_wait_ms(queued=1, running=1, slots=2) == ASSUMED_JOB_MS
    assert queue_wait_ms(queued=0, running=2, slots=2) == ASSUMED_JOB_MS
    assert queue_wait_ms(queued=2, running=2, slots=2) == 2 * ASSUMED_JOB_MS
    assert queue_wait_ms(queued=3, running=0, slots=1) == 3 * ASSUMED_JOB_MS
    assert tier_timeout_ms(S.FAST, CONSERVATIVE_POLICY) == 97_500.0


@settings(max_examples=300, deadline=None)
@given(
    params=st.integers(0, 50_000_000),
    flops=st.integers(0, 20_000_000_000),
    deadline=st.none() | st.floats(-1_000.0, 2_000_000.0),
    queued=st.integers(0, 10),
    running=st.integers(0, 3),
    conservative=st.booleans(),
    default=st.sampled_from(list(S)),
)
def test_the_chosen_tier_fits_the_deadline_whenever_any_does(
    params: int, flops: int, deadline: float | None, queued: int, running: int, conservative: bool, default: S
) -> None:
    policy = CONSERVATIVE_POLICY if conservative else NORMAL_POLICY
    kw = {"params": params, "flops": flops, "queued": queued, "running": running, "policy": policy, "default": default}
    choice = choose_strategy(deadline_left_ms=deadline, **kw)  # type: ignore[arg-type]
    unbounded = choose_strategy(deadline_left_ms=None, **kw).strategy  # type: ignore[arg-type]
    assert choice.strategy <= unbounded  # a deadline only ever lowers the tier
    assert choice.reason.startswith(f"{choice.strategy.name}: ") and choice.reason.endswith(".")
    if deadline is None:
        return
    wait = queue_wait_ms(queued=queued, running=running, slots=policy.max_concurrent_jobs)
    fitting = [s for s in S if s <= unbounded and tier_timeout_ms(s, policy) + wait <= deadline]
    assert choice.strategy == (max(fitting) if fitting else S.EMERGENCY)
