"""The producer helper: idempotent, acks=all, every delivery report checked.

Two ways to send: `send` (queue; a full local queue waits for space by serving delivery reports) for services,
and `try_send` (never blocks; a full queue is a counted drop) for the training process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from google.protobuf.message import Message as ProtoMessage

from esper.streams.envelope import PROTOBUF, Envelope, encode, new_envelope
from esper.streams.exceptions import ProduceError

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


class LeylineProducer:
    """Sends Leyline messages with their envelope; counts deliveries, failures and drops."""

    def __init__(self, bootstrap_servers: str, producer_id: str = "esper", **overrides: Any) -> None:
        self.producer_id = producer_id
        config = {
            **BASE_PRODUCER_CONFIG,
            "bootstrap.servers": bootstrap_servers,
            "client.id": producer_id,
            **overrides,
        }
        self._producer = Producer(config)
        self._lock = threading.Lock()
        self.stats = ProducerStats()

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
    ) -> Envelope:
        """Queue one message; when the local queue is full, serve delivery reports until there is room."""
        env = envelope or self.envelope_for(message)
        self._produce(topic, message, key, env, _chain(self._on_delivery, on_delivery), wait_for_room=True)
        return env

    def try_send(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None = None,
        *,
        envelope: Envelope | None = None,
    ) -> bool:
        """Queue one message without ever blocking; a full queue counts a drop and returns False."""
        env = envelope or self.envelope_for(message)
        return self._produce(topic, message, key, env, self._on_delivery, wait_for_room=False)

    def _produce(
        self,
        topic: str,
        message: ProtoMessage,
        key: str | bytes | None,
        env: Envelope,
        callback: DeliveryCallback,
        *,
        wait_for_room: bool,
    ) -> bool:
        value, headers = encode(message, env)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback)
                break
            except BufferError:
                if not wait_for_room:
                    with self._lock:
                        self.stats.dropped += 1
                    return False
                self._producer.poll(0.05)
        with self._lock:
            self.stats.sent += 1
        self._producer.poll(0)
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
        self.send(topic, message, key, envelope=envelope, on_delivery=lambda e, m: outcome.append((e, m)))
        self._producer.flush(timeout_s)
        if not outcome:
            raise ProduceError(f"no delivery report from {topic} within {timeout_s}s")
        err, msg = outcome[0]
        if err is not None:
            raise ProduceError(f"delivery to {topic} failed: {err}")
        return msg

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still queued when the time is up."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush for up to timeout_s, drop what is still queued (counted as failed), and release the client's
        connections; returns how many messages were dropped."""
        left = self.flush(timeout_s)
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
