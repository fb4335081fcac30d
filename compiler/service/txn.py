"""The answer path: one Kafka transaction carries a batch of answers (results, kernels records, audit records, dead
letters, safety events) and the consumed offsets they answer, so a read_committed reader sees all of a batch or
none of it, and a record's answer and its offset commit are never apart (KIP-98; KIP-447 fencing through the
consumer's group metadata, so a member that lost its partitions in a rebalance cannot commit for them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from google.protobuf.message import Message

from esper.streams.client_config import kafka_config
from esper.streams.envelope import encode, new_envelope

__all__ = ["AnswerProducer", "Output", "TxnAbortedError", "TxnFatalError"]

log = logging.getLogger(__name__)


class TxnAbortedError(Exception):
    """The transaction was aborted (nothing of it is visible); the batch may be tried again. `fenced` says the
    group moved on (a rebalance): this member's view of its partitions is stale and must be rebuilt first."""

    def __init__(self, message: str, *, fenced: bool) -> None:
        super().__init__(message)
        self.fenced = fenced


class TxnFatalError(Exception):
    """The producer cannot go on (fenced by a newer instance with the same transactional id, or a fatal error)."""


# Errors of send_offsets/commit that mean the consumer group's generation moved on
_FENCING = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
}


@dataclass(frozen=True)
class Output:
    """One record of an answer batch; its envelope says which request (correlation) and record (causation) it
    answers."""

    topic: str
    key: str
    message: Message
    correlation_id: str = ""
    causation_id: str = ""
    headers: tuple[tuple[str, bytes], ...] = field(default=())


class AnswerProducer:
    """A transactional producer; `transactional_id` is stable per service instance, so a restarted instance fences
    its predecessor (its open transaction is aborted) before it answers anything."""

    def __init__(self, bootstrap_servers: str, transactional_id: str, *, producer_name: str, timeout_s: float = 30.0):
        self.transactional_id = transactional_id
        self.producer_name = producer_name
        self.timeout_s = timeout_s
        self.fatal: str = ""
        self._producer = Producer(
            kafka_config(
                {
                    "bootstrap.servers": bootstrap_servers,
                    "transactional.id": transactional_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 2,
                    "transaction.timeout.ms": 60_000,
                    "message.max.bytes": 2 * 1024 * 1024 + 65536,
                },
                self._on_error,
            )
        )
        self._producer.init_transactions(timeout_s)
        self.transactions = 0
        self.aborted = 0

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()
        log.log(logging.ERROR if err.fatal() else logging.DEBUG, "answer producer: %s", err)

    def commit(self, outputs: Sequence[Output], offsets: Sequence[TopicPartition], group_metadata: object) -> None:
        """Produce `outputs` and commit `offsets` (with their metadata) atomically. TxnAbortedError when the
        transaction was aborted (nothing visible), TxnFatalError when this producer is finished."""
        try:
            self._producer.begin_transaction()
            for out in outputs:
                envelope = new_envelope(
                    out.message,
                    correlation_id=out.correlation_id,
                    causation_id=out.causation_id,
                    producer=self.producer_name,
                )
                value, headers = encode(out.message, envelope)
                self._producer.produce(
                    out.topic, value=value, key=out.key.encode(), headers=headers + list(out.headers)
                )
                self._producer.poll(0)
            if offsets:
                self._producer.send_offsets_to_transaction(list(offsets), group_metadata, self.timeout_s)
            self._commit()
            self.transactions += 1
        except KafkaException as e:
            self._fail(e)
        except BufferError as e:  # the local queue is full: nothing was committed
            self._abort(f"local produce queue full: {e}", fenced=False)

    def _commit(self) -> None:
        for _ in range(3):
            try:
                self._producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as e:
                err = e.args[0]
                if not err.retriable() or err.txn_requires_abort() or err.fatal():
                    raise
        self._producer.commit_transaction(self.timeout_s)

    def _fail(self, e: KafkaException) -> None:
        err: KafkaError = e.args[0]
        if err.fatal():
            self.fatal = err.str()
            raise TxnFatalError(f"{self.transactional_id}: {err.str()}") from e
        self._abort(err.str(), fenced=err.code() in _FENCING)

    def _abort(self, why: str, *, fenced: bool) -> None:
        self.aborted += 1
        try:
            self._producer.abort_transaction(self.timeout_s)
        except KafkaException as e:
            err = e.args[0]
            if err.fatal():
                self.fatal = err.str()
                raise TxnFatalError(f"{self.transactional_id}: {err.str()}") from e
            # no transaction in progress (begin failed) is fine; anything else: the next begin will say
            log.debug("abort_transaction: %s", err)
        raise TxnAbortedError(why, fenced=fenced)

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
