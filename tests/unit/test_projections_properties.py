"""Properties every projection keeps, over generated logs: a repeated event changes nothing, the interleaving of
different partitions changes nothing, every state is plain JSON, digests ignore insertion order, and hostile
messages (any field values at all) neither raise nor grow a state past its bounds."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.projections.digest import canonical_json, digests, table_digest
from esper.projections.facts import MAX_ID_CHARS, Fact, event_id
from esper.projections.reducers import SEEN_WINDOW, TEXT_LIMIT, Tables, fold, fold_all
from esper.proto import leyline_pb2 as pb
from esper.streams.topics import (
    ALL_TOPICS,
    AUDIT,
    BLUEPRINTS,
    COMPILATION_EMERGENCY,
    COMPILATION_REQUESTS,
    COMPILATION_RESULTS,
    DEADLETTER,
    KERNELS,
    TELEMETRY,
)
from tests.projection_facts import Log

# ---------------------------------------------------------------- a generated log, keyed as the producers key

SOURCES = ("k1", "k2")
SLOTS = ("a", "b")
REQUESTS = ("r1", "r2")  # few ids, so that one id is often seen on several topics and partitions
BLUEPRINT_IDS = ("bp1", "bp2")  # on partitions 0 and 1 of the blueprint-keyed topics


def _breaker(d: Any) -> Callable[[Log], object]:
    subsystem, source = d(st.sampled_from(["kasmina", "tezzeret"])), d(st.sampled_from(SOURCES))
    name, at = d(st.sampled_from(["compile", "store"])), d(st.integers(1, 50))
    s = pb.BreakerStats(
        name=name,
        state=d(st.integers(1, 3)),
        state_transition_count=d(st.integers(0, 5)),
        total_calls=d(st.integers(0, 5)),
        total_failures=d(st.integers(0, 5)),
    )
    opened = d(st.booleans())
    if opened:
        detail: Message = pb.BreakerTransition(stats=s, from_state=d(st.integers(1, 3)), to_state=s.state)
    else:
        detail = pb.BreakerFailure(stats=s, error_type=d(st.sampled_from(["E", "F"])))
    # Tezzeret keys failures and transitions apart: put them on different partitions.
    partition = int(opened) if subsystem == "tezzeret" else None
    return lambda log: log.safety(detail, subsystem=subsystem, source_id=source, at_ms=at, partition=partition)


def _kasmina(d: Any) -> Callable[[Log], object]:
    source, slot = d(st.sampled_from(SOURCES)), d(st.sampled_from(SLOTS))
    detail = d(
        st.sampled_from(
            [
                pb.PauseEntered(instance_id=source, slot_id=slot, quota_ms=5),
                pb.PauseExited(instance_id=source, slot_id=slot, duration_ms=3, cause="command"),
                pb.QuotaDecision(outcome=pb.QUOTA_PARTIAL, requested=9, granted=5, remaining=4, max_quota=100),
                pb.QuotaReset(max_quota=100),
                pb.SeedTransition(
                    instance_id=source, slot_id=slot, from_stage=pb.SEED_DORMANT, to_stage=pb.SEED_GERMINATED, gate="G0"
                ),
                pb.SeedTransition(
                    instance_id=source,
                    slot_id=slot,
                    from_stage=pb.SEED_GERMINATED,
                    to_stage=pb.SEED_TRAINING,
                    reason="refused: G1",
                ),
                pb.TimingViolation(operation="step"),
            ]
        )
    )
    return lambda log: log.safety(detail, source_id=source)


def _conservative(d: Any) -> Callable[[Log], object]:
    detail = pb.ConservativeModeChanged(service="tezzeret", active=d(st.booleans()), reasons=[d(st.text(max_size=3))])
    source = d(st.sampled_from(SOURCES))
    return lambda log: log.safety(detail, subsystem="tezzeret", source_id=source)


def _compilation(d: Any) -> Callable[[Log], object]:
    rid, bp = d(st.sampled_from(REQUESTS)), d(st.sampled_from(BLUEPRINT_IDS))
    strategy = d(st.sampled_from([pb.STRATEGY_FAST, pb.STRATEGY_STANDARD]))
    success = d(st.booleans())
    created = pb.CompiledKernelArtifact(artifact_id=f"a{d(st.integers(0, 3))}", blueprint_id=bp, strategy=strategy)
    created.created_at.FromMilliseconds(d(st.integers(1, 9)))
    choices: list[tuple[str, Message, str]] = [
        (COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id=rid, blueprint_id=bp, strategy=strategy), bp),
        (COMPILATION_EMERGENCY.name, pb.EmergencyCompile(request_id=rid, blueprint_id=bp), bp),
        (BLUEPRINTS.name, pb.BlueprintIR(blueprint_id=bp, name="n"), bp),
        (
            COMPILATION_RESULTS.name,
            pb.CompilationResult(
                request_id=rid,
                blueprint_id=bp,
                success=success,
                strategy=strategy,
                artifact_id="a1" if success else "",
                failure_reason=pb.FAILURE_REASON_UNSPECIFIED if success else pb.FAILURE_TIMEOUT,
                cache_level=pb.CACHE_L2 if success else pb.CACHE_LEVEL_UNSPECIFIED,
            ),
            bp,
        ),
        (COMPILATION_RESULTS.name, pb.CompilationComplete(request_id=rid, blueprint_id=bp, artifact_id="a1"), bp),
        (AUDIT.name, pb.AuditRecord(request_id=rid, blueprint_id=bp, success=success), rid),
        (KERNELS.name, created, created.artifact_id),
    ]
    topic, message, key = d(st.sampled_from(choices))
    return lambda log: log.append(topic, message, key)


def _telemetry(d: Any) -> Callable[[Log], object]:
    source = d(st.sampled_from(SOURCES))
    points = []
    for _ in range(d(st.integers(0, 3))):
        p = pb.MetricPoint(name=d(st.sampled_from(["loss", "step_ms"])), value=d(st.floats(-5, 5)))
        p.timestamp.FromMilliseconds(d(st.integers(1, 30)))
        points.append(p)

    def add(log: Log) -> None:
        log.append(
            TELEMETRY.name, pb.TelemetryPacket(packet_id=log.next_id(), source_id=source, metrics=points), source
        )

    return add


def _deadletter(d: Any) -> Callable[[Log], object]:
    origin = d(st.sampled_from(["leyline.compilation.requests", "leyline.control.pause"]))
    letter = pb.DeadLetter(origin_topic=origin, origin_offset=d(st.integers(0, 9)), error_type=d(st.sampled_from("XY")))
    return lambda log: log.append(DEADLETTER.name, letter, origin)


@st.composite
def logs(draw: Any) -> list[Fact]:
    log = Log()
    makers = [_breaker, _kasmina, _conservative, _compilation, _compilation, _compilation, _telemetry, _deadletter]
    for _ in range(draw(st.integers(1, 30))):
        draw(st.sampled_from(makers))(draw)(log)
    return log.facts


def _interleave(facts: list[Fact], rng: random.Random) -> list[Fact]:
    """Another reading of the same log: each partition's records in their order, partitions merged at random."""
    streams: dict[tuple[str, int], list[Fact]] = {}
    for f in facts:
        streams.setdefault((f.topic, f.partition), []).append(f)
    queues = [list(reversed(s)) for s in streams.values()]
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop())
        if not q:
            queues.remove(q)
    return out


def _json_roundtrip(tables: Tables) -> None:
    assert json.loads(json.dumps(tables)) == tables
    assert json.loads(canonical_json(tables)) == tables


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(logs(), st.data())
def test_repeated_events_inserted_anywhere_later_fold_to_the_same_state(facts: list[Fact], data: Any) -> None:
    base = fold_all(facts)
    with_copies = list(facts)
    for _ in range(data.draw(st.integers(1, 8))):
        original = data.draw(st.integers(0, len(facts) - 1))
        at = data.draw(st.integers(with_copies.index(facts[original]) + 1, len(with_copies)))
        copy = dataclasses.replace(facts[original], offset=facts[original].offset + 1_000_000)
        with_copies.insert(at, copy)
    assert len(facts) < SEEN_WINDOW  # the copies are within the window, where a repeat is recognised
    assert fold_all(with_copies) == base
    assert digests(fold_all(with_copies)) == digests(base)


@settings(FAST, max_examples=200)
@given(logs(), st.randoms(use_true_random=False))
def test_any_interleaving_of_partitions_folds_to_the_same_digests(facts: list[Fact], rng: random.Random) -> None:
    base = fold_all(facts)
    other = fold_all(_interleave(facts, rng))
    assert digests(other) == digests(base)
    assert other == base


@FAST
@given(logs())
def test_every_state_is_plain_json_and_fold_reports_exactly_the_changes(facts: list[Fact]) -> None:
    tables: Tables = {}
    for f in facts:
        before = json.dumps(tables, sort_keys=True)
        snapshot = json.loads(before)
        changed = fold(tables, f)
        for name, key in changed:
            assert snapshot.get(name, {}).get(key) != tables[name][key]
        for name, table in tables.items():
            for key, state in table.items():
                if (name, key) not in changed:
                    assert snapshot.get(name, {}).get(key) == state
    _json_roundtrip(tables)


@FAST
@given(logs(), st.randoms(use_true_random=False))
def test_digest_ignores_insertion_order_and_sees_every_change(facts: list[Fact], rng: random.Random) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        return [shuffled(v) for v in value] if isinstance(value, list) else value

    for name, table in fold_all(facts).items():
        assert table_digest(shuffled(table)) == table_digest(table), name
        if table:
            key = rng.choice(sorted(table))
            assert table_digest({**table, key: {**table[key], "extra": 1}}) != table_digest(table)


def test_digest_values() -> None:
    assert table_digest({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256("{}")
    assert table_digest({"b": {"x": 1}, "a": [1.5, "é"]}) == table_digest({"a": [1.5, "é"], "b": {"x": 1}})
    assert table_digest({"a": 1}) != table_digest({"a": 1.5})
    assert list(digests({"z": {}, "a": {}})) == ["a", "z"]


# ---------------------------------------------------------------- hostile messages: any value in any field

_TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.builds(
    lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(0, 700)
)  # short texts, and long ones (cheap to generate) past every bound
_INTS = {
    FieldDescriptor.CPPTYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: st.integers(0, 2**64 - 1),
}


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if f.cpp_type in _INTS:
        return _INTS[f.cpp_type]
    if f.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return _INTS[FieldDescriptor.CPPTYPE_INT32]  # proto3 enums are open
    if f.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if f.cpp_type == f.CPPTYPE_DOUBLE else 32)
    if f.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    return _TEXT


@st.composite
def hostile(draw: Any, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor`'s type with any subset of its fields set to any values (nested two deep)."""
    msg = message_factory.GetMessageClass(descriptor)()
    for f in descriptor.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            target.update(draw(st.dictionaries(_TEXT, _TEXT, max_size=40 if depth else 3)))
        elif f.message_type is not None:
            if depth >= 2:
                continue
            parts = [draw(hostile(f.message_type, depth + 1)) for _ in range(draw(st.integers(1, 3)))]
            if f.is_repeated:
                target.extend(parts)
            else:
                target.CopyFrom(parts[0])
        elif f.is_repeated:
            target.extend(draw(st.lists(_scalar(f), max_size=80)))
        else:
            setattr(msg, f.name, draw(_scalar(f)))
    return msg


@st.composite
def hostile_facts(draw: Any) -> Fact:
    spec = draw(st.sampled_from(ALL_TOPICS))
    cls = draw(st.sampled_from(spec.message_types))
    message = draw(hostile(cls.DESCRIPTOR))
    if isinstance(message, pb.SafetyEvent) and draw(st.booleans()):  # a detail of each kind, full of anything
        field = draw(st.sampled_from(tuple(pb.SafetyEvent.DESCRIPTOR.oneofs_by_name["detail"].fields)))
        getattr(message, field.name).CopyFrom(draw(hostile(field.message_type, 1)))
    return Fact(
        spec.name,
        draw(st.integers(0, 2)),
        draw(st.integers(0, 2**40)),
        draw(st.integers(-1, 2**45)),
        draw(st.none() | _TEXT),
        draw(_TEXT),
        message,
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(hostile_facts(), min_size=1, max_size=12))
def test_hostile_messages_never_raise_and_stay_bounded(facts: list[Fact]) -> None:
    tables = fold_all(facts)
    _json_roundtrip(tables)
    for table in tables.values():
        for key, state in table.items():
            assert len(key) <= 3 * 256 + 2  # at most three key parts of 256 characters and their separators
            assert all(len(s) <= TEXT_LIMIT for s in _strings(state))
            assert all(len(ids) <= SEEN_WINDOW for ids in state["seen"].values())
    assert all(len(event_id(f)) <= max(MAX_ID_CHARS, len("sha256:") + 32) for f in facts)
    assert fold_all(facts + facts) == tables  # and a repeat of each changes nothing
