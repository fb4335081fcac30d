"""The live projections app (`esper projections run`, faust-streaming) against a real broker of its own: its tables'
digests equal a replay's of the same topics, with a resent event, a garbage record and an aborted transaction in
the log; after a kill -9 and a restart with an empty data directory (recovered from the changelogs) and more
events, they still do. Its JSON views answer per table and per entity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from google.protobuf.message import Message as ProtoMessage

from esper.projections import reducers
from esper.projections.app import APP_ID, APP_SIZING, MAX_FOLD_LAG, ROUTED_PARTITIONS
from esper.projections.replay import replay
from esper.projections.store import MemoryTables
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import encode, new_envelope
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import COMPILATION_REQUESTS, COMPILATION_RESULTS, DEADLETTER, SAFETY, TELEMETRY
from tests.conftest import free_port, own_broker
from tests.polling import wait_for

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
ESPER = str(Path(sys.executable).with_name("esper"))


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with own_broker("projections-app-broker", 160) as b:
        yield b


class Worker:
    """`esper projections run` in a subprocess of its own, with its output in a file."""

    def __init__(self, bootstrap: str, data_dir: Path, log: Path, worker_id: str = "t", app_id: str = APP_ID) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "ESPER_BOOTSTRAP_SERVERS": bootstrap}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    ESPER,
                    "projections",
                    "run",
                    "--web-port",
                    str(self.port),
                    "--data-dir",
                    str(data_dir),
                    "--worker-id",
                    worker_id,
                    "--app-id",
                    app_id,
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def digests(self) -> dict[str, str] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the app exited ({self.proc.returncode}):\n{self.tail()}")
        try:
            return dict(self.get("/projections/digests")[1]["digests"])
        except (OSError, ValueError):
            return None  # not listening yet

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _replayed(bootstrap: str) -> dict[str, str]:
    return replay(bootstrap, MemoryTables()).digests


def _converges(worker: Worker, bootstrap: str, timeout_s: float = 60.0) -> dict[str, str]:
    expected = _replayed(bootstrap)
    seen: list[dict[str, str] | None] = []

    def equal() -> bool:
        seen.append(worker.digests())
        return seen[-1] == expected

    assert wait_for(equal, timeout_s, 0.5), f"live {seen[-1]} != replay {expected}\n{worker.tail()}"
    return expected


def _breaker(to: pb.CircuitState, source: str, name: str = "graft", subsystem: str = "kasmina") -> pb.SafetyEvent:
    stats = pb.BreakerStats(name=name, state=to, total_calls=10, total_failures=3)
    detail = pb.BreakerTransition(stats=stats, from_state=pb.CIRCUIT_CLOSED, to_state=to, reason="failures")
    return safety_event(pb.TELEMETRY_WARN, f"breaker {name} -> {to}", detail, source_id=source, subsystem=subsystem)


@dataclass
class Batch:
    """What `_produce` wrote: the offset of the last good record per partition, and how many good records."""

    last: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0


def _committed_past(bootstrap: str, batch: Batch) -> bool:
    """Whether the app's group committed every source partition past the batch's last record."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": APP_ID})
    try:
        committed = consumer.committed([TopicPartition(t, p) for t, p in batch.last], timeout=10)
    finally:
        consumer.close()
    return all(tp.offset > batch.last[(tp.topic, tp.partition)] for tp in committed)


def _produce(bootstrap: str, run: str, source: str) -> Batch:
    """Safety events (a Kasmina breaker, resent; a Tezzeret breaker fed from two keys; a pause; a seed), a request
    and its result, telemetry, a dead letter, a garbage record, and an aborted transaction. Returns the offset of
    the last good record per partition."""
    producer = LeylineProducer(bootstrap, producer_id=f"test-app-{run}")
    key = f"kasmina/{source}"
    batch = Batch()

    def send(topic: str, message: ProtoMessage, record_key: str) -> None:
        msg = producer.send_sync(topic, message, record_key, envelope=producer.envelope_for(message))
        batch.last[(topic, msg.partition() or 0)] = msg.offset() or 0
        batch.records += 1

    try:
        opened = _breaker(pb.CIRCUIT_OPEN, source)
        send(SAFETY.name, opened, key)
        send(SAFETY.name, _breaker(pb.CIRCUIT_HALF_OPEN, source), key)
        send(SAFETY.name, opened, key)  # the outbox resends it (a new message id, the same event id)
        failure = pb.BreakerFailure(stats=pb.BreakerStats(name="compile", state=pb.CIRCUIT_CLOSED), error_type="T")
        send(SAFETY.name, safety_event(pb.TELEMETRY_WARN, "f", failure, source_id=run, subsystem="tezzeret"), "t/f")
        send(SAFETY.name, _breaker(pb.CIRCUIT_OPEN, run, "compile", "tezzeret"), "t/t")
        pause = pb.PauseEntered(instance_id=source, slot_id="s0", reason="test", quota_ms=500)
        send(SAFETY.name, safety_event(pb.TELEMETRY_INFO, "paused", pause, source_id=source), key)
        seed = pb.SeedTransition(
            instance_id=source, slot_id="s0", from_stage=pb.SEED_DORMANT, to_stage=pb.SEED_GERMINATED, gate="G1"
        )
        send(SAFETY.name, safety_event(pb.TELEMETRY_INFO, "seed", seed, source_id=source), key)
        packet = pb.TelemetryPacket(packet_id=uuid.uuid4().hex, source_subsystem="kasmina", source_id=source)
        packet.metrics.add(name="step_ms", value=12.5, type=pb.METRIC_GAUGE)
        send(TELEMETRY.name, packet, source)
        blueprint = f"bp-{run}"
        send(COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id=f"r-{run}", blueprint_id=blueprint), blueprint)
        result = pb.CompilationResult(request_id=f"r-{run}", blueprint_id=blueprint, success=True, artifact_id="a1")
        send(COMPILATION_RESULTS.name, result, blueprint)
        letter = pb.DeadLetter(origin_topic=SAFETY.name, origin_partition=0, origin_offset=7, error_type="X")
        send(DEADLETTER.name, letter, SAFETY.name)
    finally:
        producer.close()
    raw = Producer({"bootstrap.servers": bootstrap})
    raw.produce(SAFETY.name, value=b"\xff not a safety event", key=b"garbage")
    assert raw.flush(10) == 0
    # An aborted transaction is never folded, live (read_committed) as in a replay.
    txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"test-app-{run}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    event = _breaker(pb.CIRCUIT_CLOSED, source)
    value, headers = encode(event, new_envelope(event, producer="test-app"))
    txn.produce(SAFETY.name, value=value, key=key, headers=headers)
    assert txn.flush(10) == 0
    txn.abort_transaction(30)
    return batch


def test_live_digests_equal_a_replay_before_and_after_a_kill_and_an_empty_data_dir(
    broker: LocalBroker, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    source = f"k-{run}"
    last = _produce(bootstrap, run, source)
    first = Worker(bootstrap, tmp_path / "data-1", tmp_path / "app-1.log")
    try:
        before = _converges(first, bootstrap)
        status, breaker = first.get("/projections/breakers/" + urllib.parse.quote(f"kasmina/{source}/graft"))
        assert status == 200 and breaker["state"] == "HALF_OPEN" and breaker["transitions"] == 2, breaker
        assert first.get("/projections/breakers/" + urllib.parse.quote(f"kasmina/{source}/graft", safe="")) == (
            200,
            breaker,
        )
        status, table = first.get("/projections/seeds")
        assert status == 200 and table[f"{source}/s0"]["stage"] != "UNSPECIFIED", table
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{first.port}/metrics", timeout=5).read().decode()
        gauge = f'esper_projection_breaker_state{{breaker="graft",source="{source}",subsystem="kasmina"}} 3.0'
        assert gauge in metrics, metrics[:2000]  # HALF_OPEN, in the one numbering
        assert first.get("/projections/breakers/nobody")[0] == 404
        shown = subprocess.run(  # esper status reads the live app when it answers
            [ESPER, "status", "--json", "--projection", "breakers"],
            env={
                **os.environ,
                "ESPER_PROJECTIONS_URL": f"http://127.0.0.1:{first.port}",
                "ESPER_BOOTSTRAP_SERVERS": "x:1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert shown.returncode == 0 and json.loads(shown.stdout) == {"breakers": first.get("/projections/breakers")[1]}
        assert first.get("/projections/nonsense")[0] == 404
        status, overview = first.get("/projections")
        assert status == 200 and overview["projections"]["breakers"]["digest"] == before["breakers"]
        assert sum(overview["counters"]["skipped"].values()) == 1, overview  # the garbage, counted
        assert wait_for(lambda: _committed_past(bootstrap, last), 30, 0.2), "the app did not commit its offsets"
        # Every table partition's RocksDB runs with the app's small memtables, not Faust's 3 x 64 MiB.
        dbs = sorted((tmp_path / "data-1").glob("v1/tables/*.db"))
        assert len(dbs) == len(reducers.PROJECTIONS) * ROUTED_PARTITIONS, dbs
        for db in dbs:
            options = max(db.glob("OPTIONS-*")).read_text()
            assert f"\n  write_buffer_size={APP_SIZING.write_buffer_bytes}\n" in options, db
            assert f"\n  db_write_buffer_size={APP_SIZING.total_write_buffer_bytes}\n" in options, db
    finally:
        first.kill()
    # A fresh worker with nothing on disk: the tables come back from the changelogs, then fold what follows.
    second = Worker(bootstrap, tmp_path / "data-2", tmp_path / "app-2.log")
    try:
        _produce(bootstrap, uuid.uuid4().hex[:8], source)
        after = _converges(second, bootstrap)
        assert after != before
        # It did not read the first batch again (it was committed): those states came from the changelogs, into an
        # empty data dir. (Faust may read a record twice at start, before it seeks to the committed offsets.)
        started_at = second.get("/projections")[1]["counters"]["started_at"]
        for (topic, partition), offset in last.last.items():
            assert started_at.get(f"{topic}:{partition}", offset + 1) > offset, (started_at, last)
        assert "Restoring state from changelog topics" in second.tail()
    finally:
        second.kill()


BACKLOG = 40_000


def test_a_worker_started_on_a_backlog_folds_while_it_reads(broker: LocalBroker, tmp_path: Path) -> None:
    """Started on a backlog, the app must not route it all before it folds (Faust hands a whole buffered fetch to
    the agents in one batch, and gives the one routed topic a turn among ten): its views would show nothing new
    for minutes. Its source partitions pause while it has more than MAX_FOLD_LAG routed records to fold."""
    bootstrap = broker.bootstrap_servers
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for i in range(BACKLOG):
        packet = pb.TelemetryPacket(packet_id=f"backlog-{i}", source_subsystem="kasmina", source_id=f"k{i % 16}")
        packet.metrics.add(name="step_ms", value=float(i), type=pb.METRIC_GAUGE)
        value, headers = encode(packet, new_envelope(packet, producer="test-backlog"))
        producer.produce(TELEMETRY.name, value=value, key=f"k{i % 16}".encode(), headers=headers)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    # A new app id: a worker that reads every source topic from its start, the backlog included.
    worker = Worker(
        bootstrap, tmp_path / "data", tmp_path / "app.log", app_id=f"esper-projections-t{uuid.uuid4().hex[:6]}"
    )
    lags: list[int] = []

    def read_half() -> bool:
        try:
            counters = worker.get("/projections")[1]["counters"]
        except OSError:
            return False
        lags.append(counters["routed"] - sum(counters["folded"].values()))
        return sum(counters["read"].values()) >= BACKLOG // 2

    try:
        assert wait_for(read_half, 240, 0.5), f"the worker did not read half the backlog\n{worker.tail()}"
    finally:
        worker.kill()
    # Routed but not folded, when half the backlog was read: bounded by the pacing (plus what is in flight: a fetch,
    # a stream buffer), where without it this grows with the backlog (20,091 here at half of 40,000).
    assert lags[-1] < 2 * MAX_FOLD_LAG, (max(lags), lags[-10:])
