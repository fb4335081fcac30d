"""The dead-letter path: a record that cannot be decoded or processed is kept, with its origin and the error."""

from __future__ import annotations

from confluent_kafka import Message

from esper.proto import leyline_pb2 as pb
from esper.streams.envelope import header_pairs
from esper.streams.producer import LeylineProducer
from esper.streams.topics import DEADLETTER

# The dead-letter topic allows 2 MiB records; keep the copied value well inside that with room for headers.
MAX_COPIED_VALUE = 1024 * 1024


def dead_letter_for(msg: Message, error: BaseException, consumer_group: str = "") -> pb.DeadLetter:
    """Build the DeadLetter of one consumed record (pure: no I/O)."""
    value = msg.value() or b""
    letter = pb.DeadLetter(
        origin_topic=msg.topic() or "",
        origin_partition=msg.partition() or 0,
        origin_offset=msg.offset() or 0,
        origin_key=msg.key() or b"",
        origin_value=value[:MAX_COPIED_VALUE],
        origin_value_truncated=len(value) > MAX_COPIED_VALUE,
        origin_timestamp_ms=msg.timestamp()[1],
        error_type=type(error).__name__,
        error=str(error)[:4000],
        consumer_group=consumer_group,
    )
    for key, raw in header_pairs(msg.headers()):
        letter.origin_headers.add(key=key, value=raw.encode() if isinstance(raw, str) else raw or b"")
    letter.failed_at.GetCurrentTime()
    return letter


class DeadLetterPublisher:
    """Publishes dead letters synchronously: the origin offset is stored only once its letter is acknowledged."""

    def __init__(self, producer: LeylineProducer, consumer_group: str = "") -> None:
        self.producer = producer
        self.consumer_group = consumer_group
        self.published = 0

    def publish(self, msg: Message, error: BaseException) -> pb.DeadLetter:
        letter = dead_letter_for(msg, error, self.consumer_group)
        self.producer.send_sync(DEADLETTER.name, letter, key=msg.key())
        self.published += 1
        return letter
