"""The Kasmina client's lossless safety path and its pause state at start, against real brokers: a broker of this
module's own is stopped and restarted (an outage of the cluster the client really uses), the training process is
killed with SIGKILL, and pause commands are produced before and right after a client starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient
from torch import nn

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig
from esper.safety.client import KasminaClient
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import Listeners, safety_event
from esper.safety.exceptions import CallNotPermittedError
from esper.safety.seed import SeedSlot
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.exceptions import ProducerFatalError
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY
from tests.conftest import own_broker
from tests.polling import wait_for
from tests.sinks import MemorySink

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def outage_broker() -> Iterator[LocalBroker]:
    with own_broker("outage-broker", 110) as broker:
        yield broker


def safety_ids(bootstrap: str, instance: str, want: set[str], timeout_s: float = 60.0) -> list[str]:
    """Event ids of the safety events a client of `instance` sent (its key; duplicates kept), read until `want` is
    seen."""
    consumer = LeylineConsumer(bootstrap, f"test-safety-{uuid.uuid4().hex[:8]}", [SAFETY.name])
    found: list[str] = []

    def keep(record: Record) -> None:
        event = record.message
        if isinstance(event, pb.SafetyEvent) and record.key == f"kasmina/{instance}".encode():
            found.append(event.event_id)

    try:
        wait_for(lambda: bool(consumer.poll_once(keep, 0.2) or True) and want <= set(found), timeout_s)
    finally:
        consumer.close()
    return found


def emit(client: KasminaClient, n: int, label: str) -> set[str]:
    ids = set()
    for i in range(n):
        event = safety_event(pb.TELEMETRY_WARN, f"{label} {i}", source_id=client.instance_id)
        ids.add(event.event_id)
        client.emit(event)
    return ids


def test_no_safety_event_is_lost_to_a_broker_outage(outage_broker: LocalBroker, tmp_path: Path) -> None:
    instance = f"k-outage-{uuid.uuid4().hex[:8]}"
    client = KasminaClient(
        outage_broker.bootstrap_servers,
        instance,
        consume_pause=False,
        outbox_dir=tmp_path / "outbox",
        # Short delivery timeouts on both paths: telemetry drops, safety deliveries fail and must be sent again.
        producer_overrides={"queue.buffering.max.messages": 20, "message.timeout.ms": 2000},
        safety_producer_overrides={"message.timeout.ms": 2000},
    )
    seen = MemorySink()
    breaker = CircuitBreaker(
        "outage", CircuitBreakerConfig(failure_threshold=1, timeout_ms=50), sink=Listeners(client, seen)
    )
    host = nn.Linear(8, 8)
    try:
        assert client.flush(30) == 0  # the hardware profile is delivered
        expected = emit(client, 5, "before")
        assert client.flush(30) == 0
        outage_broker.down()
        steps = 0
        for round_ in range(25):  # about 10 s of outage: past both delivery timeouts
            expected |= emit(client, 2, f"outage {round_}")
            with contextlib.suppress(ZeroDivisionError, CallNotPermittedError):
                breaker.call(lambda: 1 / 0)
            host(torch.randn(4, 8)).sum().backward()
            client.publish_metrics({"loss": 1.0})
            steps += 1
            time.sleep(0.4)
        assert steps == 25  # training never waited
        assert wait_for(lambda: client.stats().safety_delivery_errors > 0, 10)
        assert client.stats().safety_undelivered >= 50
    finally:
        outage_broker.up(timeout_s=180)
    assert client.flush(90) == 0
    stats = client.stats()
    client.close()
    expected |= {e.event_id for e in seen.events}
    got = safety_ids(outage_broker.bootstrap_servers, instance, expected)
    assert expected <= set(got)
    assert len(seen.events) >= 25  # the breaker's failures and transitions are among them
    assert stats.dropped > 0  # telemetry may be lost, and was; safety events were not
    assert stats.safety_undelivered == 0 and stats.safety_delivered >= len(expected)


def test_a_telemetry_burst_drops_no_safety_event(kafka_bootstrap: str, tmp_path: Path) -> None:
    instance = f"k-burst-{uuid.uuid4().hex[:8]}"
    client = KasminaClient(
        kafka_bootstrap, instance, consume_pause=False, outbox_dir=tmp_path / "outbox", buffer_size=500
    )
    expected: set[str] = set()
    for i in range(200):
        expected |= emit(client, 1, f"burst {i}")
        for _ in range(100):
            client.publish_metrics({"x": float(i)})
    assert client.flush(60) == 0
    stats = client.stats()
    client.close()
    assert stats.buffer_dropped > 0  # the burst overflowed telemetry's buffer
    assert expected <= set(safety_ids(kafka_bootstrap, instance, expected))


_CHILD = textwrap.dedent(
    """
    import sys, time
    from esper.proto import leyline_pb2 as pb
    from esper.safety.client import KasminaClient
    from esper.safety.events import safety_event

    bootstrap, instance, outbox, run = sys.argv[1:5]
    client = KasminaClient(bootstrap, instance, consume_pause=False, outbox_dir=outbox)
    i = 0
    while True:
        event = safety_event(pb.TELEMETRY_WARN, f"step {i}", source_id=instance)
        event.event_id = f"{run}-{i}"
        client.emit(event)
        print(i, flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def run_and_kill(bootstrap: str, instance: str, outbox: Path, run: str, lines: int) -> int:
    """Start a training process that emits numbered safety events, SIGKILL it after `lines` of them were emitted;
    the highest number it said it emitted."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, bootstrap, instance, str(outbox), run],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    last = -1
    try:
        for line in child.stdout:
            last = int(line)
            if last + 1 >= lines:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return last


@pytest.mark.parametrize("reachable", [False, True], ids=["broker-unreachable", "broker-up"])
def test_safety_events_survive_a_kill_9_of_the_training_process(
    outage_broker: LocalBroker, tmp_path: Path, reachable: bool
) -> None:
    instance = f"k-kill-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    outbox = tmp_path / "outbox"
    bootstrap = outage_broker.bootstrap_servers if reachable else "127.0.0.1:1"
    last = run_and_kill(bootstrap, instance, outbox, run, lines=300)
    emitted = {f"{run}-{i}" for i in range(last + 1)}
    # The next start of the instance delivers what the killed one had not, ids unchanged.
    client = KasminaClient(outage_broker.bootstrap_servers, instance, consume_pause=False, outbox_dir=outbox)
    recovered = client.stats().safety_recovered
    assert client.flush(60) == 0
    client.close()
    if not reachable:
        assert recovered >= len(emitted)  # every one of them waited in the outbox
    got = safety_ids(outage_broker.bootstrap_servers, instance, emitted)
    assert emitted <= set(got), f"lost: {sorted(emitted - set(got))[:5]}"


def test_a_fatal_producer_error_recreates_the_producer(kafka_bootstrap: str) -> None:
    producer = LeylineProducer(kafka_bootstrap, "test-fatal")
    event = pb.SafetyEvent(event_id=uuid.uuid4().hex, subsystem="test")
    producer.send_sync(SAFETY.name, event)
    # librdkafka raises fatal errors (a lost idempotence sequence, a fenced producer) through error_cb
    producer._on_error(KafkaError(KafkaError._FATAL, "injected fatal error", fatal=True))
    assert not producer.healthy and producer.stats.fatal_errors == 1
    producer.send_sync(SAFETY.name, event)  # delivered by a new producer
    assert producer.healthy and producer.stats.recreated == 1
    producer.close()

    strict = LeylineProducer(kafka_bootstrap, "test-fatal-strict", recreate_on_fatal=False)
    strict._on_error(KafkaError(KafkaError._FATAL, "injected fatal error", fatal=True))
    with pytest.raises(ProducerFatalError):
        strict.send(SAFETY.name, event)
    assert not strict.healthy
    strict.close(0)


# -- the pause state at start (a PAUSE_ENTER produced while the trainer (re)starts) --------------------------

SAFETY_CFG = ProductionSafetyConfig(max_pause_duration_ms=20_000, max_pause_quota=100_000)


def pause_client(bootstrap: str, instance: str, tmp_path: Path) -> KasminaClient:
    client = KasminaClient(bootstrap, instance, safety=SAFETY_CFG, outbox_dir=tmp_path / instance)
    client.add_slot(SeedSlot("s0", nn.Linear(4, 4), instance_id=instance, safety=SAFETY_CFG, sink=client))
    return client


def command(producer: LeylineProducer, instance: str, action: int, **fields: object) -> None:
    cmd = pb.PauseCommand(action=action, target_instance=instance, command_id=uuid.uuid4().hex, **fields)  # type: ignore[arg-type]
    producer.send_sync(CONTROL_PAUSE.name, cmd, key=instance)


def test_a_pause_produced_before_the_client_starts_is_applied(kafka_bootstrap: str, tmp_path: Path) -> None:
    producer = LeylineProducer(kafka_bootstrap, "test-pause-before")
    instance = f"k-before-{uuid.uuid4().hex[:8]}"
    command(producer, instance, pb.PAUSE_ENTER, reason="maintenance", max_duration_ms=15_000)
    time.sleep(1.0)
    with pause_client(kafka_bootstrap, instance, tmp_path) as client:
        assert client.wait_ready(60)
        slot = client.slots["s0"]
        assert slot.is_paused  # in force as soon as wait_ready returns
        state = slot.pause.state
        assert state is not None and state.reason == "maintenance"
        assert state.allowed_ms <= 15_000 - 1000  # only the time it has left, counted from when it was produced


def test_history_that_ended_its_pause_pauses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    producer = LeylineProducer(kafka_bootstrap, "test-pause-ended")
    exited, expired = f"k-exited-{uuid.uuid4().hex[:8]}", f"k-expired-{uuid.uuid4().hex[:8]}"
    command(producer, exited, pb.PAUSE_ENTER, max_duration_ms=15_000)
    command(producer, exited, pb.PAUSE_EXIT)
    command(producer, expired, pb.PAUSE_ENTER, max_duration_ms=300)
    time.sleep(1.0)  # the second one's time is up
    for instance in (exited, expired):
        with pause_client(kafka_bootstrap, instance, tmp_path) as client:
            assert client.wait_ready(60)
            assert not client.slots["s0"].is_paused


def test_every_command_produced_after_wait_ready_is_applied(kafka_bootstrap: str, tmp_path: Path) -> None:
    producer = LeylineProducer(kafka_bootstrap, "test-pause-after")
    applied = 0
    for _ in range(5):
        instance = f"k-after-{uuid.uuid4().hex[:8]}"
        with pause_client(kafka_bootstrap, instance, tmp_path) as client:
            assert client.wait_ready(60)
            command(producer, instance, pb.PAUSE_ENTER, reason="right after ready")
            applied += wait_for(lambda c=client: c.slots["s0"].is_paused, 15)
    assert applied == 5


def test_a_client_leaves_no_consumer_group_behind(kafka_bootstrap: str, tmp_path: Path) -> None:
    instance = f"k-nogroup-{uuid.uuid4().hex[:8]}"
    producer = LeylineProducer(kafka_bootstrap, "test-nogroup")
    with pause_client(kafka_bootstrap, instance, tmp_path) as client:
        assert client.wait_ready(60)
        command(producer, instance, pb.PAUSE_ENTER)
        assert wait_for(lambda: client.slots["s0"].is_paused, 15)
    # A group that did consume and commit, to show the listing would show one of ours.
    control = LeylineConsumer(kafka_bootstrap, f"control-{instance}", [CONTROL_PAUSE.name])

    def ignore(record: Record) -> None:
        del record

    assert wait_for(lambda: control.poll_once(ignore, 0.5) > 0, 30)
    control.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def groups() -> list[str]:
        return [g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid]

    assert wait_for(lambda: f"control-{instance}" in groups(), 30)
    assert [g for g in groups() if instance in g] == [f"control-{instance}"]
