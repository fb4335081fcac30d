"""The consumer helper: decode, hand to a handler, store the offset only after processing.

Offsets are stored after the handler returns (or after the record's dead letter is acknowledged) and committed
by librdkafka's auto-commit and on close, so a crash redelivers what was not processed and loses nothing. When a
dead letter cannot be published, the consumer seeks back to that record, so the next poll publishes its letter again
(without handing the record to the handler a second time) rather than committing past it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from google.protobuf.message import Message as ProtoMessage

from esper.proto import leyline_pb2 as pb
from esper.streams.deadletter import DeadLetterPublisher
from esper.streams.envelope import Decoded, Envelope, decode
from esper.streams.exceptions import DeadLetterUnavailableError, DecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One decoded record with its coordinates in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    decoded: Decoded

    @property
    def message(self) -> ProtoMessage:
        return self.decoded.message

    @property
    def envelope(self) -> Envelope:
        return self.decoded.envelope


Handler = Callable[[Record], None]
# Told of every dead letter this consumer published (after the broker acknowledged it), with the error behind it.
DeadLetterHook = Callable[[pb.DeadLetter, BaseException], None]


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    errors: int = 0
    last_error: str = ""
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


class LeylineConsumer:
    """A group consumer of Leyline topics with a dead-letter path for what cannot be decoded or processed."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        *,
        from_beginning: bool = True,
        dead_letters: DeadLetterPublisher | None = None,
        on_dead_letter: DeadLetterHook | None = None,
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        config = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "fetch.wait.max.ms": 100,
            **overrides,
        }
        self._consumer = Consumer(config)
        self._consumer.subscribe(list(topics))
        self._owns_producer = dead_letters is None
        self.dead_letters = dead_letters or DeadLetterPublisher.connect(bootstrap_servers, group_id)
        self.on_dead_letter = on_dead_letter
        self.stats = ConsumerStats()
        # Records whose dead letter was not acknowledged, by (topic, partition, offset), with the error that doomed
        # them: when they come again only the letter is retried, so a handler's side effects never happen twice.
        self._undelivered: dict[tuple[str, int, int], BaseException] = {}

    def poll_once(self, handler: Handler, timeout_s: float = 0.5, max_records: int = 500) -> int:
        """Process at most max_records; returns how many records were settled (handled or dead-lettered).

        Raises DeadLetterUnavailableError when a record's dead letter was not acknowledged; that record and the
        rest of the batch are not settled and come again on the next poll."""
        settled = 0
        batch = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        for i, msg in enumerate(batch):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.stats.errors += 1
                    self.stats.last_error = str(err)
                    log.warning("consumer error: %s", err)
                continue
            try:
                self._settle(msg, handler)
            except DeadLetterUnavailableError:
                self._rewind(batch[i:])
                raise
            settled += 1
        return settled

    def _rewind(self, unsettled: list[Message]) -> None:
        """Seek each partition back to its first unsettled record (the consumer's position is already past it)."""
        first: dict[tuple[str, int], int] = {}
        for msg in unsettled:
            if msg.error() is None:
                topic, partition, offset = _coordinates(msg)
                first[topic, partition] = min(first.get((topic, partition), offset), offset)
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def _settle(self, msg: Message, handler: Handler) -> None:
        undelivered = self._undelivered.get(_coordinates(msg))
        if undelivered is not None:  # its fate was decided; only its letter is owed (the handler ran once)
            self._dead_letter(msg, undelivered)
            return
        try:
            decoded = decode(msg.value(), msg.headers(), msg.topic())
        except DecodeError as e:
            self._dead_letter(msg, e)
            return
        record = Record(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            timestamp_ms=msg.timestamp()[1],
            decoded=decoded,
        )
        try:
            handler(record)
        except Exception as e:  # a record the handler cannot process is a dead letter, not a stuck partition
            log.exception("handler failed on %s[%s]@%s", record.topic, record.partition, record.offset)
            self._dead_letter(msg, e)
            return
        self.stats.processed += 1
        self._consumer.store_offsets(message=msg)

    def _dead_letter(self, msg: Message, error: BaseException) -> None:
        coordinates = _coordinates(msg)
        try:
            letter = self.dead_letters.publish(msg, error)
        except DeadLetterUnavailableError:
            self._undelivered[coordinates] = error
            raise
        self._undelivered.pop(coordinates, None)
        self.stats.dead_lettered += 1
        reason = type(error).__name__
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1
        self._consumer.store_offsets(message=msg)
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter, error)

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer holds now; empty until the group has assigned it some."""
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def close(self) -> None:
        """Commit what was processed, leave the group, flush our dead letters."""
        self._consumer.close()
        if self._owns_producer:
            self.dead_letters.producer.close(10)


def _coordinates(msg: Message) -> tuple[str, int, int]:
    """Where a record sits in the log: (topic, partition, offset)."""
    return msg.topic() or "", msg.partition() or 0, msg.offset() or 0
