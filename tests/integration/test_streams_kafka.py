"""The Kafka plumbing against a real broker: round trips, console-typed JSON, dead letters, CLI."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from esper.proto import leyline_pb2 as pb
from esper.settings import load_settings
from esper.streams.admin import admin_client, create_topics
from esper.streams.consumer import NO_RETRY, LeylineConsumer, Record
from esper.streams.deadletter import DeadLetterPublisher
from esper.streams.envelope import JSON, PROTOBUF, Envelope
from esper.streams.exceptions import DeadLetterUnavailableError
from esper.streams.local.kafka_dist import KafkaDistribution
from esper.streams.producer import LeylineProducer
from esper.streams.topics import ALL_TOPICS, CONTROL_PAUSE, DEADLETTER, TELEMETRY, TopicSpec
from tests.contract_samples import every_sample, topic_of

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]


def drain(
    consumer: LeylineConsumer, done: Callable[[], bool], handler: Callable[[Record], None], timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for records"
        consumer.poll_once(handler, timeout_s=0.5)


def test_every_contract_round_trips_through_the_broker(kafka_bootstrap: str, run_id: str) -> None:
    """Every contract and every kind of safety event, as protobuf and as proto3 JSON."""
    producer = LeylineProducer(kafka_bootstrap, producer_id=f"test-{run_id}")
    sent: dict[str, tuple[object, Envelope]] = {}
    for content_type in (PROTOBUF, JSON):
        for message in every_sample():
            envelope = producer.envelope_for(message, correlation_id=run_id, content_type=content_type)
            producer.send(topic_of(type(message)), message, key=run_id, envelope=envelope)
            sent[envelope.message_id] = (message, envelope)
    assert producer.flush(30) == 0
    assert producer.stats.delivered == len(sent) and producer.stats.failed == 0

    got: dict[str, Record] = {}
    consumer = LeylineConsumer(kafka_bootstrap, f"roundtrip-{run_id}", [t.name for t in ALL_TOPICS])

    def keep(record: Record) -> None:
        if record.envelope.correlation_id == run_id:
            got[record.envelope.message_id] = record

    try:
        drain(consumer, lambda: len(got) == len(sent), keep)
    finally:
        consumer.close()
    for message_id, (message, envelope) in sent.items():
        assert got[message_id].message == message
        assert got[message_id].envelope == envelope
        assert got[message_id].key == run_id.encode()


def console_produce(bootstrap: str, topic: str, lines: list[str], parse_headers: bool = True) -> None:
    tool = KafkaDistribution.in_home(REPO / ".esper" / "test", load_settings().kafka_version).tool(
        "kafka-console-producer"
    )
    args = [str(tool), "--bootstrap-server", bootstrap, "--topic", topic, "--reader-property", "parse.key=true"]
    if parse_headers:
        args += ["--reader-property", "parse.headers=true"]
    subprocess.run(args, input="".join(line + "\n" for line in lines), text=True, check=True, timeout=120)


def test_json_typed_into_kafka_console_producer_is_decoded(kafka_bootstrap: str, run_id: str) -> None:
    command = {"action": "PAUSE_ENTER", "target_instance": run_id, "target_slots": ["s0"], "reason": "ops"}
    console_produce(
        kafka_bootstrap,
        CONTROL_PAUSE.name,
        [
            f"content-type:application/json,leyline-type:leyline.PauseCommand\t{run_id}\t{json.dumps(command)}",
        ],
    )
    got: list[Record] = []
    consumer = LeylineConsumer(kafka_bootstrap, f"console-{run_id}", [CONTROL_PAUSE.name])
    try:
        drain(consumer, lambda: bool(got), lambda r: got.append(r) if r.key == run_id.encode() else None)
    finally:
        consumer.close()
    assert got[0].message == pb.PauseCommand(
        action=pb.PAUSE_ENTER, target_instance=run_id, target_slots=["s0"], reason="ops"
    )


def test_bad_records_become_dead_letters_and_consumption_goes_on(kafka_bootstrap: str, run_id: str) -> None:
    raw = Producer({"bootstrap.servers": kafka_bootstrap})
    bad = [
        (b"\xff\xfe garbage \x00\x01", []),  # not protobuf
        (b"{not json", [("content-type", b"application/json")]),  # broken JSON
        (b"", [("leyline-type", b"leyline.NoSuchMessage")]),  # unknown type
        (b"", [("leyline-type", b"leyline.TelemetryPacket")]),  # a type this topic does not carry
        (b'{"action": 1}', [("content-type", b"application/json"), ("leyline-version", b"2.0")]),  # future major
    ]
    for value, headers in bad:
        raw.produce(CONTROL_PAUSE.name, value=value, key=run_id.encode(), headers=headers)
    good = pb.PauseCommand(action=pb.PAUSE_EXIT, target_instance=run_id)
    producer = LeylineProducer(kafka_bootstrap)
    raw.flush(30)
    producer.send_sync(CONTROL_PAUSE.name, good, key=run_id)

    handled: list[Record] = []
    consumer = LeylineConsumer(kafka_bootstrap, f"dlq-{run_id}", [CONTROL_PAUSE.name])
    try:
        drain(consumer, lambda: any(r.key == run_id.encode() for r in handled), handled.append)
    finally:
        consumer.close()
    mine = [r for r in handled if r.key == run_id.encode()]
    assert [r.message for r in mine] == [good]  # the good record after five bad ones was processed

    letters: list[pb.DeadLetter] = []
    dlq = LeylineConsumer(kafka_bootstrap, f"dlq-reader-{run_id}", [DEADLETTER.name])
    try:
        drain(
            dlq,
            lambda: len(letters) == len(bad),
            lambda r: letters.append(r.message) if r.key == run_id.encode() else None,
        )
    finally:
        dlq.close()
    assert [letter.origin_value for letter in letters] == [value for value, _ in bad]
    assert all(letter.origin_topic == CONTROL_PAUSE.name and letter.error for letter in letters)
    offsets = [letter.origin_offset for letter in letters]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(bad)
    assert {letter.error_type for letter in letters} == {
        "MalformedPayloadError",
        "UnknownMessageTypeError",
        "UnsupportedVersionError",
    }
    assert letters[3].origin_headers[0].value == b"leyline.TelemetryPacket"


def test_a_failing_handler_dead_letters_the_record_and_goes_on(kafka_bootstrap: str, run_id: str) -> None:
    producer = LeylineProducer(kafka_bootstrap)
    for i in range(3):
        producer.send(TELEMETRY.name, pb.TelemetryPacket(packet_id=f"{run_id}-{i}"), key=run_id)
    assert producer.close(30) == 0  # closed now: the handler's logged error keeps this frame alive to the end
    seen: list[str] = []

    def handler(record: Record) -> None:
        if record.key != run_id.encode():
            return
        seen.append(record.message.packet_id)
        if record.message.packet_id.endswith("-1"):
            raise ValueError("cannot process this one")

    consumer = LeylineConsumer(kafka_bootstrap, f"poison-{run_id}", [TELEMETRY.name])
    try:
        drain(consumer, lambda: len(seen) == 3, handler)
        assert consumer.stats.dead_letter_reasons.get("ValueError") == 1
    finally:
        consumer.close()


def test_cli_produce_then_tail(kafka_bootstrap: str, run_id: str, tmp_path: Path) -> None:
    command = tmp_path / "pause.json"
    command.write_text(json.dumps({"action": "PAUSE_ENTER", "target_instance": run_id, "quota_ms": 100}))
    env = {"ESPER_BOOTSTRAP_SERVERS": kafka_bootstrap, "PATH": "/usr/bin:/bin"}
    esper = [sys.executable, "-m", "esper.cli"]
    produced = subprocess.run(
        [
            *esper,
            "produce",
            CONTROL_PAUSE.name,
            "--type",
            "leyline.PauseCommand",
            "--json",
            str(command),
            "--key",
            run_id,
            "--correlation-id",
            run_id,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    where = json.loads(produced.stdout)
    tailed = subprocess.run(
        [*esper, "tail", CONTROL_PAUSE.name, "--idle-timeout", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in tailed.stdout.splitlines()]
    mine = [line for line in lines if line["offset"] == where["offset"] and line["partition"] == where["partition"]]
    assert mine[0]["value"] == {"action": "PAUSE_ENTER", "target_instance": run_id, "quota_ms": "100"}
    assert mine[0]["headers"]["leyline-correlation-id"] == run_id
    assert mine[0]["headers"]["content-type"] == PROTOBUF


@pytest.mark.parametrize(
    ("topic", "type_name", "payload", "expected"),
    [
        ("no.such.topic", "leyline.PauseCommand", "{}", "does not exist"),
        (TELEMETRY.name, "leyline.PauseCommand", "{}", "carries leyline.TelemetryPacket"),
        (CONTROL_PAUSE.name, "leyline.Nope", "{}", "unknown message type"),
        (CONTROL_PAUSE.name, "leyline.PauseCommand", '{"no_such_field": 1}', "not a valid leyline.PauseCommand"),
        (CONTROL_PAUSE.name, "leyline.PauseCommand", "{not json", "not a valid leyline.PauseCommand"),
        (CONTROL_PAUSE.name, "leyline.PauseCommand", "[]", "not an object"),
        (CONTROL_PAUSE.name, "leyline.PauseCommand", b"\xff\xfe{}", "codec can't decode"),
        (CONTROL_PAUSE.name, "leyline.PauseCommand", None, "cannot read"),  # no such file
    ],
)
def test_cli_produce_rejects_bad_input_with_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, topic: str, type_name: str, payload: str | bytes | None, expected: str
) -> None:
    command = tmp_path / "bad.json"
    if payload is not None:
        command.write_bytes(payload.encode() if isinstance(payload, str) else payload)
    done = subprocess.run(
        [sys.executable, "-m", "esper.cli", "produce", topic, "--type", type_name, "--json", str(command)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"ESPER_BOOTSTRAP_SERVERS": kafka_bootstrap, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 1
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


class Crash(BaseException):
    """Stands for the process dying inside a handler: not an Exception, so nothing catches and settles it."""


def own_topic(bootstrap: str, run_id: str) -> str:
    """A one-partition topic of this test alone: a fresh group reads only what the test wrote."""
    name = f"test.pause.{run_id}"
    create_topics(bootstrap, [TopicSpec(name, (pb.PauseCommand,), "test", 1)])
    return name


def pause_command(run_id: str, i: int) -> pb.PauseCommand:
    return pb.PauseCommand(command_id=f"{run_id}-{i}", action=pb.PAUSE_EXIT, target_instance=run_id)


def test_offsets_are_committed_only_after_processing(kafka_bootstrap: str, run_id: str) -> None:
    topic = own_topic(kafka_bootstrap, run_id)
    producer = LeylineProducer(kafka_bootstrap)
    raw = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.send_sync(topic, pause_command(run_id, 0))
    raw.produce(topic, value=b"\xff garbage")  # offset 1: dead-lettered, so settled
    raw.flush(30)
    for i in (2, 3, 4):
        producer.send_sync(topic, pause_command(run_id, i))

    group = f"commit-{run_id}"
    first: list[str] = []

    def dies_at_3(record: Record) -> None:
        if record.message.command_id.endswith("-3"):
            raise Crash
        first.append(record.message.command_id)

    consumer = LeylineConsumer(kafka_bootstrap, group, [topic])
    with pytest.raises(Crash):
        drain(consumer, lambda: False, dies_at_3)
    consumer.close()  # commits what was stored: records 0..2, not 3
    assert first == [f"{run_id}-0", f"{run_id}-2"]
    assert consumer.stats.dead_lettered == 1

    again: list[Record] = []
    consumer = LeylineConsumer(kafka_bootstrap, group, [topic])
    try:
        drain(consumer, lambda: len(again) == 2, again.append)
    finally:
        consumer.close()
    assert [(r.offset, r.message.command_id) for r in again] == [(3, f"{run_id}-3"), (4, f"{run_id}-4")]
    assert consumer.stats.dead_lettered == 0  # the garbage at offset 1 was settled the first time


def test_a_dead_letter_the_broker_refuses_is_retried_never_skipped(kafka_bootstrap: str, run_id: str) -> None:
    topic = own_topic(kafka_bootstrap, run_id)
    producer = LeylineProducer(kafka_bootstrap)
    refused = pb.PauseCommand(command_id=f"{run_id}-0", reason="r" * 5000, target_instance=run_id)
    producer.send_sync(topic, refused)  # offset 0: the handler refuses it; its letter is over 1000 bytes
    producer.send_sync(topic, pause_command(run_id, 1))
    producer.close()  # the handler's logged error keeps this frame alive to the end of the session

    group = f"dlq-retry-{run_id}"
    refusing = DeadLetterPublisher(LeylineProducer(kafka_bootstrap, **{"message.max.bytes": 1000}), group)
    handled: list[str] = []

    def handler(record: Record) -> None:
        handled.append(record.message.command_id)
        if record.message.reason:
            raise ValueError("refused by the handler")

    consumer = LeylineConsumer(kafka_bootstrap, group, [topic], dead_letters=refusing)
    try:
        for _ in range(3):  # each poll meets the unsettled record again, and never gets past it
            with pytest.raises(DeadLetterUnavailableError, match=rf"{topic}\[0\]@0"):
                drain(consumer, lambda: False, handler)
        assert consumer.stats.dead_lettered == 0

        consumer.dead_letters = DeadLetterPublisher.connect(kafka_bootstrap, group)
        drain(consumer, lambda: len(handled) == 2, handler)
    finally:
        consumer.close()
        for publisher in {refusing, consumer.dead_letters}:  # the consumer closes only a publisher it made
            publisher.producer.close(0)
    # the refused command met the handler once, however often its letter was retried; nothing was skipped
    assert handled == [f"{run_id}-0", f"{run_id}-1"]
    assert consumer.stats.dead_lettered == 1 and consumer.dead_letters.published == 1


def test_a_record_of_a_megabyte_is_dead_lettered_whole(kafka_bootstrap: str, run_id: str) -> None:
    topic = own_topic(kafka_bootstrap, run_id)
    value = bytes(range(256)) * 3900  # 998,400 bytes of garbage, under the broker's default record limit
    raw = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1_048_576})
    raw.produce(topic, value=value, key=run_id.encode())
    raw.flush(30)
    consumer = LeylineConsumer(kafka_bootstrap, f"big-{run_id}", [topic])
    try:
        drain(consumer, lambda: consumer.stats.dead_lettered == 1, lambda r: None)
    finally:
        consumer.close()

    letters: list[pb.DeadLetter] = []
    dlq = LeylineConsumer(kafka_bootstrap, f"big-reader-{run_id}", [DEADLETTER.name])
    try:
        drain(dlq, lambda: bool(letters), lambda r: letters.append(r.message) if r.key == run_id.encode() else None)
    finally:
        dlq.close()
    assert letters[0].origin_value == value and not letters[0].origin_value_truncated


def test_topics_create_says_how_an_existing_topic_differs_from_the_registry(kafka_bootstrap: str, run_id: str) -> None:
    spec = TopicSpec(f"test.drift.{run_id}", (pb.PauseCommand,), "test", 2, {"retention.ms": "3600000"})
    assert create_topics(kafka_bootstrap, [spec]) == {spec.name: "created"}
    assert create_topics(kafka_bootstrap, [spec]) == {spec.name: "exists"}
    changed = ConfigResource(
        ResourceType.TOPIC,
        spec.name,
        incremental_configs=[ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)],
    )
    admin = admin_client(kafka_bootstrap)
    for future in admin.incremental_alter_configs([changed]).values():
        future.result()
    wider = TopicSpec(spec.name, spec.message_types, spec.key, 3, spec.config)
    assert create_topics(kafka_bootstrap, [wider]) == {
        spec.name: "exists, differs from the registry: partitions=2 (registry 3); retention.ms=60000 (registry 3600000)"
    }


def test_a_rebalance_commits_what_was_processed_and_drops_the_letters_owed_for_lost_partitions(
    kafka_bootstrap: str, run_id: str
) -> None:
    topic = own_topic(kafka_bootstrap, run_id)
    producer = LeylineProducer(kafka_bootstrap)
    for i in range(3):
        producer.send_sync(topic, pause_command(run_id, i))
    refused = pb.PauseCommand(command_id=f"{run_id}-3", reason="r" * 5000, target_instance=run_id)
    producer.send_sync(topic, refused)  # offset 3: the handler refuses it and its dead letter is refused too
    producer.close()

    group = f"rebalance-{run_id}"
    refusing = DeadLetterPublisher(LeylineProducer(kafka_bootstrap, **{"message.max.bytes": 1000}), group)
    handled: list[int] = []

    def handler(record: Record) -> None:
        handled.append(record.offset)
        if record.message.reason:
            raise ValueError("refused by the handler")

    # No periodic commit within the test: only the revocation can commit offsets 0..2. The range assignor gives
    # the one partition to the member whose id sorts first: ids start with the client id, so the second member
    # ("a-...") takes it from the first ("z-...").
    first = LeylineConsumer(
        kafka_bootstrap,
        group,
        [topic],
        dead_letters=refusing,
        **{"auto.commit.interval.ms": 600_000, "client.id": f"z-{run_id}"},
    )
    second: LeylineConsumer | None = None
    try:
        deadline = time.monotonic() + 60
        while first.owed_letters == 0:
            assert time.monotonic() < deadline, "the refused letter never became owed"
            with contextlib.suppress(DeadLetterUnavailableError):
                first.poll_once(handler, timeout_s=0.5)
        assert handled == [0, 1, 2, 3]

        taken: list[int] = []
        second = LeylineConsumer(kafka_bootstrap, group, [topic], retry=NO_RETRY, **{"client.id": f"a-{run_id}"})
        deadline = time.monotonic() + 60
        while not taken:
            assert time.monotonic() < deadline, "the partition never moved to the second member"
            with contextlib.suppress(DeadLetterUnavailableError):
                first.poll_once(handler, timeout_s=0.2)
            with contextlib.suppress(ValueError):
                second.poll_once(lambda r: taken.append(r.offset), timeout_s=0.2)
        assert first.assignment() == [] and first.owed_letters == 0  # nothing owed for a partition it lost
        assert taken[0] == 3  # the new owner starts where the first committed at the revocation
        assert handled == [0, 1, 2, 3]
    finally:
        first.close()
        if second is not None:
            second.close()
        refusing.producer.close(0)
