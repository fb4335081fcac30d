"""The dead-letter path: a record that cannot be decoded or processed is kept, with its origin and the error.

Dead letters are kept for 30 days and read by operators: secrets are redacted (esper.streams.redact) from the copied
value, headers and error before a letter is built."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException, Message

from esper.proto import leyline_pb2 as pb
from esper.streams.envelope import header_pairs
from esper.streams.exceptions import DeadLetterUnavailableError, ProduceError
from esper.streams.producer import LeylineProducer
from esper.streams.redact import redact_header, redact_text, redact_value
from esper.streams.topics import DEADLETTER

# The dead-letter topic allows records of DEADLETTER_MAX_BYTES; what is copied of the origin record stays well
# inside it whatever the origin cluster allowed (value, key and headers each have a budget; the rest is cut and
# flagged), so a record too big for its dead letter cannot exist.
DEADLETTER_MAX_BYTES = int(DEADLETTER.config["max.message.bytes"])
MAX_COPIED_VALUE = 1024 * 1024
MAX_COPIED_KEY = 64 * 1024
MAX_COPIED_HEADERS = 256 * 1024
MAX_ERROR_CHARS = 4000


def dead_letter_for(msg: Message, error: BaseException, consumer_group: str = "") -> pb.DeadLetter:
    """Build the DeadLetter of one consumed record, its secrets redacted (pure: no I/O)."""
    value = msg.value() or b""
    key = msg.key() or b""
    redacted, secrets = redact_value(value, header_pairs(msg.headers()), msg.topic())
    value = value if redacted is None else redacted
    letter = pb.DeadLetter(
        origin_topic=msg.topic() or "",
        origin_partition=msg.partition() or 0,
        origin_offset=msg.offset() or 0,
        origin_key=key[:MAX_COPIED_KEY],
        origin_key_truncated=len(key) > MAX_COPIED_KEY,
        origin_value=value[:MAX_COPIED_VALUE],
        origin_value_truncated=len(value) > MAX_COPIED_VALUE,
        origin_value_redacted=redacted is not None,
        origin_timestamp_ms=msg.timestamp()[1],
        error_type=type(error).__name__,
        error=redact_text(str(error), secrets)[:MAX_ERROR_CHARS],
        consumer_group=consumer_group,
    )
    budget = MAX_COPIED_HEADERS
    for name, raw in header_pairs(msg.headers()):
        data = redact_header(name, raw.encode() if isinstance(raw, str) else raw or b"")
        budget -= len(name) + len(data)
        if budget < 0:
            letter.origin_headers_truncated = True
            break
        letter.origin_headers.add(key=name, value=data)
    letter.failed_at.GetCurrentTime()
    return letter


class DeadLetterPublisher:
    """Publishes dead letters synchronously: the origin offset is stored only once its letter is acknowledged."""

    def __init__(self, producer: LeylineProducer, consumer_group: str = "", timeout_s: float = 10.0) -> None:
        self.producer = producer
        self.consumer_group = consumer_group
        self.timeout_s = timeout_s
        self.published = 0

    @classmethod
    def connect(cls, bootstrap_servers: str, consumer_group: str) -> DeadLetterPublisher:
        """A publisher with its own producer, allowed records as large as the dead-letter topic takes."""
        limits: dict[str, Any] = {"message.max.bytes": DEADLETTER_MAX_BYTES}
        producer = LeylineProducer(bootstrap_servers, producer_id=f"{consumer_group}-deadletter", **limits)
        return cls(producer, consumer_group)

    def publish(self, msg: Message, error: BaseException) -> pb.DeadLetter:
        """Raises DeadLetterUnavailableError when the letter was not acknowledged (the caller must not settle)."""
        letter = dead_letter_for(msg, error, self.consumer_group)
        try:
            self.producer.send_sync(DEADLETTER.name, letter, key=letter.origin_key, timeout_s=self.timeout_s)
        except (ProduceError, KafkaException, BufferError) as e:
            raise DeadLetterUnavailableError(
                f"dead letter of {letter.origin_topic}[{letter.origin_partition}]@{letter.origin_offset} "
                f"not acknowledged: {e}"
            ) from e
        self.published += 1
        return letter
