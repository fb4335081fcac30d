"""The consumer helper: decode, hand to a handler, store the offset only after processing.

Offsets are stored after the handler returns (or after the record's dead letter is acknowledged) and committed by
librdkafka's auto-commit (periodically, when a partition is revoked, and on close), so a crash redelivers what was
not processed and loses nothing. When a dead letter cannot be published, the consumer seeks back to that record, so
the next poll publishes its letter again (without handing the record to the handler a second time) rather than
committing past it. A handler error that the retry policy calls transient is retried with backoff before the record
is dead-lettered. On a revocation the letters still owed for those partitions are forgotten: their next owner
decides those records' fate.

`LeylineConsumer.from_time` reads every partition of a topic from a point in time with no consumer group at all
(nothing is committed and no group is left behind): for a process that rebuilds its state from the log on every
start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from google.protobuf.message import Message as ProtoMessage

from esper.proto import leyline_pb2 as pb
from esper.streams.client_config import kafka_config
from esper.streams.deadletter import DeadLetterPublisher
from esper.streams.envelope import Decoded, Envelope, decode
from esper.streams.exceptions import DeadLetterUnavailableError, DecodeError, TransientError, UnknownTopicError
from esper.streams.redact import redact_text

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


@dataclass(frozen=True)
class RetryPolicy:
    """How a handler's failure is retried before its record is dead-lettered: up to `max_attempts` calls in all,
    waiting `initial_backoff_s`, then `multiplier` times longer each time (at most `max_backoff_s`), when
    `retryable(error)` says the failure may pass. The default retries TransientError, TimeoutError, ConnectionError
    and retriable Kafka errors three times; a bad record (anything else) is dead-lettered at once."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    multiplier: float = 4.0
    max_backoff_s: float = 2.0
    retryable: Callable[[BaseException], bool] = field(default=lambda e: is_transient(e))

    def backoffs(self) -> Iterator[float]:
        """The waits between attempts (max_attempts - 1 of them)."""
        delay = self.initial_backoff_s
        for _ in range(self.max_attempts - 1):
            yield min(delay, self.max_backoff_s)
            delay *= self.multiplier


def is_transient(error: BaseException) -> bool:
    if isinstance(error, KafkaException):
        return bool(error.args and isinstance(error.args[0], KafkaError) and error.args[0].retriable())
    return isinstance(error, TransientError | TimeoutError | ConnectionError)


NO_RETRY = RetryPolicy(max_attempts=1)

Handler = Callable[[Record], None]
# Told of every dead letter this consumer published (after the broker acknowledged it), with the error behind it.
DeadLetterHook = Callable[[pb.DeadLetter, BaseException], None]


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    history_skipped: int = 0  # bad records before history_end (from_time), not dead-lettered again
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
        retry: RetryPolicy = RetryPolicy(),  # frozen: one shared default is safe
        sleep: Callable[[float], None] = time.sleep,
        _grouped: bool = True,  # False: from_time, which assigns partitions itself
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        grouped = _grouped
        config = kafka_config(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,  # librdkafka wants one even for assign(); unused there: nothing is committed
                "enable.auto.commit": grouped,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "fetch.wait.max.ms": 100,
                **overrides,
            }
        )
        self._consumer = Consumer(config)
        self._grouped = grouped
        if grouped:
            self._consumer.subscribe(
                list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        self._owns_producer = dead_letters is None
        self.dead_letters = dead_letters or DeadLetterPublisher.connect(bootstrap_servers, group_id)
        self.on_dead_letter = on_dead_letter
        self.retry = retry
        self._sleep = sleep
        self.stats = ConsumerStats()
        # Records whose dead letter was not acknowledged, by (topic, partition, offset), with the error that doomed
        # them: when they come again only the letter is retried, so a handler's side effects never happen twice.
        self._undelivered: dict[tuple[str, int, int], BaseException] = {}
        self.history_end: dict[tuple[str, int], int] = {}  # from_time: where each partition ended at start

    @classmethod
    def from_time(
        cls, bootstrap_servers: str, client_id: str, topic: str, since_ms: int, timeout_s: float = 10.0, **kwargs: Any
    ) -> LeylineConsumer:
        """Read every partition of `topic` from its first record at or after `since_ms` (wall clock, ms), outside
        any consumer group: no group is joined or left behind and nothing is committed. `history_end` says where
        each partition with records since then ended when it started, so the caller can tell history from what came
        after; a bad record of that history is logged and skipped, not dead-lettered again. Raises
        KafkaException or UnknownTopicError while the cluster cannot answer."""
        consumer = cls(bootstrap_servers, client_id, [], _grouped=False, **kwargs)
        try:
            consumer.history_end = consumer._assign_since(topic, since_ms, timeout_s)
        except BaseException:
            consumer.close()
            raise
        return consumer

    def _assign_since(self, topic: str, since_ms: int, timeout_s: float) -> dict[tuple[str, int], int]:
        meta = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise UnknownTopicError(f"{topic}: {meta.error if meta else 'no such topic'}")
        found = self._consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)], timeout=timeout_s
        )
        ends = {}
        starts = []
        for tp in found:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            start = tp.offset if tp.offset >= 0 else high  # -1: no record at or after since_ms, start at the end
            starts.append(TopicPartition(topic, tp.partition, start))
            if start < high:  # a partition with history to read before the caller is caught up
                ends[topic, tp.partition] = high
        self._consumer.assign(starts)
        return ends

    # -- rebalances: the in-flight state follows the partitions this member holds --------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s assigned %s", self.group_id, _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The partitions go (librdkafka's auto-commit commits what was stored first, so their next owner starts
        there): forget the letters owed for them, the next owner decides those records' fate again."""
        self._forget(partitions)
        log.info("%s revoked %s", self.group_id, _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (the session expired): another member may already own them, so nothing is committed."""
        self._forget(partitions)
        log.warning("%s lost %s", self.group_id, _names(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._undelivered = {c: e for c, e in self._undelivered.items() if (c[0], c[1]) not in gone}

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
        error = self._handle(handler, record)
        if error is not None:  # a record the handler cannot process is a dead letter, not a stuck partition
            self._dead_letter(msg, error)
            return
        self.stats.processed += 1
        self._store(msg)

    def _handle(self, handler: Handler, record: Record) -> Exception | None:
        """Run the handler, retrying what the policy calls transient; the error that stands in the end, if any."""
        backoffs = self.retry.backoffs()
        while True:
            try:
                handler(record)
                return None
            except Exception as e:
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                reason = redact_text(f"{type(e).__name__}: {e}")  # error text may quote the record's secrets
                delay = next(backoffs, None) if self.retry.retryable(e) else None
                if delay is None:
                    log.error("handler failed on %s: %s", where, reason)
                    log.debug("handler failure on %s", where, exc_info=True)
                    return e
                self.stats.retried += 1
                log.warning("handler failed on %s (retrying in %.2fs): %s", where, delay, reason)
                self._sleep(delay)

    def _store(self, msg: Message) -> None:
        """Mark a record processed (its offset is committed later); outside a group there is nothing to commit."""
        if self._grouped:
            self._consumer.store_offsets(message=msg)

    def _dead_letter(self, msg: Message, error: BaseException) -> None:
        coordinates = _coordinates(msg)
        if coordinates[2] < self.history_end.get(coordinates[:2], -1):
            # History that from_time reads again on every start: the consumers reading it when it was new had its
            # dead letter to write; a copy per restart would only bury the first.
            self.stats.history_skipped += 1
            log.warning("%s: skipped a bad record of the history at %s: %s", self.group_id, coordinates, error)
            return
        try:
            letter = self.dead_letters.publish(msg, error)
        except DeadLetterUnavailableError:
            self._undelivered[coordinates] = error
            raise
        self._undelivered.pop(coordinates, None)
        self.stats.dead_lettered += 1
        reason = type(error).__name__
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1
        self._store(msg)
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter, error)

    @property
    def owed_letters(self) -> int:
        """Records of partitions this member holds whose dead letter was refused and is still owed."""
        return len(self._undelivered)

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer holds now; empty until the group has assigned it some."""
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def position(self) -> dict[tuple[str, int], int]:
        """The next offset this consumer will read of each partition it holds (negative: not known yet)."""
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(self._consumer.assignment())}

    def close(self) -> None:
        """Commit what was processed, leave the group, flush our dead letters."""
        self._consumer.close()
        if self._owns_producer:
            self.dead_letters.producer.close(10)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def _coordinates(msg: Message) -> tuple[str, int, int]:
    """Where a record sits in the log: (topic, partition, offset)."""
    return msg.topic() or "", msg.partition() or 0, msg.offset() or 0
