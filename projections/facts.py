"""Facts: decoded Leyline records with their place in the log, the only input the reducers see.

A record becomes a `Fact` through the envelope codec (`esper.streams.envelope.decode`); a record that does not decode
raises (or, through `try_fact`, returns) the codec's typed `DecodeError`, which the hosting app dead-letters. So the
reducers never see bytes, only messages of the types their topics carry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb
from esper.streams.envelope import Headers, decode
from esper.streams.exceptions import DecodeError

__all__ = [
    "MAX_ID_CHARS",
    "Fact",
    "KafkaRecord",
    "event_id",
    "fact_from_kafka",
    "fact_from_record",
    "stream_of",
    "try_fact",
]


MAX_ID_CHARS = 64


@dataclass(frozen=True)
class Fact:
    """One decoded record: where it sits in the log (topic, partition, offset, the record's timestamp and key), the
    envelope's message id, and the message. Everything a reducer may look at; no clock, no bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    message_id: str
    message: Message


def fact_from_record(
    value: bytes | None,
    headers: Headers | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | str | None = None,
) -> Fact:
    """The fact a raw record holds; raises the codec's DecodeError (a subclass says what is wrong)."""
    decoded = decode(value, headers, topic)
    text_key = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key
    return Fact(topic, partition, offset, timestamp_ms, text_key, decoded.envelope.message_id, decoded.message)


def try_fact(
    value: bytes | None,
    headers: Headers | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | str | None = None,
) -> Fact | DecodeError:
    """`fact_from_record`, with a DecodeError returned instead of raised (for loops that dead-letter and go on)."""
    try:
        return fact_from_record(value, headers, topic, partition, offset, timestamp_ms, key)
    except DecodeError as e:
        return e


class KafkaRecord(Protocol):
    """The part of confluent_kafka.Message a fact is read from (so this module does not import the client)."""

    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def key(self) -> bytes | str | None: ...


def fact_from_kafka(msg: KafkaRecord) -> Fact:
    """The fact a consumed confluent-kafka message holds (timestamp -1 when the broker gave none)."""
    return fact_from_record(
        msg.value(),
        msg.headers(),
        msg.topic() or "",
        msg.partition() or 0,
        msg.offset() or 0,
        msg.timestamp()[1],
        msg.key(),
    )


def event_id(fact: Fact) -> str:
    """What identifies the event a fact carries, so that a redelivered copy is recognised as the same event:
    - a SafetyEvent's event_id (Kasmina's outbox resends it under the same id; Tezzeret gives a retried
      transaction's records new message ids, but the event keeps its event_id);
    - a TelemetryPacket's packet_id;
    - otherwise the envelope's message id;
    - failing all these (a record typed in by hand), a hash of the message's type and deterministic bytes, so that
      two copies of the same bytes are one event.
    An id longer than MAX_ID_CHARS is replaced by its hash: the reducers remember ids, and must not remember
    megabytes of a hostile one."""
    msg = fact.message
    own = ""
    if isinstance(msg, pb.SafetyEvent):
        own = msg.event_id
    elif isinstance(msg, pb.TelemetryPacket):
        own = msg.packet_id
    given = own or fact.message_id
    if given:
        return given if len(given) <= MAX_ID_CHARS else _hashed(given.encode())
    return _hashed(msg.DESCRIPTOR.full_name.encode(), msg.SerializeToString(deterministic=True))


def _hashed(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return "sha256:" + digest.hexdigest()[:32]


def stream_of(fact: Fact) -> str:
    """The log a fact was read from ("topic:partition"): within it, order is the log's and the same in any replay."""
    return f"{fact.topic}:{fact.partition}"
