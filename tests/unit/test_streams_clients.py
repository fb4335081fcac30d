"""The Kafka client plumbing without a broker: librdkafka's complaints go through Python logging (never raw to
stderr), a full local queue is waited on for the caller's timeout only, and a handler's transient failure is retried
with backoff before its record is dead-lettered."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import cast

import pytest
from confluent_kafka import KafkaError, KafkaException

from esper.proto import leyline_pb2 as pb
from esper.streams.consumer import NO_RETRY, LeylineConsumer, Record, RetryPolicy, is_transient
from esper.streams.exceptions import QueueFullError, TransientError
from esper.streams.producer import LeylineProducer
from esper.streams.topics import SAFETY

NOWHERE = "127.0.0.1:1"


def test_librdkafka_lines_go_to_python_logging_not_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="esper.streams")
    producer = LeylineProducer(NOWHERE, "test-logs")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not caplog.records:
        producer.poll(0.1)
    producer.close(0)
    assert any("Connection refused" in r.getMessage() for r in caplog.records)
    err = capfd.readouterr().err
    assert "%3|" not in err and "%4|" not in err


def test_a_full_local_queue_is_waited_on_for_the_callers_timeout_only() -> None:
    producer = LeylineProducer(NOWHERE, "test-full", **{"queue.buffering.max.messages": 1})
    event = pb.SafetyEvent(event_id="e", subsystem="test")
    producer.send(SAFETY.name, event, timeout_s=0.1)
    start = time.monotonic()
    with pytest.raises(QueueFullError):
        producer.send(SAFETY.name, event, timeout_s=0.3)
    assert time.monotonic() - start < 10  # bounded (a generous bound: the point is that it returns)
    assert not producer.try_send(SAFETY.name, event) and producer.stats.dropped == 1
    producer.close(0)


def record() -> Record:
    return cast(Record, SimpleNamespace(topic="t", partition=0, offset=3))


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, record: Record) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def consumer() -> LeylineConsumer:
    c = LeylineConsumer(NOWHERE, "test-retry", ["t"], retry=RetryPolicy(max_attempts=3), sleep=lambda s: None)
    c.dead_letters.producer.close(0)
    return c


def test_a_transient_failure_is_retried_with_backoff(consumer: LeylineConsumer) -> None:
    waits: list[float] = []
    consumer._sleep = waits.append
    handler = Flaky([TransientError("store busy"), TimeoutError("slow")])
    assert consumer._handle(handler, record()) is None
    assert handler.calls == 3 and waits == [0.1, 0.4] and consumer.stats.retried == 2


def test_a_failure_that_lasts_past_the_attempts_is_returned_for_the_dead_letters(consumer: LeylineConsumer) -> None:
    handler = Flaky([TransientError("1"), TransientError("2"), TransientError("3"), TransientError("4")])
    error = consumer._handle(handler, record())
    assert isinstance(error, TransientError) and str(error) == "3" and handler.calls == 3


def test_a_bad_record_is_not_retried(consumer: LeylineConsumer) -> None:
    handler = Flaky([ValueError("bad record")])
    assert isinstance(consumer._handle(handler, record()), ValueError) and handler.calls == 1


def test_the_policy_is_injectable() -> None:
    assert list(NO_RETRY.backoffs()) == []
    assert list(RetryPolicy(max_attempts=5, initial_backoff_s=1, multiplier=3, max_backoff_s=5).backoffs()) == [
        1,
        3,
        5,
        5,
    ]
    everything = RetryPolicy(retryable=lambda e: True)
    assert everything.retryable(ValueError())
    assert is_transient(KafkaException(KafkaError(KafkaError._TRANSPORT, "down", retriable=True)))
    assert not is_transient(KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad")))


def test_the_command_shows_librdkafkas_own_lines_from_error_unless_asked_for_more() -> None:
    from esper.logs import configure
    from esper.streams.client_config import LIBRDKAFKA_LOG

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # pytest's own capture handlers, put back after
    try:
        configure("WARNING")
        assert LIBRDKAFKA_LOG.getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("esper.safety").getEffectiveLevel() == logging.WARNING
        configure("debug")
        assert LIBRDKAFKA_LOG.getEffectiveLevel() == logging.DEBUG
        with pytest.raises(ValueError, match="unknown log level"):
            configure("loud")
    finally:
        LIBRDKAFKA_LOG.setLevel(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)
