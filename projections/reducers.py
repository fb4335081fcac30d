"""The projections: pure reducers `(state | None, fact) -> state | None` that fold Leyline facts into the tables
people and services ask about. The same code runs in the Faust app, in a replay and in the tests.

The tables (key: state; every state also holds "seen", the event ids it folded per source partition):
  breakers      "subsystem/source_id/breaker": state and state_number (CircuitState, one numbering: CLOSED=1,
                OPEN=2, HALF_OPEN=3), stats (the newest BreakerStats, with at_ms and event_id), transition (the last:
                from, to, to_number, reason, at_ms), failure (the last: error_type, error, duration_ms, at_ms),
                counts of transitions and failures, and logs (the same three records per source partition)
  conservative  "service/source_id": active, reasons, cooldown_ms, since_ms (the last change of active), changes,
                entered, last_entered (at_ms and reasons of the last entry)
  pauses        "instance_id": slots (slot_id -> paused, reason, quota_ms, max_duration_ms, identity_kernel_active,
                command_id, since_ms, pauses, last_exit), paused_slots, dropped_slots, and quota (the instance's:
                remaining, used, max_quota, last decision, denied, resets, at_ms; None before any quota event)
  seeds         "instance_id/slot_id": stage and stage_number (SeedStage), previous, since_ms, transitions,
                refusals, last_gate (gate, passed, reason, from, to, at_ms)
  compilations  request id (as Tezzeret derives it): status ("pending": asked, no answer in the log, whether
                queued or compiling the log cannot tell; "done"; "failed"), blueprint_id, kind, requestor,
                strategy, failure_reason, cache_level, artifact_id, and the sub-records request, result (durations
                queue_ms, compile_ms, total_ms among them), complete and audit, with counts asked and answers
  blueprints    blueprint id: name, author, submitted, requests, emergency, ok, failed, failures (reason -> n),
                cache (level -> n), compiled, tiers (strategy -> the latest successful result), artifacts
                (strategy -> the newest CompiledKernelArtifact), last_failure
  metrics       telemetry source id: series ('name{label="v",...}' -> name, value, type, unit, labels, at_ms, and
                count, sum, bounds, buckets for histograms), packets, events, last_packet_ms, level, subsystem
  deadletters   origin topic ("unknown" when none): count, error_types (type -> n), partitions (partition -> the
                highest origin offset), last (error_type, error, partition, offset, origin key, consumer group...)
Enum values are stored by name (without their prefix); times are epoch milliseconds (the event's own, else the
record's timestamp).

Rules every projection keeps:
- Pure: no I/O, no clock (times come from the facts), the input state is never mutated.
- JSON-able state: dicts of str keys with str/int/float/bool/None/list/dict values, so a RocksDB or Faust table
  stores it as JSON; a non-finite float is kept as its text ("nan", "inf", "-inf").
- Idempotent for a repeated event (`facts.event_id`): each entity remembers, under "seen", the last SEEN_WINDOW ids
  it folded from each log ("topic:partition"). A redelivered event is ignored as long as fewer than SEEN_WINDOW
  other events of the same entity came from the same partition since its first copy. Kasmina's outbox keeps up to
  1,000 events in flight per instance, spread over all its breakers, slots and pauses, so a redelivery burst stays
  well inside the window for any one entity unless a single entity produced hundreds of events in that burst.
- The same state whatever the interleaving of different partitions (a replay, the live app and two workers read
  them in different orders). A value several partitions may update is the greatest by a total order on events:
  a breaker's stats, last transition and last failure (Tezzeret keys failures and transitions apart) are the
  last of each source partition in log order, and across partitions the newest by event time, the breaker's
  monotone counters, then the event id; a request's request, result, complete and audit
  sub-records, and a blueprint's design, latest result per tier and last failure, by their own time, then their
  place in the log; a blueprint's artifact per tier by creation time, then id. Counts are sums. Log order rules
  what one partition feeds: conservative mode (Tezzeret keys it by kind), pauses and seeds (Kasmina keys by
  instance), metrics (keyed by source) and dead letters (one partition).
- Hostile input never grows a state without bound: texts are cut, unknown enum numbers read "UNKNOWN", maps of
  slots, metric series and error types are capped (what did not fit is counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from esper.projections.facts import Fact, event_id, stream_of
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import (
    CacheLevel,
    CircuitState,
    CompilationStrategy,
    FailureReason,
    MetricType,
    QuotaOutcome,
    RequestKind,
    SeedStage,
    TelemetryLevel,
)
from esper.streams.topics import (
    AUDIT,
    BLUEPRINTS,
    COMPILATION_EMERGENCY,
    COMPILATION_REQUESTS,
    COMPILATION_RESULTS,
    DEADLETTER,
    KERNELS,
    SAFETY,
    TELEMETRY,
)

__all__ = [
    "MAX_ERROR_TYPES",
    "MAX_LABELS",
    "MAX_LOGS",
    "MAX_SERIES",
    "MAX_SLOTS",
    "PROJECTIONS",
    "PROJECTIONS_BY_NAME",
    "SEEN_WINDOW",
    "TEXT_LIMIT",
    "Projection",
    "State",
    "Tables",
    "fold",
    "fold_all",
    "routes",
]

State = dict[str, Any]
Tables = dict[str, dict[str, State]]
# (state, fact, key) -> the new state, or None when the fact says nothing this projection keeps.
Rule = Callable[[State | None, Fact, str], State | None]

SEEN_WINDOW = 256  # event ids remembered per entity and source partition
TEXT_LIMIT = 500  # characters kept of an error, reason or message
MAX_SLOTS = 256  # pause slots per Kasmina instance
MAX_LOGS = 32  # source partitions a breaker's records are kept for (leyline.safety has 3)
MAX_SERIES = 512  # metric series per telemetry source
MAX_ERROR_TYPES = 32  # distinct error types counted per dead-letter origin
MAX_REASONS = 32  # conservative-mode reasons kept
MAX_BUCKETS = 64  # histogram buckets kept per series
MAX_LABELS = 32  # labels of a metric point kept (in key order)
_KEY_LIMIT = 256  # characters of an entity key part (a longer id is cut)


@dataclass(frozen=True)
class Projection:
    """One table: its name, the topics it reads, which entity a fact concerns (`key`: None when the fact is not for
    this table) and how the entity's state changes (`apply`)."""

    name: str
    topics: tuple[str, ...]
    key: Callable[[Fact], str | None]
    rule: Rule
    window: int = SEEN_WINDOW

    def apply(self, state: State | None, fact: Fact) -> State | None:
        """The entity's state after `fact` (the same object when the fact changes nothing: not this table's, a
        repeated event, or nothing this table keeps)."""
        key = self.key(fact) if fact.topic in self.topics else None
        return state if key is None else self.apply_keyed(state, fact, key)

    def apply_keyed(self, state: State | None, fact: Fact, key: str) -> State | None:
        """`apply` for a fact whose key is already known (`fold` computes it once)."""
        eid = event_id(fact)
        if state is not None:
            for ids in state["seen"].values():
                if _SEEN.holds(ids, eid):
                    return state
        new = self.rule(state, fact, key)
        if new is None:
            return state
        seen = new["seen"]
        stream = stream_of(fact)
        ids = seen.get(stream, [])
        return {**new, "seen": {**seen, stream: _SEEN.append(ids, eid, self.window)}}


class _SeenSets:
    """Set views of the "seen" lists, so that a busy entity's redelivery check is a hash lookup rather than a walk
    of up to SEEN_WINDOW ids per partition. A memo only, invisible in any state: each set is exactly its list's
    contents (lists are never mutated; the memo holds each list it indexes, so an id is never reused). A list's
    set passes on to the list that succeeds it, and a list the memo lacks (decoded from a store, or one whose set
    moved on to another branch) is indexed again from its contents."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._sets: dict[int, tuple[list[str], set[str]]] = {}

    def _take(self, ids: list[str]) -> set[str] | None:
        """The set of `ids` (unique ids only: a list with repeats is not indexed), removed from the memo."""
        found = self._sets.pop(id(ids), None)
        if found is not None:
            return found[1]
        index = set(ids)
        return index if len(index) == len(ids) else None

    def _put(self, ids: list[str], index: set[str]) -> None:
        if len(self._sets) >= self._capacity:
            del self._sets[next(iter(self._sets))]  # the oldest indexed
        self._sets[id(ids)] = (ids, index)

    def holds(self, ids: list[str], eid: str) -> bool:
        if len(ids) < 16:
            return eid in ids
        index = self._take(ids)
        if index is None:
            return eid in ids
        self._put(ids, index)
        return eid in index

    def append(self, ids: list[str], eid: str, window: int) -> list[str]:
        """A new list: `ids` with `eid` appended, keeping the last `window`."""
        kept = ids[len(ids) - window + 1 :] if len(ids) >= window else ids
        out = [*kept, eid]
        if len(out) >= 16:
            index = self._take(ids)
            if index is not None and eid not in index:
                for gone in ids[: len(ids) - len(kept)]:
                    index.discard(gone)
                index.add(eid)
                self._put(out, index)
        return out


_SEEN = _SeenSets(capacity=2048)  # at most ~2048 x 16 KiB of sets


# ---------------------------------------------------------------- small pure helpers


def _ms(ts: Timestamp) -> int:
    """A protobuf timestamp in epoch milliseconds (0 when unset)."""
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def _at(ts: Timestamp, fact: Fact) -> int:
    """When the event happened: its own timestamp, else the record's."""
    return _ms(ts) or fact.timestamp_ms


def _num(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(x)


def _text(s: str, limit: int = TEXT_LIMIT) -> str:
    return s[:limit]


_NAMES: dict[type[IntEnum], dict[int, str]] = {
    cls: {0: "UNSPECIFIED", **{m.value: m.name for m in cls}}
    for cls in (
        CacheLevel,
        CircuitState,
        CompilationStrategy,
        FailureReason,
        MetricType,
        QuotaOutcome,
        RequestKind,
        SeedStage,
        TelemetryLevel,
    )
}


def _name(cls: type[IntEnum], number: int) -> str:
    """An enum value's name without its prefix; "UNSPECIFIED" for 0, "UNKNOWN" for numbers our schema lacks (proto3
    enums are open: any int32 may arrive, and each would otherwise become a key)."""
    return _NAMES[cls].get(number, "UNKNOWN")


def _bump(counts: Mapping[str, int], key: str, cap: int | None = None) -> dict[str, int]:
    """counts with key incremented; a new key past `cap` is counted under "other"."""
    if cap is not None and key not in counts and len(counts) >= cap:
        key = "other"
    return {**counts, key: counts.get(key, 0) + 1}


def _later(old: State | None, new: State, order: Callable[[State], tuple[Any, ...]]) -> State:
    """The greater of two records by `order` (a total order on events, so the result ignores arrival order)."""
    return new if old is None or order(new) > order(old) else old


def _part(s: str) -> str:
    return s[:_KEY_LIMIT]


def _base(**fields: Any) -> State:
    return {**fields, "seen": {}}


def _detail(fact: Fact, *kinds: str) -> tuple[pb.SafetyEvent, str] | None:
    """The safety event and its detail's name, when the fact is a SafetyEvent with one of `kinds`."""
    msg = fact.message
    if not isinstance(msg, pb.SafetyEvent):
        return None
    kind = msg.WhichOneof("detail")
    return (msg, kind) if kind in kinds else None


# ---------------------------------------------------------------- breakers per (subsystem, source, breaker)

_BREAKER_KINDS = ("breaker_failure", "breaker_transition")


def _breaker_stats(msg: pb.SafetyEvent, kind: str) -> pb.BreakerStats:
    return msg.breaker_failure.stats if kind == "breaker_failure" else msg.breaker_transition.stats


def _breaker_key(fact: Fact) -> str | None:
    found = _detail(fact, *_BREAKER_KINDS)
    if found is None:
        return None
    msg, kind = found
    name = _breaker_stats(msg, kind).name
    return f"{_part(msg.subsystem)}/{_part(msg.source_id)}/{_part(name)}" if name else None


def _stats_record(s: pb.BreakerStats, at_ms: int, eid: str) -> State:
    return {
        "at_ms": at_ms,
        "event_id": eid,
        "state": _name(CircuitState, s.state),
        "state_number": int(s.state),
        "total_calls": s.total_calls,
        "total_successes": s.total_successes,
        "total_failures": s.total_failures,
        "total_rejected": s.total_rejected,
        "current_failure_count": s.current_failure_count,
        "current_success_count": s.current_success_count,
        "success_rate": _num(s.success_rate),
        "failure_rate": _num(s.failure_rate),
        "slow_call_rate": _num(s.slow_call_rate),
        "state_transition_count": s.state_transition_count,
        "last_failure_time_ms": s.last_failure_time_ms,
    }


def _stats_order(r: State) -> tuple[Any, ...]:
    # Failures and transitions of one Tezzeret breaker are keyed apart (different partitions): event time first,
    # then the breaker's own monotone counters, then the id, so that the newest stats win in any arrival order.
    return (
        r["at_ms"],
        r["state_transition_count"],
        r["total_calls"],
        r["total_failures"],
        r["total_rejected"],
        r["event_id"],
    )


def _transition_order(r: State) -> tuple[Any, ...]:
    return (r["at_ms"], r["count"], r["event_id"])


def _failure_order(r: State) -> tuple[Any, ...]:
    return (r["at_ms"], r["total_failures"], r["event_id"])


def _newest(records: Iterable[State | None], order: Callable[[State], tuple[Any, ...]]) -> State | None:
    present = [r for r in records if r is not None]
    return max(present, key=order) if present else None


def _breaker_rule(state: State | None, fact: Fact, key: str) -> State | None:
    found = _detail(fact, *_BREAKER_KINDS)
    if found is None:
        return None
    msg, kind = found
    stats = _breaker_stats(msg, kind)
    at, eid = _at(msg.timestamp, fact), event_id(fact)
    s = state or _base(
        subsystem=_part(msg.subsystem),
        source_id=_part(msg.source_id),
        breaker=_part(stats.name),
        state="UNSPECIFIED",
        state_number=0,
        stats=None,
        transition=None,
        failure=None,
        transitions=0,
        failures=0,
        logs={},
    )
    # Per source partition the last of each record in log order (a wall clock stepped back cannot reorder one
    # partition); across partitions (Tezzeret keys failures and transitions apart) the newest by the orders above.
    stream = stream_of(fact)
    logs = s["logs"]
    if stream not in logs and len(logs) >= MAX_LOGS:
        return None
    last = logs.get(stream) or {"stats": None, "transition": None, "failure": None}
    if kind == "breaker_transition":
        t = msg.breaker_transition
        record = {
            "at_ms": at,
            "event_id": eid,
            "count": stats.state_transition_count,
            "from": _name(CircuitState, t.from_state),
            "to": _name(CircuitState, t.to_state),
            "to_number": int(t.to_state),
            "reason": _text(t.reason),
        }
        s = {**s, "transitions": s["transitions"] + 1}
        last = {**last, "transition": record}
    else:
        f = msg.breaker_failure
        record = {
            "at_ms": at,
            "event_id": eid,
            "total_failures": stats.total_failures,
            "error_type": _text(f.error_type),
            "error": _text(f.error),
            "duration_ms": _num(f.duration_ms),
        }
        s = {**s, "failures": s["failures"] + 1}
        last = {**last, "failure": record}
    logs = {**logs, stream: {**last, "stats": _stats_record(stats, at, eid)}}
    newest = _newest((v["stats"] for v in logs.values()), _stats_order)
    assert newest is not None  # this fact's stats are among them
    return {
        **s,
        "logs": logs,
        "stats": newest,
        "state": newest["state"],
        "state_number": newest["state_number"],
        "transition": _newest((v["transition"] for v in logs.values()), _transition_order),
        "failure": _newest((v["failure"] for v in logs.values()), _failure_order),
    }


# ---------------------------------------------------------------- conservative mode per service instance


def _conservative_key(fact: Fact) -> str | None:
    found = _detail(fact, "conservative_mode")
    if found is None:
        return None
    msg = found[0]
    return f"{_part(msg.conservative_mode.service or msg.subsystem)}/{_part(msg.source_id)}"


def _conservative_rule(state: State | None, fact: Fact, key: str) -> State | None:
    found = _detail(fact, "conservative_mode")
    if found is None:
        return None
    msg = found[0]
    c = msg.conservative_mode
    at = _at(msg.timestamp, fact)
    reasons = [_text(r) for r in c.reasons[:MAX_REASONS]]
    s = state or _base(
        service=_part(c.service or msg.subsystem),
        source_id=_part(msg.source_id),
        active=False,
        reasons=[],
        cooldown_ms=0,
        since_ms=0,
        changes=0,
        entered=0,
        last_entered=None,
    )
    changed = c.active != s["active"] or s["changes"] == 0
    return {
        **s,
        "active": c.active,
        "reasons": reasons,
        "cooldown_ms": c.cooldown_ms,
        "since_ms": at if changed else s["since_ms"],
        "changes": s["changes"] + 1,
        "entered": s["entered"] + (1 if c.active and changed else 0),
        "last_entered": {"at_ms": at, "reasons": reasons} if c.active and changed else s["last_entered"],
    }


# ---------------------------------------------------------------- pauses per Kasmina instance, by slot

_PAUSE_KINDS = ("pause_entered", "pause_exited", "quota_decision", "quota_reset")


def _pause_key(fact: Fact) -> str | None:
    found = _detail(fact, *_PAUSE_KINDS)
    if found is None:
        return None
    msg, kind = found
    instance = ""
    if kind == "pause_entered":
        instance = msg.pause_entered.instance_id
    elif kind == "pause_exited":
        instance = msg.pause_exited.instance_id
    instance = instance or msg.source_id  # the quota is the instance's: its events carry only the source id
    return _part(instance) or None


def _slot_base() -> State:
    return {
        "paused": False,
        "reason": "",
        "quota_ms": 0,
        "max_duration_ms": 0,
        "identity_kernel_active": False,
        "command_id": "",
        "since_ms": 0,
        "pauses": 0,
        "last_exit": None,
    }


def _pause_rule(state: State | None, fact: Fact, key: str) -> State | None:
    found = _detail(fact, *_PAUSE_KINDS)
    if found is None:
        return None
    msg, kind = found
    at = _at(msg.timestamp, fact)
    s = state or _base(instance_id=key, paused_slots=0, slots={}, dropped_slots=0, quota=None)
    if kind in ("pause_entered", "pause_exited"):
        slot_id = _part(msg.pause_entered.slot_id if kind == "pause_entered" else msg.pause_exited.slot_id)
        slots = s["slots"]
        if slot_id not in slots and len(slots) >= MAX_SLOTS:
            return {**s, "dropped_slots": s["dropped_slots"] + 1}
        slot = slots.get(slot_id) or _slot_base()
        if kind == "pause_entered":
            p = msg.pause_entered
            slot = {
                **slot,
                "paused": True,
                "reason": _text(p.reason),
                "quota_ms": p.quota_ms,
                "max_duration_ms": p.max_duration_ms,
                "identity_kernel_active": p.identity_kernel_active,
                "command_id": _part(p.command_id),
                "since_ms": at,
                "pauses": slot["pauses"] + 1,
            }
        else:
            x = msg.pause_exited
            exit_ = {
                "at_ms": at,
                "duration_ms": x.duration_ms,
                "cause": _text(x.cause),
                "command_id": _part(x.command_id),
            }
            slot = {**slot, "paused": False, "identity_kernel_active": False, "since_ms": at, "last_exit": exit_}
        slots = {**slots, slot_id: slot}
        return {**s, "slots": slots, "paused_slots": sum(1 for v in slots.values() if v["paused"])}
    quota = s["quota"] or {
        "remaining": 0,
        "used": 0,
        "max_quota": 0,
        "last": None,
        "denied": 0,
        "resets": 0,
        "at_ms": 0,
    }
    if kind == "quota_decision":
        q = msg.quota_decision
        last = {"outcome": _name(QuotaOutcome, q.outcome), "requested": q.requested, "granted": q.granted}
        quota = {
            **quota,
            "remaining": q.remaining,
            "used": q.used,
            "max_quota": q.max_quota,
            "last": last,
            "denied": quota["denied"] + (q.outcome == pb.QUOTA_DENIED),
            "at_ms": at,
        }
    else:
        r = msg.quota_reset
        quota = {
            **quota,
            "remaining": r.max_quota,
            "used": 0,
            "max_quota": r.max_quota,
            "resets": quota["resets"] + 1,
            "at_ms": at,
        }
    return {**s, "quota": quota}


# ---------------------------------------------------------------- seed lifecycle per (instance, slot)


def _seed_key(fact: Fact) -> str | None:
    found = _detail(fact, "seed_transition")
    if found is None:
        return None
    msg = found[0]
    t = msg.seed_transition
    return f"{_part(t.instance_id or msg.source_id)}/{_part(t.slot_id)}"


def _seed_rule(state: State | None, fact: Fact, key: str) -> State | None:
    found = _detail(fact, "seed_transition")
    if found is None:
        return None
    msg = found[0]
    t = msg.seed_transition
    at = _at(msg.timestamp, fact)
    # seed.py reports a refused move with the reason "refused: ..." and the stage it stayed in as from_stage.
    refused = t.reason.startswith("refused")
    now = t.from_stage if refused else t.to_stage
    s = state or _base(
        instance_id=_part(t.instance_id or msg.source_id),
        slot_id=_part(t.slot_id),
        stage="UNSPECIFIED",
        stage_number=0,
        previous=None,
        since_ms=0,
        transitions=0,
        refusals=0,
        last_gate=None,
    )
    gate = {
        "gate": _part(t.gate),
        "passed": not refused,
        "reason": _text(t.reason),
        "from": _name(SeedStage, t.from_stage),
        "to": _name(SeedStage, t.to_stage),
        "at_ms": at,
    }
    moved = not refused
    return {
        **s,
        "stage": _name(SeedStage, now),
        "stage_number": int(now),
        "previous": _name(SeedStage, t.from_stage) if moved else s["previous"],
        "since_ms": at if moved else s["since_ms"],
        "transitions": s["transitions"] + moved,
        "refusals": s["refusals"] + refused,
        "last_gate": gate,
    }


# ---------------------------------------------------------------- compilation status per request

_REQUEST_TOPICS = (BLUEPRINTS.name, COMPILATION_REQUESTS.name, COMPILATION_EMERGENCY.name)


def _coordinates(fact: Fact) -> str:
    return f"{fact.topic}:{fact.partition}:{fact.offset}"


def _request_id(fact: Fact) -> str:
    """The request id as Tezzeret derives it (compiler/service/requests.py): a blueprint record is known by its
    message id, a request by its own id, either by its log coordinates when it has neither."""
    msg = fact.message
    if isinstance(msg, pb.BlueprintIR):
        return fact.message_id or _coordinates(fact)
    if isinstance(msg, (pb.CompilationRequest, pb.EmergencyCompile)):
        return msg.request_id or fact.message_id or _coordinates(fact)
    if isinstance(msg, (pb.CompilationResult, pb.CompilationComplete, pb.AuditRecord)):
        return msg.request_id
    return ""


def _compilation_key(fact: Fact) -> str | None:
    return _part(_request_id(fact)) or None


def _request_blueprint_id(fact: Fact) -> str:
    msg = fact.message
    if isinstance(msg, pb.BlueprintIR):
        return msg.blueprint_id or (fact.key or "")
    if isinstance(msg, (pb.CompilationRequest, pb.EmergencyCompile)):
        return msg.blueprint_id or msg.blueprint.blueprint_id
    if isinstance(msg, (pb.CompilationResult, pb.CompilationComplete, pb.CompiledKernelArtifact)):
        return msg.blueprint_id
    return ""


def _where(fact: Fact) -> State:
    return {"topic": fact.topic, "partition": fact.partition, "offset": fact.offset}


def _record_order(r: State) -> tuple[Any, ...]:
    # One request id may come from several topics (or, for its answers, several blueprints' partitions): the sub-
    # record kept is the latest by its own time, then by its place in the log, in whatever order the logs are read.
    log = r["log"]
    return (r["at_ms"], log["topic"], log["partition"], log["offset"])


def _request_record(fact: Fact) -> State:
    msg = fact.message
    record: State = {
        "kind": "BLUEPRINT",
        "blueprint_id": _part(_request_blueprint_id(fact)),
        "requestor": "",
        "strategy": "",
        "priority": 0,
        "device": "cpu",
        "at_ms": fact.timestamp_ms,
        "deadline_ms": 0,
        "reason": "",
        "log": _where(fact),
    }
    if isinstance(msg, pb.BlueprintIR):
        return {**record, "requestor": _part(msg.author), "at_ms": _at(msg.created_at, fact)}
    if isinstance(msg, pb.CompilationRequest):
        return {
            **record,
            "kind": "COMPILATION",
            "requestor": _part(msg.requestor),
            "strategy": _name(CompilationStrategy, msg.strategy),
            "priority": msg.priority,
            "device": _part(msg.device or "cpu"),
            "at_ms": _at(msg.requested_at, fact),
            "deadline_ms": msg.deadline_ms,
        }
    assert isinstance(msg, pb.EmergencyCompile)  # the caller checked the type
    return {
        **record,
        "kind": "EMERGENCY",
        "requestor": _part(msg.requestor),
        "strategy": "EMERGENCY",
        "device": _part(msg.device or "cpu"),
        "at_ms": _at(msg.requested_at, fact),
        "deadline_ms": msg.deadline_ms,
        "reason": _text(msg.reason),
    }


def _result_record(r: pb.CompilationResult, fact: Fact) -> State:
    return {
        "blueprint_id": _part(r.blueprint_id),
        "success": r.success,
        "strategy": _name(CompilationStrategy, r.strategy),
        "strategy_reason": _text(r.strategy_reason),
        "artifact_id": _part(r.artifact_id),
        "failure_reason": "" if r.success else _name(FailureReason, r.failure_reason),
        "error": _text(r.error),
        "queue_ms": r.queue_ms,
        "compile_ms": r.compile_ms,
        "total_ms": r.total_ms,
        "cache_level": _name(CacheLevel, r.cache_level) if r.success else "",
        "conservative_mode": r.conservative_mode,
        "worker_id": _part(r.worker_id),
        "requestor": _part(r.requestor),
        "at_ms": _at(r.completed_at, fact),
        "log": _where(fact),
    }


def _complete_record(c: pb.CompilationComplete, fact: Fact) -> State:
    return {
        "blueprint_id": _part(c.blueprint_id),
        "artifact_id": _part(c.artifact_id),
        "strategy": _name(CompilationStrategy, c.strategy),
        "artifact_sha256": _part(c.artifact_sha256),
        "store_uri": _text(c.store_uri),
        "compile_ms": c.compile_ms,
        "at_ms": _at(c.completed_at, fact),
        "log": _where(fact),
    }


def _audit_record(a: pb.AuditRecord, fact: Fact) -> State:
    return {
        "kind": _name(RequestKind, a.kind),
        "requestor": _part(a.requestor),
        "blueprint_id": _part(a.blueprint_id),
        "authorized": a.authorized,
        "success": a.success,
        "failure_reason": "" if a.success else _name(FailureReason, a.failure_reason),
        "dead_lettered": a.dead_lettered,
        "worker_id": _part(a.worker_id),
        "error": _text(a.error),
        "origin": {"topic": _part(a.origin_topic), "partition": a.origin_partition, "offset": a.origin_offset},
        "at_ms": _at(a.at, fact),
        "log": _where(fact),
    }


def _first(field: str, *records: State | None) -> str:
    """The first non-empty `field` of the records present, in the order given."""
    for record in records:
        if record is not None:
            value: str = record.get(field, "")
            if value:
                return value
    return ""


def _compilation_summary(s: State) -> State:
    """The request's status and headline fields, derived from its sub-records alone (so from the set of facts,
    not from the order in which the topics were read). The log cannot tell queued from compiling: a request that
    is known and unanswered is "pending"."""
    req, res, done, audit = s["request"], s["result"], s["complete"], s["audit"]
    if res is not None:
        status = "done" if res["success"] else "failed"
    elif audit is not None:
        status = "done" if audit["success"] else "failed"
    elif done is not None:
        status = "done"
    else:
        status = "pending"
    answer = res or audit
    return {
        **s,
        "status": status,
        "blueprint_id": _first("blueprint_id", req, res, audit, done),
        "kind": _first("kind", req, audit),
        "requestor": _first("requestor", req, res, audit),
        "strategy": _first("strategy", res, done, req),
        "failure_reason": _first("failure_reason", answer) if status == "failed" else "",
        "cache_level": _first("cache_level", res),
        "artifact_id": _first("artifact_id", res, done),
    }


def _compilation_rule(state: State | None, fact: Fact, key: str) -> State | None:
    msg = fact.message
    s = state or _base(
        request_id=key,
        status="pending",
        blueprint_id="",
        kind="",
        requestor="",
        strategy="",
        failure_reason="",
        cache_level="",
        artifact_id="",
        request=None,
        result=None,
        complete=None,
        audit=None,
        asked=0,
        answers=0,
    )
    if isinstance(msg, (pb.BlueprintIR, pb.CompilationRequest, pb.EmergencyCompile)):
        field, record = "request", _request_record(fact)
        s = {**s, "asked": s["asked"] + 1}
    elif isinstance(msg, pb.CompilationResult):
        field, record = "result", _result_record(msg, fact)
        s = {**s, "answers": s["answers"] + 1}
    elif isinstance(msg, pb.CompilationComplete):
        field, record = "complete", _complete_record(msg, fact)
    elif isinstance(msg, pb.AuditRecord):
        field, record = "audit", _audit_record(msg, fact)
    else:
        return None
    return _compilation_summary({**s, field: _later(s[field], record, _record_order)})


# ---------------------------------------------------------------- compilation per blueprint


def _blueprint_key(fact: Fact) -> str | None:
    return _part(_request_blueprint_id(fact)) or None


def _artifact_order(r: State) -> tuple[Any, ...]:
    return (r["created_at_ms"], r["artifact_id"])


def _blueprint_rule(state: State | None, fact: Fact, key: str) -> State | None:
    msg = fact.message
    s = state or _base(
        blueprint_id=key,
        name="",
        author="",
        design=None,
        submitted=0,
        requests=0,
        emergency=0,
        ok=0,
        failed=0,
        failures={},
        cache={},
        compiled=0,
        tiers={},
        artifacts={},
        last_failure=None,
    )
    if isinstance(msg, pb.BlueprintIR):
        design = {"name": _part(msg.name), "author": _part(msg.author), "at_ms": _at(msg.created_at, fact)}
        design = _later(s["design"], {**design, "log": _where(fact)}, _record_order)
        return {
            **s,
            "name": design["name"],
            "author": design["author"],
            "design": design,
            "submitted": s["submitted"] + 1,
        }
    if isinstance(msg, pb.CompilationRequest):
        return {**s, "requests": s["requests"] + 1}
    if isinstance(msg, pb.EmergencyCompile):
        return {**s, "emergency": s["emergency"] + 1}
    if isinstance(msg, pb.CompilationComplete):
        return {**s, "compiled": s["compiled"] + 1}
    if isinstance(msg, pb.CompiledKernelArtifact):
        tier = _name(CompilationStrategy, msg.strategy)
        record = {
            "artifact_id": _part(msg.artifact_id),
            "sha256": _part(msg.sha256),
            "store_uri": _text(msg.store_uri),
            "size_bytes": msg.size_bytes,
            "device": _part(msg.device),
            "device_name": _part(msg.device_name),
            "created_at_ms": _at(msg.created_at, fact),
        }
        # leyline.kernels is keyed by artifact id: a blueprint's artifacts sit on any partition, so the latest is
        # chosen by creation time (then id), never by arrival.
        best = _later(s["artifacts"].get(tier), record, _artifact_order)
        return {**s, "artifacts": {**s["artifacts"], tier: best}}
    if isinstance(msg, pb.CompilationResult):
        r = _result_record(msg, fact)
        if msg.success:
            fields = ("artifact_id", "cache_level", "queue_ms", "compile_ms", "total_ms", "at_ms", "log")
            latest = {**{k: r[k] for k in fields}, "request_id": _part(msg.request_id)}
            tier = r["strategy"]
            return {
                **s,
                "ok": s["ok"] + 1,
                "cache": _bump(s["cache"], r["cache_level"]),
                "tiers": {**s["tiers"], tier: _later(s["tiers"].get(tier), latest, _record_order)},
            }
        kept = ("strategy", "failure_reason", "error", "at_ms", "log")
        failure = {**{k: r[k] for k in kept}, "request_id": _part(msg.request_id)}
        return {
            **s,
            "failed": s["failed"] + 1,
            "failures": _bump(s["failures"], r["failure_reason"]),
            "last_failure": _later(s["last_failure"], failure, _record_order),
        }
    return None


# ---------------------------------------------------------------- latest metric values per telemetry source


def _metrics_key(fact: Fact) -> str | None:
    msg = fact.message
    if not isinstance(msg, pb.TelemetryPacket):
        return None
    return _part(msg.source_id or fact.key or "") or None


def _labels(p: pb.MetricPoint) -> dict[str, str]:
    return {_part(k): _part(v) for k, v in sorted(p.labels.items())[:MAX_LABELS]}


def _series_key(name: str, labels: Mapping[str, str]) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{text}}}" if text else name


# (point name, its labels as the map yields them) -> (series key, name kept, labels kept): a source sends the same
# few series in every packet, and sorting and cutting their labels cost more than the rest of a point. The labels
# dict is shared by every state that holds the series (states are never mutated). Emptied when full.
_SERIES_MEMO: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str, dict[str, str]]] = {}
_SERIES_MEMO_SIZE = 4096


def _series(p: pb.MetricPoint) -> tuple[str, str, dict[str, str]]:
    raw = p.name
    memo_key = (raw, tuple(p.labels.items()))
    found = _SERIES_MEMO.get(memo_key)
    if found is None:
        labels, name = _labels(p), _part(raw)
        found = (_series_key(name, labels), name, labels)
        if len(_SERIES_MEMO) >= _SERIES_MEMO_SIZE:
            _SERIES_MEMO.clear()
        _SERIES_MEMO[memo_key] = found
    return found


def _metrics_rule(state: State | None, fact: Fact, key: str) -> State | None:
    msg = fact.message
    if not isinstance(msg, pb.TelemetryPacket):
        return None
    packet_at = _at(msg.timestamp, fact)
    s = state or _base(
        source_id=key, subsystem="", level="", packets=0, events=0, last_packet_ms=0, series={}, dropped_series=0
    )
    series, dropped = s["series"], s["dropped_series"]
    updated: dict[str, State] = {}
    for p in msg.metrics:
        name, point_name, labels = _series(p)
        old = updated.get(name) or series.get(name)
        if old is None and len(series) + len(updated) >= MAX_SERIES:
            dropped += 1
            continue
        at = _ms(p.timestamp) or packet_at
        if old is not None and old["at_ms"] > at:
            continue  # a late copy of an older reading never overwrites a newer one
        point: State = {
            "name": point_name,
            "value": _num(p.value),
            "type": _name(MetricType, p.type),
            "unit": _part(p.unit),
            "labels": labels,
            "at_ms": at,
        }
        if p.type == pb.METRIC_HISTOGRAM:
            point["count"] = p.count
            point["sum"] = _num(p.sum)
            point["bounds"] = [_num(b) for b in p.bucket_bounds[:MAX_BUCKETS]]
            point["buckets"] = list(p.bucket_counts[:MAX_BUCKETS])
        updated[name] = point
    return {
        **s,
        "subsystem": _part(msg.source_subsystem),
        "level": _name(TelemetryLevel, msg.level),
        "packets": s["packets"] + 1,
        "events": s["events"] + len(msg.events),
        "last_packet_ms": max(s["last_packet_ms"], packet_at),
        "series": {**series, **updated} if updated else series,
        "dropped_series": dropped,
    }


# ---------------------------------------------------------------- dead letters per origin topic


def _deadletter_key(fact: Fact) -> str | None:
    msg = fact.message
    if not isinstance(msg, pb.DeadLetter):
        return None
    return _part(msg.origin_topic) or "unknown"


def _deadletter_rule(state: State | None, fact: Fact, key: str) -> State | None:
    msg = fact.message
    if not isinstance(msg, pb.DeadLetter):
        return None
    s = state or _base(origin_topic=key, count=0, error_types={}, partitions={}, last=None)
    partition, error_type = str(msg.origin_partition), _part(msg.error_type)
    last = {
        "error_type": error_type,
        "error": _text(msg.error),
        "partition": msg.origin_partition,
        "offset": msg.origin_offset,
        "origin_timestamp_ms": msg.origin_timestamp_ms,
        "origin_key": _part(msg.origin_key.decode("utf-8", errors="replace")),
        "consumer_group": _part(msg.consumer_group),
        "failed_at_ms": _at(msg.failed_at, fact),
        "value_bytes": len(msg.origin_value),
        "value_truncated": msg.origin_value_truncated,
    }
    partitions = s["partitions"]
    if partition in partitions or len(partitions) < MAX_SLOTS:
        partitions = {**partitions, partition: max(partitions.get(partition, -1), msg.origin_offset)}
    return {
        **s,
        "count": s["count"] + 1,
        "error_types": _bump(s["error_types"], error_type, MAX_ERROR_TYPES),
        "partitions": partitions,
        "last": last,
    }


# ---------------------------------------------------------------- the registry and the fold

PROJECTIONS: tuple[Projection, ...] = (
    Projection("breakers", (SAFETY.name,), _breaker_key, _breaker_rule),
    Projection("conservative", (SAFETY.name,), _conservative_key, _conservative_rule),
    Projection("pauses", (SAFETY.name,), _pause_key, _pause_rule),
    Projection("seeds", (SAFETY.name,), _seed_key, _seed_rule),
    Projection(
        "compilations",
        (*_REQUEST_TOPICS, COMPILATION_RESULTS.name, AUDIT.name),
        _compilation_key,
        _compilation_rule,
    ),
    Projection(
        "blueprints",
        (*_REQUEST_TOPICS, COMPILATION_RESULTS.name, KERNELS.name),
        _blueprint_key,
        _blueprint_rule,
    ),
    Projection("metrics", (TELEMETRY.name,), _metrics_key, _metrics_rule),
    Projection("deadletters", (DEADLETTER.name,), _deadletter_key, _deadletter_rule),
)
PROJECTIONS_BY_NAME: dict[str, Projection] = {p.name: p for p in PROJECTIONS}
_BY_TOPIC: dict[str, tuple[Projection, ...]] = {
    topic: tuple(p for p in PROJECTIONS if topic in p.topics) for topic in {t for p in PROJECTIONS for t in p.topics}
}


def routes(fact: Fact, projections: Iterable[Projection] | None = None) -> list[tuple[Projection, str]]:
    """Every (projection, entity key) the fact concerns (all registered projections unless given)."""
    candidates = _BY_TOPIC.get(fact.topic, ()) if projections is None else projections
    out = []
    for p in candidates:
        if fact.topic in p.topics:
            key = p.key(fact)
            if key is not None:
                out.append((p, key))
    return out


def fold(tables: Tables, fact: Fact, projections: Iterable[Projection] | None = None) -> list[tuple[str, str]]:
    """Apply `fact` to every table it concerns. `tables` (name -> key -> state) is the caller's accumulator and is
    updated in place (each entity's new state is a new object; the reducers stay pure). Returns the (table, key)
    pairs whose state changed, for a host that writes them back to its store."""
    changed = []
    for p, key in routes(fact, projections):
        table = tables.setdefault(p.name, {})
        old = table.get(key)
        new = p.apply_keyed(old, fact, key)
        if new is not old and new is not None:
            table[key] = new
            changed.append((p.name, key))
    return changed


def fold_all(facts: Iterable[Fact], projections: Iterable[Projection] | None = None) -> Tables:
    """The tables a sequence of facts folds into, from nothing (a replay, a test)."""
    chosen = tuple(PROJECTIONS if projections is None else projections)
    tables: Tables = {p.name: {} for p in chosen}
    for fact in facts:
        fold(tables, fact, chosen)
    return tables
