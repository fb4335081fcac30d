"""The producer helper: idempotent, acks=all, every delivery report checked.

Two ways to send: `send` (queue; a full local queue waits for space by serving delivery reports, up to the caller's
timeout) for services, and `try_send` (never blocks; a full queue is a counted drop) for the training process.

A fatal error (an idempotent producer that lost its sequence state, say) makes a librdkafka producer useless for
good: every later message would fail. The producer is then recreated: the messages the old one held fail through
their delivery reports (the caller's callback sees them), and later sends go to the new one. With
`recreate_on_fatal=False` it stays unhealthy instead and every send raises `ProducerFatalError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from google.protobuf.message import Message as ProtoMessage

from esper.streams.client_config import kafka_config, log_client_error
from esper.streams.envelope import PROTOBUF, Envelope, encode, new_envelope
from esper.streams.exceptions import ProduceError, ProducerFatalError, QueueFullError

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]

BASE_PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,  # off by default in librdkafka; forces acks=all and safe retries
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
}


@dataclass
class ProducerStats:
    """Counters since the producer was created (thread-safe updates under the producer's lock)."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str = ""
    fatal_errors: int = 0
    recreated: int = 0


class LeylineProducer:
    """Sends Leyline messages with their envelope; counts deliveries, failures and drops."""

    def __init__(
        self, bootstrap_servers: str, producer_id: str = "esper", *, recreate_on_fatal: bool = True, **overrides: Any
    ) -> None:
        self.producer_id = producer_id
        self.recreate_on_fatal = recreate_on_fatal
        self._config = kafka_config(
            {**BASE_PRODUCER_CONFIG, "bootstrap.servers": bootstrap_servers, "client.id": producer_id, **overrides},
            on_error=self._on_error,
        )
        self._producer = Producer(self._config)
        self._lock = threading.Lock()
        self._fatal: KafkaError | None = None  # set by the error callback, acted on by the next call
        self.stats = ProducerStats()

    @property
    def healthy(self) -> bool:
        """False while a fatal error has not been answered by a new producer (or forever, without recreation)."""
        return self._fatal is None

    def _on_error(self, err: KafkaError) -> None:
        log_client_error(err)
        if err.fatal():
            with self._lock:
                self.stats.fatal_errors += 1
                self.stats.last_error = str(err)
                self._fatal = err

    def _client(self) -> Producer:
        """The librdkafka producer to use now: a new one after a fatal error (see the module's docstring)."""
        if self._fatal is None:
            return self._producer
        if not self.recreate_on_fatal:
            raise ProducerFatalError(f"producer {self.producer_id} hit a fatal error: {self._fatal}")
        with self._lock:
            if self._fatal is None:  # another thread recreated it meanwhile
                return self._producer
            old, cause = self._producer, self._fatal
            self._producer = Producer(self._config)
            self._fatal = None
            self.stats.recreated += 1
        log.error("producer %s recreated after a fatal error: %s", self.producer_id, cause)
        old.purge()  # what it held fails through its delivery reports; it is released with its last reference
        old.poll(0)
        return self._producer

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
                self.stats.last_error = str(err)

    def envelope_for(
        self,
        message: ProtoMessage,
        *,
        correlation_id: str = "",
        causation_id: str = "",
        content_type: str = PROTOBUF,
    ) -> Envelope:
        return new_envelope(
            message,
            correlation_id=correlation_id,
            causation_id=causation_id,
            producer=self.producer_id,
            content_type=content_type,
        )

    def send(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None = None,
        *,
        envelope: Envelope | None = None,
        on_delivery: DeliveryCallback | None = None,
        timeout_s: float = 30.0,
    ) -> Envelope:
        """Queue one message; when the local queue is full, serve delivery reports until there is room, for at most
        timeout_s (then QueueFullError)."""
        env = envelope or self.envelope_for(message)
        self._produce(topic, message, key, env, _chain(self._on_delivery, on_delivery), room_timeout_s=timeout_s)
        return env

    def try_send(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None = None,
        *,
        envelope: Envelope | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> bool:
        """Queue one message without ever blocking; a full queue counts a drop and returns False."""
        env = envelope or self.envelope_for(message)
        return self._produce(topic, message, key, env, _chain(self._on_delivery, on_delivery), room_timeout_s=None)

    def _produce(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None,
        env: Envelope,
        callback: DeliveryCallback,
        *,
        room_timeout_s: float | None,
    ) -> bool:
        """room_timeout_s: how long a full queue may be waited on (None: not at all, a counted drop)."""
        value, headers = encode(message, env)
        deadline = None if room_timeout_s is None else time.monotonic() + room_timeout_s
        while True:
            producer = self._client()
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                break
            except BufferError:
                if deadline is None:
                    with self._lock:
                        self.stats.dropped += 1
                    return False
                if time.monotonic() >= deadline:
                    raise QueueFullError(
                        f"producer {self.producer_id}: local queue still full after {room_timeout_s}s ({topic})"
                    ) from None
                producer.poll(0.05)
        with self._lock:
            self.stats.sent += 1
        producer.poll(0)
        return True

    def send_sync(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None = None,
        *,
        envelope: Envelope | None = None,
        timeout_s: float = 30.0,
    ) -> Message:
        """Send one message and wait for its acknowledgement; raise ProduceError when it is not acknowledged."""
        outcome: list[tuple[KafkaError | None, Message]] = []
        deadline = time.monotonic() + timeout_s
        self.send(
            topic, message, key, envelope=envelope, on_delivery=lambda e, m: outcome.append((e, m)), timeout_s=timeout_s
        )
        while not outcome and time.monotonic() < deadline:
            self._client().flush(min(0.1, max(0.0, deadline - time.monotonic())))
        if not outcome:
            raise ProduceError(f"no delivery report from {topic} within {timeout_s}s")
        err, msg = outcome[0]
        if err is not None:
            raise ProduceError(f"delivery to {topic} failed: {err}")
        return msg

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._client().poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still queued when the time is up."""
        return int(self._client().flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush for up to timeout_s, drop what is still queued (counted as failed), and release the client's
        connections; returns how many messages were dropped."""
        left = self.flush(timeout_s) if self.healthy or self.recreate_on_fatal else len(self._producer)
        if left:
            self._producer.purge()
            self._producer.poll(0)  # their delivery reports (purged) count them as failed
        self._producer.close()
        return left

    def __len__(self) -> int:
        return len(self._producer)


def _chain(first: DeliveryCallback, second: DeliveryCallback | None) -> DeliveryCallback:
    if second is None:
        return first

    def both(err: KafkaError | None, msg: Message) -> None:
        first(err, msg)
        second(err, msg)

    return both
