"""The broker a benchmark talks to: ESPER_BOOTSTRAP_SERVERS when set, else a local broker of the benches' own
(`<home>/bench`, ports 100 above the project's), started, with the Leyline topics created. Its own, because the
benches fill the Leyline topics (a million records for the projections' rebuild): on the project's broker, the next
`make run` would answer their requests and fold their backlog before its own records. `make bench` stops it at the
end; its data stays, so the next run reuses the records."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from esper.settings import load_settings
from esper.streams.admin import create_topics
from esper.streams.local.broker import LocalBroker

PORT_OFFSET = 100


def bench_broker() -> LocalBroker:
    settings = load_settings()
    ports = {
        "broker_port": settings.broker_port + PORT_OFFSET,
        "controller_port": settings.controller_port + PORT_OFFSET,
    }
    return LocalBroker(load_settings(**ports, bootstrap_servers=None).cluster(), name="bench")


def bench_bootstrap() -> str:
    servers = load_settings().bootstrap_servers or bench_broker().up(timeout_s=180).bootstrap_servers
    create_topics(servers)
    return servers


def watermarks(c: Consumer, topic: str, partition: int, wait_s: float = 60.0) -> tuple[int, int]:
    """A partition's (low, high) offsets, waiting for a just-created topic's leader (a fresh broker answers
    NOT_LEADER_FOR_PARTITION for a moment after create_topics)."""
    give_up = time.monotonic() + wait_s
    while True:
        try:
            low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return low, high
        except KafkaException:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)
