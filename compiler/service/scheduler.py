"""The compile service's scheduling core: which compile runs next, and at which tier a request naming none is compiled.

Pure state, no threads, no Kafka, no torch at import: every time is passed in as `now_ms` (monotonic milliseconds).

`Scheduler` holds tickets (one per request awaiting its one answer) grouped into jobs by `job_key`: tickets with one
key share one compile, whether they arrive before it starts or while it runs. A queued job is in one of three lanes:
  emergency   any of its tickets is an emergency: starts first, into `emergency_slots` reserved for it, and when those
              are busy into a free normal slot (it never waits behind normal work);
  normal      ticketed work, started by (priority desc, earliest deadline, submission order) while fewer than
              `max_concurrent` jobs hold normal slots (conservative mode passes 1);
  background  no tickets (an idle upgrade, a recovery redo): started only when no ticketed job is left queued and a
              normal slot is free.
A job's priority, deadline and lane are derived from the tickets it holds now, so a ticket joining, expiring or being
discarded re-ranks it. Every ticket accepted comes back exactly once: from `finish` (its compile ended), `expire`
(its deadline passed) or `discard` (its partition went elsewhere).

`choose_strategy` is the forge spec's dynamic strategy selection, documented at the function.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from esper.compiler.conservative import Policy, cheaper_tier
from esper.proto.enums import CompilationStrategy
from esper.safety.exceptions import ConfigError

__all__ = [
    "ASSUMED_JOB_MS",
    "LARGE_FLOPS",
    "LARGE_PARAMS",
    "LOAD_FACTOR",
    "SMALL_FLOPS",
    "SMALL_PARAMS",
    "Admission",
    "JobStart",
    "Lane",
    "Scheduler",
    "StrategyChoice",
    "Ticket",
    "choose_strategy",
    "queue_wait_ms",
    "tier_timeout_ms",
]


class Admission(enum.StrEnum):
    """What `Scheduler.submit` did with a ticket."""

    QUEUED = "queued"  # a new job
    COALESCED = "coalesced"  # joined the queued or running job with its key (or a re-delivered ticket, ignored)
    EXPIRED = "expired"  # its deadline had passed: not kept, the caller answers it without compiling


class Lane(enum.StrEnum):
    EMERGENCY = "emergency"
    NORMAL = "normal"
    BACKGROUND = "background"


@dataclass(frozen=True)
class Ticket:
    """One request awaiting its one answer; `job_key` names the compile that answers it (its tier included)."""

    ticket_id: str  # unique per input record, e.g. "leyline.compilation.requests:1:42"
    request_id: str
    job_key: str
    strategy: CompilationStrategy  # the tier, already chosen
    priority: int  # higher first
    emergency: bool
    deadline_ms: float | None  # absolute, on the clock of now_ms; None: no deadline
    submitted_ms: float


@dataclass(frozen=True)
class JobStart:
    """A job `Scheduler.start` marked running: compile `job_key` at `strategy`, then call `finish(job_key)`."""

    job_key: str
    strategy: CompilationStrategy
    emergency: bool
    background: bool  # an idle upgrade or recovery redo: no tickets
    tickets: tuple[Ticket, ...]


def _past(ticket: Ticket, now_ms: float) -> bool:
    """At its deadline there is no time left to compile: it is past."""
    return ticket.deadline_ms is not None and ticket.deadline_ms <= now_ms


@dataclass
class _Job:
    key: str
    strategy: CompilationStrategy
    seq: int  # submission order
    queued_ms: float
    idle_work: bool  # from add_background: without tickets it stays queued, as background work
    tickets: dict[str, Ticket] = field(default_factory=dict)  # by ticket_id, in arrival order
    slot: Lane | None = None  # None: queued; running: the slot it holds (EMERGENCY or NORMAL)
    started_as: Lane | None = None

    @property
    def lane(self) -> Lane:
        if any(t.emergency for t in self.tickets.values()):
            return Lane.EMERGENCY
        return Lane.NORMAL if self.tickets else Lane.BACKGROUND

    @property
    def deadline_ms(self) -> float | None:
        return min((t.deadline_ms for t in self.tickets.values() if t.deadline_ms is not None), default=None)

    def rank(self) -> tuple[int, int, float, int]:
        """Sort key: lane (emergency, normal, background), priority desc, earliest deadline, submission order."""
        deadline = self.deadline_ms
        priority = max((t.priority for t in self.tickets.values()), default=0)
        return _LANE_RANK[self.lane], -priority, math.inf if deadline is None else deadline, self.seq


_LANE_RANK = {Lane.EMERGENCY: 0, Lane.NORMAL: 1, Lane.BACKGROUND: 2}


class Scheduler:
    """The queue and running set of the compile service (see the module docstring for the rules)."""

    def __init__(self, max_concurrent: int = 2, emergency_slots: int = 1) -> None:
        problems = []
        if max_concurrent < 1:
            problems.append(f"max_concurrent must be >= 1, got {max_concurrent}")
        if emergency_slots < 0:
            problems.append(f"emergency_slots must be >= 0, got {emergency_slots}")
        if problems:
            raise ConfigError("Scheduler", problems)
        self.max_concurrent = max_concurrent
        self.emergency_slots = emergency_slots
        self._jobs: dict[str, _Job] = {}  # queued and running, by key
        self._held: set[str] = set()  # the ticket_id of every ticket held
        self._seq = itertools.count()

    # -- operations --------------------------------------------------------------------------------------------

    def submit(self, ticket: Ticket, now_ms: float) -> Admission:
        """Hold `ticket` until its answer: in the job with its key (queued or running), else in a new job. A
        ticket_id already held is a re-delivered record: ignored (COALESCED). EXPIRED: past its deadline, not held."""
        if ticket.ticket_id in self._held:
            return Admission.COALESCED
        if _past(ticket, now_ms):
            return Admission.EXPIRED
        self._held.add(ticket.ticket_id)
        job = self._jobs.get(ticket.job_key)
        if job is not None:
            job.tickets[ticket.ticket_id] = ticket
            return Admission.COALESCED
        job = _Job(ticket.job_key, ticket.strategy, next(self._seq), now_ms, idle_work=False)
        job.tickets[ticket.ticket_id] = ticket
        self._jobs[job.key] = job
        return Admission.QUEUED

    def add_background(self, job_key: str, strategy: CompilationStrategy, now_ms: float) -> bool:
        """Queue a ticketless job (an idle upgrade, a recovery redo); False when that key is queued or running."""
        if job_key in self._jobs:
            return False
        self._jobs[job_key] = _Job(job_key, strategy, next(self._seq), now_ms, idle_work=True)
        return True

    def start(self, now_ms: float, max_concurrent: int | None = None, *, background: bool = True) -> list[JobStart]:
        """The jobs to start now, marked running, in start order. `max_concurrent` overrides the constructor's for
        this call (conservative mode passes 1; 0 holds all normal work, emergencies still start in their reserved
        slots); `background=False` starts no background job (conservative mode: no idle recompilation). A job whose
        every ticket is past its deadline at `now_ms` is not started: the next `expire` answers them."""
        limit = self.max_concurrent if max_concurrent is None else max_concurrent
        if limit < 0:
            raise ValueError(f"max_concurrent must be >= 0, got {limit}")
        busy = {Lane.EMERGENCY: 0, Lane.NORMAL: 0}
        for job in self._jobs.values():
            if job.slot is not None:
                busy[job.slot] += 1
        started: list[JobStart] = []
        # Background jobs rank last and take only normal slots: one starts only after every ticketed job has one.
        for job in sorted((j for j in self._jobs.values() if j.slot is None), key=_Job.rank):
            if job.tickets and all(_past(t, now_ms) for t in job.tickets.values()):
                continue
            lane = job.lane
            slot: Lane | None = None
            if lane is Lane.EMERGENCY and busy[Lane.EMERGENCY] < self.emergency_slots:
                slot = Lane.EMERGENCY
            elif busy[Lane.NORMAL] < limit and (background or lane is not Lane.BACKGROUND):
                slot = Lane.NORMAL
            if slot is None:
                continue
            busy[slot] += 1
            job.slot, job.started_as = slot, lane
            started.append(
                JobStart(
                    job_key=job.key,
                    strategy=job.strategy,
                    emergency=lane is Lane.EMERGENCY,
                    background=lane is Lane.BACKGROUND,
                    tickets=tuple(job.tickets.values()),
                )
            )
        return started

    def finish(self, job_key: str) -> tuple[Ticket, ...]:
        """A running job ended (success or failure): every ticket waiting on it, those that joined after it started
        included; the job is forgotten. A key not running -> () (a queued job stays queued)."""
        job = self._jobs.get(job_key)
        if job is None or job.slot is None:
            return ()
        del self._jobs[job_key]
        self._held.difference_update(job.tickets)
        return tuple(job.tickets.values())

    def expire(self, now_ms: float) -> tuple[Ticket, ...]:
        """The tickets past their deadline, removed from queued and running jobs. A queued job left without tickets
        is dropped, never compiled (one from add_background goes back to background work); a running one keeps
        running: its result still fills the cache."""
        return self._remove(lambda t: _past(t, now_ms))

    def discard(self, keep: Callable[[Ticket], bool]) -> tuple[Ticket, ...]:
        """The tickets for which keep() is False (a rebalance took their partitions), removed as `expire` removes."""
        return self._remove(lambda t: not keep(t))

    def _remove(self, drop: Callable[[Ticket], bool]) -> tuple[Ticket, ...]:
        removed: list[Ticket] = []
        for job in list(self._jobs.values()):
            gone = [t for t in job.tickets.values() if drop(t)]
            for ticket in gone:
                del job.tickets[ticket.ticket_id]
                self._held.remove(ticket.ticket_id)
            removed += gone
            if gone and job.slot is None and not job.tickets and not job.idle_work:
                del self._jobs[job.key]
        return tuple(removed)

    # -- state -------------------------------------------------------------------------------------------------

    def next_deadline_ms(self) -> float | None:
        """The earliest deadline of any ticket held (queued or running), so the shell knows when to call expire."""
        return min((d for j in self._jobs.values() if (d := j.deadline_ms) is not None), default=None)

    @property
    def queued_jobs(self) -> int:
        return sum(1 for j in self._jobs.values() if j.slot is None)

    @property
    def running_jobs(self) -> int:
        return sum(1 for j in self._jobs.values() if j.slot is not None)

    @property
    def waiting_tickets(self) -> int:
        """Tickets held, in queued and running jobs."""
        return len(self._held)

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return not self._jobs

    def running_keys(self) -> tuple[str, ...]:
        return tuple(j.key for j in self._jobs.values() if j.slot is not None)

    def snapshot(self, now_ms: float | None = None) -> dict[str, object]:
        """JSON-able state for health and metrics: jobs queued and running by lane, slots busy, tickets held, the
        earliest deadline, when the longest-waiting queued job was queued and, given `now_ms`, how long ago."""
        queued = [j for j in self._jobs.values() if j.slot is None]
        running = [j for j in self._jobs.values() if j.slot is not None]
        oldest = min((j.queued_ms for j in queued), default=None)
        snap: dict[str, object] = {
            "max_concurrent": self.max_concurrent,
            "emergency_slots": self.emergency_slots,
            "queued": _by_lane(j.lane for j in queued),
            "running": _by_lane(j.started_as for j in running if j.started_as is not None),
            "slots_busy": {lane.value: sum(1 for j in running if j.slot is lane) for lane in _SLOTS},
            "waiting_tickets": self.waiting_tickets,
            "next_deadline_ms": self.next_deadline_ms(),
            "oldest_queued_ms": oldest,
        }
        if now_ms is not None:
            snap["oldest_wait_ms"] = None if oldest is None else max(now_ms - oldest, 0.0)
        return snap


_SLOTS = (Lane.EMERGENCY, Lane.NORMAL)


def _by_lane(lanes: Iterable[Lane]) -> dict[str, int]:
    counts = dict.fromkeys((lane.value for lane in Lane), 0)
    for lane in lanes:
        counts[lane.value] += 1
    return counts


# -- dynamic strategy selection -----------------------------------------------------------------------------------

# Complexity (the IR's parameter count and FLOPs per sample; its limits are 50 M and 20 GFLOPs). Below both small
# bounds kernels are launch-bound and autotuning buys little: FAST. At either large bound tuned GEMM/conv templates
# pay for AGGRESSIVE's longer compile. Between: the configured default.
SMALL_PARAMS = 100_000
SMALL_FLOPS = 10_000_000
LARGE_PARAMS = 5_000_000
LARGE_FLOPS = 1_000_000_000
# High load: this many queued jobs per concurrent slot or more, and each new request compiles one tier cheaper so
# the queue drains sooner.
LOAD_FACTOR = 2
# What one job ahead is assumed to hold a slot for, to estimate a new request's queue wait: a rough typical compile
# (the spec's targets: FAST 20-65 s, STANDARD 75-250 s), not a bound.
ASSUMED_JOB_MS = 60_000.0


@dataclass(frozen=True)
class StrategyChoice:
    strategy: CompilationStrategy
    reason: str  # one sentence for the result's reader: which inputs decided and how


@functools.cache
def _tier_timeouts_s() -> Mapping[CompilationStrategy, float]:
    from esper.compiler.tiers import TIERS  # here, not at import: tiers imports torch

    return {strategy: tier.timeout_s for strategy, tier in TIERS.items()}


def tier_timeout_ms(strategy: CompilationStrategy, policy: Policy) -> float:
    """A tier's compile timeout under `policy`, in milliseconds (the first call imports torch, through tiers)."""
    return policy.timeout_s(_tier_timeouts_s()[strategy]) * 1000.0


def queue_wait_ms(*, queued: int, running: int, slots: int) -> float:
    """The estimated wait before a new job starts: every queued job ahead of it (pessimistically: priority may put
    it first), `slots` at a time, each holding a slot for ASSUMED_JOB_MS; none when a slot is free for it."""
    free = max(slots - running, 0)
    if queued < free:
        return 0.0
    return ((queued - free) // max(slots, 1) + 1) * ASSUMED_JOB_MS


def choose_strategy(
    *,
    params: int,
    flops: int,
    deadline_left_ms: float | None,
    queued: int,
    running: int,
    policy: Policy,
    default: CompilationStrategy,
) -> StrategyChoice:
    """The tier for a request that names none, in four steps:
    1. complexity: FAST for a small blueprint (params <= SMALL_PARAMS and flops <= SMALL_FLOPS), AGGRESSIVE for a
       large one (params >= LARGE_PARAMS or flops >= LARGE_FLOPS), `default` between;
    2. load: one tier cheaper when queued >= LOAD_FACTOR x policy.max_concurrent_jobs;
    3. policy: policy.tier() (conservative mode: one tier cheaper);
    4. deadline: the highest tier no higher than that whose timeout under the policy plus the estimated queue wait
       (queue_wait_ms) fits in deadline_left_ms; EMERGENCY, the quickest, when none fits.
    The deadline comes last because it is a constraint, the rest preferences: conservative mode lowers what is
    wanted, it does not lower again a tier the deadline already lowered."""
    if params <= SMALL_PARAMS and flops <= SMALL_FLOPS:
        strategy = CompilationStrategy.FAST
        clauses = [f"{params:,} parameters and {_flops(flops)} per sample make a small blueprint: {strategy.name}"]
    elif params >= LARGE_PARAMS or flops >= LARGE_FLOPS:
        strategy = CompilationStrategy.AGGRESSIVE
        clauses = [f"{params:,} parameters and {_flops(flops)} per sample make a large blueprint: {strategy.name}"]
    else:
        strategy = default
        clauses = [f"{params:,} parameters and {_flops(flops)} per sample: the default, {strategy.name}"]

    slots = policy.max_concurrent_jobs
    if queued >= LOAD_FACTOR * slots and cheaper_tier(strategy) is not strategy:
        strategy = cheaper_tier(strategy)
        clauses.append(f"{queued} queued for {slots} slot(s) is high load: {strategy.name}")
    if policy.tier(strategy) is not strategy:
        strategy = policy.tier(strategy)
        clauses.append(f"conservative mode: {strategy.name}")

    if deadline_left_ms is not None:
        wait = queue_wait_ms(queued=queued, running=running, slots=slots)
        left = f"{deadline_left_ms / 1000:.0f} s to the deadline"
        cost = f"~{wait / 1000:.0f} s queue wait"
        for candidate in _down_from(strategy):
            timeout = tier_timeout_ms(candidate, policy)
            if timeout + wait <= deadline_left_ms:
                fits = "fits" if candidate is strategy else "fits only"
                clauses.append(f"{left} {fits} {candidate.name} ({timeout / 1000:.0f} s timeout + {cost})")
                strategy = candidate
                break
        else:
            timeout = tier_timeout_ms(CompilationStrategy.EMERGENCY, policy)
            clauses.append(f"{left} fits no tier (EMERGENCY: {timeout / 1000:.0f} s timeout + {cost}): EMERGENCY")
            strategy = CompilationStrategy.EMERGENCY
    return StrategyChoice(strategy, f"{strategy.name}: {'; '.join(clauses)}.")


def _down_from(strategy: CompilationStrategy) -> list[CompilationStrategy]:
    """`strategy` and every cheaper tier, most expensive first."""
    return sorted((s for s in CompilationStrategy if s <= strategy), reverse=True)


def _flops(n: int) -> str:
    for scale, unit in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} FLOPs"
