"""Replay against a real broker of its own: a known sequence of safety events (with duplicates), compilation
requests and results, telemetry, a dead letter, a garbage record and two transactions (one aborted) is produced
once; replays of it (to the end, to a time, to an offset) must give the digests of folding the same facts in
memory, and a duplicated event must change nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer
from google.protobuf.message import Message as ProtoMessage
from typer.testing import CliRunner

from esper.projections import digest, reducers
from esper.projections.cli import app as projections_app
from esper.projections.facts import Fact
from esper.projections.replay import ReplayResult, replay
from esper.projections.store import MemoryTables, RocksTables
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import Envelope, encode, new_envelope
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import COMPILATION_REQUESTS, COMPILATION_RESULTS, DEADLETTER, SAFETY, TELEMETRY
from tests.conftest import own_broker

pytestmark = pytest.mark.broker


@dataclass
class Log:
    """What was produced, as the facts a replay must see, in production order."""

    bootstrap: str
    facts: list[Fact] = field(default_factory=list)
    marks: dict[str, Fact] = field(default_factory=dict)  # named facts the tests point at
    garbage: int = 0
    kasmina: str = ""  # the Kasmina instance whose breaker the events move

    def expected(self, keep: Callable[[Fact], bool] = lambda f: True, reverse: bool = False) -> dict[str, str]:
        """The digests of folding (in memory) the produced facts that `keep` accepts, in production order or, with
        `reverse`, partition by partition from the last partition to the first (each still in offset order)."""
        chosen = [f for f in self.facts if keep(f)]
        if reverse:
            chosen.sort(key=lambda f: ((f.topic, f.partition), -f.offset), reverse=True)
        tables = MemoryTables()
        views = {p.name: tables.table(p.name) for p in reducers.PROJECTIONS}
        for fact in chosen:
            reducers.fold(views, fact, reducers.PROJECTIONS)
        return digest.digests(views)


def _send(log: Log, producer: LeylineProducer, topic: str, message: ProtoMessage, key: str, mark: str = "") -> Fact:
    envelope = producer.envelope_for(message)
    msg = producer.send_sync(topic, message, key, envelope=envelope)
    fact = Fact(topic, msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1], key, envelope.message_id, message)
    log.facts.append(fact)
    if mark:
        log.marks[mark] = fact
    return fact


def _breaker(to: pb.CircuitState, source: str, subsystem: str = "kasmina") -> pb.SafetyEvent:
    stats = pb.BreakerStats(name="graft", state=to, total_calls=10, total_failures=3)
    detail = pb.BreakerTransition(stats=stats, from_state=pb.CIRCUIT_CLOSED, to_state=to, reason="failures")
    return safety_event(pb.TELEMETRY_WARN, f"breaker graft -> {to}", detail, source_id=source, subsystem=subsystem)


@pytest.fixture(scope="module")
def produced() -> Iterator[Log]:
    with own_broker("replay-broker", 150) as broker:
        yield _produce(broker)


def _produce(broker: LocalBroker) -> Log:
    log = Log(broker.bootstrap_servers)
    producer = LeylineProducer(log.bootstrap, producer_id="test-replay")
    run = uuid.uuid4().hex[:8]
    source = f"k-{run}"
    log.kasmina = source
    key = f"kasmina/{source}"  # what a Kasmina client keys its safety events by
    try:
        opened = _send(log, producer, SAFETY.name, _breaker(pb.CIRCUIT_OPEN, source), key, "opened")
        packet = pb.TelemetryPacket(packet_id=uuid.uuid4().hex, source_subsystem="kasmina", source_id=source)
        packet.metrics.add(name="step_ms", value=12.5, type=pb.METRIC_GAUGE)
        _send(log, producer, TELEMETRY.name, packet, source)
        blueprint = f"bp-{run}"
        request = pb.CompilationRequest(request_id=f"r-{run}", blueprint_id=blueprint, requestor="test")
        _send(log, producer, COMPILATION_REQUESTS.name, request, blueprint)
        result = pb.CompilationResult(
            request_id=f"r-{run}", blueprint_id=blueprint, success=True, artifact_id="a1", compile_ms=40
        )
        _send(log, producer, COMPILATION_RESULTS.name, result, blueprint)
        # Tezzeret keys its safety events by subsystem and kind: one breaker's failures and transitions may sit
        # in two partitions.
        failure = pb.BreakerFailure(stats=pb.BreakerStats(name="compile", state=pb.CIRCUIT_CLOSED), error_type="T")
        event = safety_event(pb.TELEMETRY_WARN, "compile failed", failure, source_id="w1", subsystem="tezzeret")
        _send(log, producer, SAFETY.name, event, "tezzeret/breaker_failure")
        event = _breaker(pb.CIRCUIT_OPEN, "w1", "tezzeret")
        event.breaker_transition.stats.name = "compile"
        _send(log, producer, SAFETY.name, event, "tezzeret/breaker_transition")
        time.sleep(0.05)  # a moment strictly between the two halves
        log.marks["before_half_open"] = log.facts[-1]
        half = _send(log, producer, SAFETY.name, _breaker(pb.CIRCUIT_HALF_OPEN, source), key, "half_open")
        pause = pb.PauseEntered(instance_id=source, slot_id="s0", reason="test", quota_ms=500)
        _send(log, producer, SAFETY.name, safety_event(pb.TELEMETRY_INFO, "paused", pause, source_id=source), key)
        letter = pb.DeadLetter(origin_topic=SAFETY.name, origin_partition=0, origin_offset=7, error_type="X")
        _send(log, producer, DEADLETTER.name, letter, SAFETY.name)
        # The outbox resends both breaker events, byte for byte under new message ids, in the same partition after
        # the later one: folding them must change nothing (the state stays HALF_OPEN).
        _send(log, producer, SAFETY.name, half.message, key, "dup")
        _send(log, producer, SAFETY.name, opened.message, key, "dup_last")
    finally:
        producer.close()
    raw = Producer({"bootstrap.servers": log.bootstrap})
    raw.produce(SAFETY.name, value=b"\xff not a safety event", key=b"garbage")
    assert raw.flush(10) == 0
    log.garbage = 1
    _transactions(log, key, source)
    return log


def _transactions(log: Log, key: str, source: str) -> None:
    """A committed transaction (a pause exit: folded) and an aborted one (the breaker closing: never folded), last
    in their partition, which therefore ends in transaction markers rather than records."""
    txn = Producer({"bootstrap.servers": log.bootstrap, "transactional.id": f"test-replay-{uuid.uuid4().hex[:8]}"})
    txn.init_transactions(30)
    delivered: list[tuple[Message, Envelope, pb.SafetyEvent]] = []

    def send(event: pb.SafetyEvent) -> None:
        envelope = new_envelope(event, producer="test-replay")
        value, headers = encode(event, envelope)
        txn.produce(
            SAFETY.name,
            value=value,
            key=key,
            headers=headers,
            on_delivery=lambda e, m: delivered.append((m, envelope, event)),
        )

    txn.begin_transaction()
    send(safety_event(pb.TELEMETRY_INFO, "resumed", pb.PauseExited(instance_id=source, slot_id="s0"), source_id=source))
    txn.commit_transaction(30)
    msg, envelope, event = delivered[0]
    assert msg.error() is None
    log.facts.append(
        Fact(SAFETY.name, msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1], key, envelope.message_id, event)
    )
    txn.begin_transaction()
    send(_breaker(pb.CIRCUIT_CLOSED, source))
    assert txn.flush(10) == 0
    txn.abort_transaction(30)


def _replay(log: Log, tmp_path: Path, **limits: object) -> ReplayResult:
    with RocksTables.create(tmp_path / f"store-{uuid.uuid4().hex[:6]}") as store:
        return replay(log.bootstrap, store, **limits)  # type: ignore[arg-type]


def test_a_full_replay_equals_folding_the_same_facts_in_memory(produced: Log, tmp_path: Path) -> None:
    result = _replay(produced, tmp_path)
    assert result.digests == produced.expected()
    # The replay interleaves partitions as fetches come: the reducers must not care (each partition in log order).
    assert produced.expected(reverse=True) == result.digests
    assert set(result.digests) == {p.name for p in reducers.PROJECTIONS}
    assert result.read == len(produced.facts) + produced.garbage
    assert result.folded == len(produced.facts)
    assert result.skipped == produced.garbage and sum(result.skip_reasons.values()) == produced.garbage
    # Replaying again gives the same digests: nothing of the first replay is left in the log or the broker.
    assert _replay(produced, tmp_path).digests == result.digests


def test_until_a_time_between_two_events_gives_the_earlier_state(produced: Log, tmp_path: Path) -> None:
    earlier = produced.marks["before_half_open"].timestamp_ms
    later = produced.marks["half_open"].timestamp_ms
    assert earlier < later
    moment = (earlier + later) // 2
    result = _replay(produced, tmp_path, until_time_ms=moment)
    assert result.digests == produced.expected(lambda f: f.timestamp_ms <= moment)
    assert result.digests != produced.expected()
    assert result.skipped == 0  # the garbage came after the moment
    # The record at exactly the moment is folded (inclusive).
    first = produced.marks["opened"].timestamp_ms
    exact = _replay(produced, tmp_path, until_time_ms=first)
    assert exact.digests == produced.expected(lambda f: f.timestamp_ms <= first)
    assert exact.digests != produced.expected(lambda f: False)


def test_until_an_offset_stops_that_partition_only(produced: Log, tmp_path: Path) -> None:
    opened = produced.marks["opened"]
    where = (opened.topic, opened.partition)
    result = _replay(produced, tmp_path, until_offset={where: opened.offset})
    assert result.digests == produced.expected(lambda f: (f.topic, f.partition) != where or f.offset <= opened.offset)
    assert result.stopped_at[where] == opened.offset + 1


def test_a_duplicated_event_changes_nothing(produced: Log, tmp_path: Path) -> None:
    dup, last = produced.marks["dup"], produced.marks["dup_last"]
    where = (dup.topic, dup.partition)
    without = _replay(produced, tmp_path, until_offset={where: dup.offset - 1})
    with_duplicates = _replay(produced, tmp_path, until_offset={where: last.offset})
    assert without.digests == with_duplicates.digests
    assert with_duplicates.folded == without.folded + 2  # both copies were read and folded, to no effect


def test_the_cli_prints_the_replay_digests_and_the_status(
    produced: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPER_BOOTSTRAP_SERVERS", produced.bootstrap)
    monkeypatch.setenv("ESPER_PROJECTIONS_URL", "http://127.0.0.1:9")  # no live app answers: status replays
    runner = CliRunner()
    store = tmp_path / "kept"
    outcome = runner.invoke(projections_app, ["replay", "--json", "--store", str(store)])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output)
    assert summary["digests"] == produced.expected()
    assert summary["counts"]["skipped"] == produced.garbage
    with RocksTables.open(store) as kept:
        assert kept.names() == sorted(summary["digests"])
    # --until with an ISO time gives the earlier state, as the library does.
    earlier = produced.marks["before_half_open"].timestamp_ms
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(earlier / 1000)) + f".{earlier % 1000:03d}Z"
    outcome = runner.invoke(projections_app, ["replay", "--json", "--until", iso])
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.output)["digests"] == produced.expected(lambda f: f.timestamp_ms <= earlier)
    outcome = runner.invoke(projections_app, ["replay", "--until", "nonsense"])
    assert outcome.exit_code == 1 and "none of" in outcome.output
    outcome = runner.invoke(projections_app, ["status"])
    assert outcome.exit_code == 0, outcome.output
    for title in ("Breakers", "Pauses", "Seeds", "Compile queue", "Recent dead letters"):
        assert title in outcome.output
    outcome = runner.invoke(projections_app, ["status", "--json", "--projection", "breakers"])
    assert outcome.exit_code == 0, outcome.output
    breakers = json.loads(outcome.output)
    assert list(breakers) == ["breakers"]
    kasmina = breakers["breakers"][f"kasmina/{produced.kasmina}/graft"]
    # The resent OPEN changed nothing, and the aborted CLOSED was never read.
    assert kasmina["state"] == "HALF_OPEN" and kasmina["transitions"] == 2
