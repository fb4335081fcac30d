"""Replay: rebuild projections from their source topics (never the changelogs) into a fresh store, as of now or as
of a moment in the log, and report a digest per table.

What is read: every partition of every source topic of the selected projections, from its first record, with no
consumer group (partitions are assigned; nothing is committed, no group is left behind), isolation read_committed
(aborted transactions are never folded), up to the end each partition had when the replay started, or less with
`until`:
- `until_offset`: {(topic, partition): offset} folds that partition up to and including `offset` (other partitions
  are read to their end); a plain int applies to every partition.
- `until_time_ms`: a partition stops at its first record whose timestamp is after `until_time_ms` (the record at
  exactly that millisecond is folded): the state "when it happened".
Both limits apply together when both are given.

Order: each partition is folded in offset order; partitions are interleaved as the fetches come, so two replays
(and the live app) may interleave them differently. That is sound only because the reducers give the same state in
any interleaving of partitions (see esper.projections.reducers): keys mostly follow the records' keys, and where
one entity is fed from several partitions or topics (a Tezzeret breaker's failures and transitions are keyed by
event kind; a compilation is fed by requests, results and audit records) it keeps a sub-record per source and takes
the greatest of competing values by a total order on the events. tests/integration/test_replay.py checks it by
folding the same facts partition by partition in reverse. Idempotence for a resent event holds within the
reducers' SEEN_WINDOW (event ids remembered per entity and partition).

Records that do not decode (garbage) are counted by reason and skipped, never dead-lettered: a replay reads history
whose letters were written when it was new. The dead-letter projection reads leyline.deadletter itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from esper.projections import digest, facts, reducers
from esper.projections.store import ProjectionStore
from esper.streams.client_config import kafka_config
from esper.streams.exceptions import ClusterUnavailableError, DecodeError, UnknownTopicError

__all__ = [
    "ReplayError",
    "ReplayResult",
    "Until",
    "parse_until",
    "replay",
    "select",
]

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class ReplayError(Exception):
    """A replay could not be done: an unknown projection, an `--until` that does not parse, a silent cluster."""


@dataclass(frozen=True)
class Until:
    """Where a replay stops: offsets per partition (inclusive) and/or a time in epoch milliseconds (inclusive)."""

    offsets: dict[Partition, int] = field(default_factory=dict)
    time_ms: int | None = None


def parse_until(values: Iterable[str]) -> Until:
    """`--until` values: epoch milliseconds (digits only), an ISO 8601 time (one without an offset is UTC), or
    `TOPIC:PARTITION:OFFSET` (one per partition). At most one time. ReplayError says what does not parse."""
    offsets: dict[Partition, int] = {}
    time_ms: int | None = None
    for raw in values:
        text = raw.strip()
        moment = _parse_time(text)
        if moment is None:
            where, offset = _parse_offset(text)
            if where in offsets:
                raise ReplayError(f"--until names {where[0]}:{where[1]} twice")
            offsets[where] = offset
        elif time_ms is not None:
            raise ReplayError(f"--until gives more than one time ({text!r})")
        else:
            time_ms = moment
    return Until(offsets, time_ms)


def _parse_time(text: str) -> int | None:
    """Epoch milliseconds or an ISO time, else None. Tried first: no TOPIC:PARTITION:OFFSET parses as a time."""
    if _is_number(text):
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _parse_offset(text: str) -> tuple[Partition, int]:
    topic, partition, offset = [*text.rsplit(":", 2), "", ""][:3]
    if not (topic and _is_number(partition) and _is_number(offset)):
        raise ReplayError(f"--until {text!r} is none of: epoch milliseconds, an ISO 8601 time, TOPIC:PARTITION:OFFSET")
    return (topic, int(partition)), int(offset)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def select(names: Sequence[str] | None) -> list[reducers.Projection]:
    """The projections named (all of them for None or empty), in their registry order; ReplayError for a name that
    is not one."""
    if not names:
        return list(reducers.PROJECTIONS)
    unknown = [n for n in names if n not in reducers.PROJECTIONS_BY_NAME]
    if unknown:
        known = ", ".join(reducers.PROJECTIONS_BY_NAME)
        raise ReplayError(f"no projection named {', '.join(unknown)} (known: {known})")
    return [p for p in reducers.PROJECTIONS if p.name in set(names)]


@dataclass
class ReplayResult:
    """What a replay built: a digest per table, what it read, and where each partition stopped."""

    digests: dict[str, str]
    read: int = 0  # records inside the limits
    folded: int = 0  # of those, decoded and handed to the fold
    skipped: int = 0  # of those, garbage (did not decode)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    stopped_at: dict[Partition, int] = field(default_factory=dict)  # the next offset not folded, per partition

    def counts(self) -> dict[str, int]:
        return {"read": self.read, "folded": self.folded, "skipped": self.skipped}


def replay(
    bootstrap: str,
    store: ProjectionStore,
    *,
    until_offset: Mapping[Partition, int] | int | None = None,
    until_time_ms: int | None = None,
    projections: Sequence[str] | None = None,
    idle_timeout_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayResult:
    """Fold the source topics of `projections` (all when None) into `store` (fresh: a replay adds to what is there)
    and return the digests of their tables. Raises ReplayError for an unknown projection, a fatal consumer error or
    when nothing arrives for `idle_timeout_s` while partitions are still unread; UnknownTopicError when a source
    topic does not exist; ClusterUnavailableError when the cluster does not answer."""
    started = clock()
    chosen = select(projections)
    # fold reads, sets and setdefaults tables and entities: a store's tables serve as well as dicts.
    tables = cast(reducers.Tables, {p.name: store.table(p.name) for p in chosen})
    topics = sorted({t for p in chosen for t in p.topics})
    result = ReplayResult(digests={})

    def fold(message: Message) -> None:
        result.read += 1
        try:
            fact = facts.fact_from_kafka(message)
        except DecodeError as e:
            result.skipped += 1
            reason = type(e).__name__
            result.skip_reasons[reason] = result.skip_reasons.get(reason, 0) + 1
            log.debug("replay skipped %s[%s]@%s: %s", message.topic(), message.partition(), message.offset(), e)
            return
        reducers.fold(tables, fact, chosen)
        result.folded += 1

    history = _History(bootstrap, topics, until_offset, until_time_ms)
    try:
        history.read(fold, idle_timeout_s, clock)
    finally:
        history.close()
    result.stopped_at = history.stopped_at
    result.digests = digest.digests(tables)
    result.duration_s = clock() - started
    return result


class _History:
    """A group-less read_committed consumer of whole topics up to where they ended at start (or an `until`)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        until_offset: Mapping[Partition, int] | int | None,
        until_time_ms: int | None,
        timeout_s: float = 10.0,
    ) -> None:
        self._consumer = Consumer(
            kafka_config(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"esper-replay-{uuid.uuid4().hex[:12]}",  # librdkafka wants one; never joined
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,  # caught up to the stable end (an open transaction's start)
                    "auto.offset.reset": "earliest",
                }
            )
        )
        self._until_offset = until_offset
        self._until_time_ms = until_time_ms
        self.stopped_at: dict[Partition, int] = {}
        self._ends: dict[Partition, int] = {}  # partitions still to read: the end they had at start
        try:
            self._assign(topics, timeout_s)
        except KafkaException as e:
            self._consumer.close()
            raise ClusterUnavailableError(f"{bootstrap}: {e}") from e
        except BaseException:
            self._consumer.close()
            raise

    def _limit(self, where: Partition) -> int | None:
        if isinstance(self._until_offset, int):
            return self._until_offset
        return None if self._until_offset is None else self._until_offset.get(where)

    def _assign(self, topics: Sequence[str], timeout_s: float) -> None:
        starts = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None:
                raise UnknownTopicError(f"{topic}: {meta.error if meta else 'no such topic'}")
            for partition in sorted(meta.partitions):
                where = (topic, partition)
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                limit = self._limit(where)
                self.stopped_at[where] = low
                if high <= low or (limit is not None and limit < low):
                    continue  # nothing to read (empty, or the limit is before what the log still holds)
                self._ends[where] = high
                starts.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        if starts:
            self._consumer.assign(starts)

    def read(self, fold: Callable[[Message], None], idle_timeout_s: float, clock: Callable[[], float]) -> None:
        last_seen = clock()
        while self._ends:
            batch = self._consumer.consume(num_messages=1000, timeout=0.5)
            if batch:
                last_seen = clock()
            elif clock() - last_seen > idle_timeout_s:
                left = ", ".join(f"{t}[{p}]" for t, p in sorted(self._ends))
                raise ReplayError(f"nothing arrived for {idle_timeout_s:.0f}s with {left} still unread")
            for message in batch:
                self._take(message, fold)

    def _take(self, message: Message, fold: Callable[[Message], None]) -> None:
        where = (message.topic() or "", message.partition() or 0)
        end = self._ends.get(where)
        if end is None:
            return  # a partition already done (a fetch in flight when it was unassigned)
        offset = message.offset() or 0
        err = message.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._done(where, offset)
                return
            if err.fatal():
                raise ReplayError(f"the consumer failed: {err}")
            log.warning("replay: %s", err)
            return
        limit = self._limit(where)
        beyond_time = self._until_time_ms is not None and message.timestamp()[1] > self._until_time_ms
        if offset >= end or (limit is not None and offset > limit) or beyond_time:
            self._done(where, offset)
            return
        fold(message)
        if offset + 1 >= end or offset == limit:
            self._done(where, offset + 1)

    def _done(self, where: Partition, next_offset: int) -> None:
        del self._ends[where]
        self.stopped_at[where] = next_offset
        self._consumer.incremental_unassign([TopicPartition(*where)])

    def close(self) -> None:
        self._consumer.close()


def format_time_ms(ms: int) -> str:
    """An epoch-milliseconds time as ISO 8601 UTC, for messages and output."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
