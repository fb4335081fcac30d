"""Facts: records decoded through the envelope codec, typed decode errors, and what identifies an event."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.message import Message

from esper.projections.facts import MAX_ID_CHARS, Fact, event_id, fact_from_kafka, fact_from_record, stream_of, try_fact
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import Envelope, HeaderValue, encode, new_envelope
from esper.streams.exceptions import DecodeError, MalformedPayloadError, UnknownMessageTypeError
from esper.streams.topics import DEADLETTER, SAFETY, TELEMETRY


class FakeMessage:
    """The confluent-kafka Message methods a fact is read from."""

    def __init__(self, value: bytes | None, headers: list[tuple[str, HeaderValue]], ts: tuple[int, int]) -> None:
        self._value, self._headers, self._ts = value, headers, ts

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, HeaderValue]]:
        return self._headers

    def topic(self) -> str:
        return SAFETY.name

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 41

    def timestamp(self) -> tuple[int, int]:
        return self._ts

    def key(self) -> bytes:
        return b"kasmina/k1"


def encoded(message: Message, message_id: str = "m1") -> tuple[bytes, list[tuple[str, HeaderValue]]]:
    return encode(message, Envelope(message.DESCRIPTOR.full_name, message_id=message_id))


def test_a_record_becomes_a_fact_with_its_place_in_the_log() -> None:
    event = safety_event(pb.TELEMETRY_INFO, "x", pb.PauseEntered(instance_id="k1"), source_id="k1")
    value, headers = encoded(event)
    fact = fact_from_record(value, headers, SAFETY.name, 1, 7, 1234, b"kasmina/k1")
    assert (fact.topic, fact.partition, fact.offset, fact.timestamp_ms, fact.key) == (
        SAFETY.name,
        1,
        7,
        1234,
        "kasmina/k1",
    )
    assert fact.message_id == "m1" and fact.message == event
    assert stream_of(fact) == "leyline.safety:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fact.offset = 8  # type: ignore[misc]
    from_kafka = fact_from_kafka(FakeMessage(value, headers, (1, 99)))
    assert (from_kafka.partition, from_kafka.offset, from_kafka.timestamp_ms, from_kafka.key) == (
        2,
        41,
        99,
        "kasmina/k1",
    )


def test_undecodable_records_are_typed_errors() -> None:
    with pytest.raises(MalformedPayloadError):
        fact_from_record(b"\xff\xff\xff", [], SAFETY.name, 0, 0, 0)
    value, headers = encoded(pb.DeadLetter(origin_topic="t"))
    with pytest.raises(UnknownMessageTypeError):  # a DeadLetter does not belong on leyline.safety
        fact_from_record(value, headers, SAFETY.name, 0, 0, 0)
    outcome = try_fact(None, [], SAFETY.name, 0, 0, 0)  # a tombstone
    assert isinstance(outcome, DecodeError)
    assert isinstance(try_fact(value, headers, DEADLETTER.name, 0, 0, 0), Fact)


def fact(message: pb.SafetyEvent | pb.TelemetryPacket | pb.DeadLetter, message_id: str, topic: str) -> Fact:
    return Fact(topic, 0, 0, 0, None, message_id, message)


def test_event_ids_the_producers_keep_across_redeliveries() -> None:
    event = pb.SafetyEvent(event_id="e1")
    assert event_id(fact(event, "m-retry-1", SAFETY.name)) == event_id(fact(event, "m-retry-2", SAFETY.name)) == "e1"
    assert event_id(fact(pb.TelemetryPacket(packet_id="p1"), "m", TELEMETRY.name)) == "p1"
    assert event_id(fact(pb.DeadLetter(origin_topic="t"), "m9", DEADLETTER.name)) == "m9"


def test_an_id_less_record_is_known_by_its_content() -> None:
    a = fact(pb.DeadLetter(origin_topic="t", origin_offset=1), "", DEADLETTER.name)
    b = fact(pb.DeadLetter(origin_topic="t", origin_offset=1), "", DEADLETTER.name)
    c = fact(pb.DeadLetter(origin_topic="t", origin_offset=2), "", DEADLETTER.name)
    assert event_id(a) == event_id(b) != event_id(c)
    assert event_id(a).startswith("sha256:")


def test_long_ids_are_hashed() -> None:
    long_id = "x" * (MAX_ID_CHARS + 1)
    hashed = event_id(fact(pb.SafetyEvent(event_id=long_id), "", SAFETY.name))
    assert hashed.startswith("sha256:") and len(hashed) <= MAX_ID_CHARS
    assert hashed == event_id(fact(pb.SafetyEvent(event_id=long_id), "other", SAFETY.name))
    assert event_id(fact(pb.SafetyEvent(event_id="y" * MAX_ID_CHARS), "", SAFETY.name)) == "y" * MAX_ID_CHARS


def test_kasmina_and_tezzeret_envelopes() -> None:
    event = safety_event(pb.TELEMETRY_INFO, "x", pb.QuotaReset())
    envelope = dataclasses.replace(new_envelope(event), message_id=event.event_id)  # what Kasmina's client sends
    value, headers = encode(event, envelope)
    assert event_id(fact_from_record(value, headers, SAFETY.name, 0, 0, 0)) == event.event_id
    value, headers = encode(event, new_envelope(event))  # Tezzeret's lane: a fresh message id per transaction
    assert event_id(fact_from_record(value, headers, SAFETY.name, 0, 0, 0)) == event.event_id
