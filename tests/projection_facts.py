"""Builders of projection facts for tests: each record goes through the envelope codec (`encode`, then
`fact_from_record`), keyed and partitioned as its producer does, so the reducers see what they see in the app."""

from __future__ import annotations

import itertools
import zlib

from google.protobuf.message import Message

from esper.projections.facts import Fact, fact_from_record
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import Envelope, encode
from esper.streams.topics import SAFETY, topic_spec

__all__ = ["Log", "partition_for", "safety_key"]


def partition_for(topic: str, key: str) -> int:
    """A stable partition for a key (the producer's hash is another, but any stable one keeps a key's records on one
    partition, which is what the reducers rely on)."""
    spec = topic_spec(topic)
    return zlib.crc32(key.encode()) % (spec.partitions if spec else 1)


def safety_key(event: pb.SafetyEvent) -> str:
    """The key a producer gives a safety event: Kasmina's client keys by instance, Tezzeret's lane by detail kind."""
    if event.subsystem == "kasmina":
        return f"kasmina/{event.source_id}"
    return f"{event.subsystem}/{event.WhichOneof('detail') or 'event'}"


class Log:
    """An append-only log of facts: offsets per (topic, partition), message ids and event times from counters (so
    a test is deterministic), and copies of a record as a redelivery produces them (a new offset, the same ids)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms
        self.facts: list[Fact] = []
        self._offsets: dict[tuple[str, int], itertools.count[int]] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> str:
        return f"id-{next(self._ids):06d}"

    def append(
        self,
        topic: str,
        message: Message,
        key: str,
        *,
        message_id: str | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Fact:
        part = partition_for(topic, key) if partition is None else partition
        offset = next(self._offsets.setdefault((topic, part), itertools.count()))
        envelope = Envelope(
            message.DESCRIPTOR.full_name, message_id=self.next_id() if message_id is None else message_id
        )
        value, headers = encode(message, envelope)
        self.now_ms += 1
        fact = fact_from_record(
            value, headers, topic, part, offset, self.now_ms if timestamp_ms is None else timestamp_ms, key.encode()
        )
        self.facts.append(fact)
        return fact

    def safety(
        self,
        detail: Message | None,
        *,
        source_id: str = "k1",
        subsystem: str = "kasmina",
        at_ms: int | None = None,
        severity: pb.TelemetryLevel = pb.TELEMETRY_INFO,
        partition: int | None = None,
    ) -> Fact:
        """A safety event built by `safety_event`, stamped with the log's time (or at_ms) and a counter id."""
        event = safety_event(severity, "test", detail, source_id=source_id, subsystem=subsystem)
        event.event_id = self.next_id()
        event.timestamp.FromMilliseconds(self.now_ms + 1 if at_ms is None else at_ms)
        return self.event(event, partition=partition)

    def event(self, event: pb.SafetyEvent, partition: int | None = None) -> Fact:
        """A given safety event, keyed as its producer keys it; the message id is the event id (Kasmina's rule)."""
        return self.append(SAFETY.name, event, safety_key(event), message_id=event.event_id, partition=partition)

    def redeliver(self, fact: Fact) -> Fact:
        """A second copy of a record, later in its partition (the outbox or a retry sent it again)."""
        return self.append(
            fact.topic, fact.message, fact.key or "", message_id=fact.message_id, partition=fact.partition
        )
