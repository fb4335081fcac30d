"""Read a topic from outside any consumer group and turn each record into a JSON-ready dict."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition
from google.protobuf import json_format

from esper.streams.admin import ensure_topic
from esper.streams.envelope import decode, header_pairs, header_text
from esper.streams.exceptions import DecodeError


def record_as_dict(msg: Message) -> dict[str, Any]:
    """The record's coordinates, headers and decoded value, or the decode error (tail never dead-letters)."""
    key = msg.key()
    line: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp_ms": msg.timestamp()[1],
        "key": key.decode("utf-8", errors="replace") if key is not None else None,
        "headers": {k: header_text(v) for k, v in header_pairs(msg.headers())},
    }
    try:
        decoded = decode(msg.value(), msg.headers(), msg.topic())
    except DecodeError as e:
        line["error"] = f"{type(e).__name__}: {e}"
        return line
    line["type"] = decoded.envelope.message_type
    line["value"] = json_format.MessageToDict(decoded.message, preserving_proto_field_name=True)
    return line


def tail_records(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = True,
    max_records: int = 0,
    idle_timeout_s: float = 0.0,
) -> Iterator[dict[str, Any]]:
    partitions = ensure_topic(bootstrap_servers, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"esper-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            # what users are answered: never an aborted transaction's records (Tezzeret answers in transactions)
            "isolation.level": "read_committed",
        }
    )
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        seen, last = 0, time.monotonic()
        while max_records == 0 or seen < max_records:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle_timeout_s and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    yield {"topic": topic, "consumer_error": str(error)}
                continue
            last = time.monotonic()
            seen += 1
            yield record_as_dict(msg)
    finally:
        consumer.close()
