"""Throughput of our producer helper against a bare confluent-kafka Producer, same messages, same broker.

Both use the same settings (idempotent, acks=all, lz4, linger 5 ms). The bare producer sends bytes encoded once
before the loop; ours builds an envelope per message (uuid, clock, headers), serializes and counts deliveries, so the
ratio is the whole cost of the helper. Runs alternate so that machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import statistics
import time
import uuid

from bench_codec import breaker_transition_packet
from common import Row, print_table, ratio_row
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from kafka_env import bench_bootstrap

from esper.streams.admin import admin_client
from esper.streams.envelope import encode, new_envelope
from esper.streams.producer import BASE_PRODUCER_CONFIG, LeylineProducer

MESSAGES = 50_000
ROUNDS = 3


def _bare(bootstrap: str, topic: str) -> float:
    packet = breaker_transition_packet()
    producer = Producer({**BASE_PRODUCER_CONFIG, "bootstrap.servers": bootstrap})
    value, headers = encode(packet, new_envelope(packet, producer="bare"))
    start = time.perf_counter()
    for i in range(MESSAGES):
        while True:
            try:
                producer.produce(topic, value=value, key=b"kasmina-0", headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return MESSAGES / (time.perf_counter() - start)


def _ours(bootstrap: str, topic: str) -> float:
    packet = breaker_transition_packet()
    producer = LeylineProducer(bootstrap, producer_id="bench")
    start = time.perf_counter()
    for _ in range(MESSAGES):
        producer.send(topic, packet, key=b"kasmina-0")
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - start
    assert producer.stats.failed == 0 and producer.stats.delivered == MESSAGES
    return MESSAGES / elapsed


def run() -> list[Row]:
    bootstrap = bench_bootstrap()
    topic = f"bench.producer.{uuid.uuid4().hex[:8]}"
    admin = admin_client(bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    try:
        bare, ours = [], []
        for _ in range(ROUNDS):
            bare.append(_bare(bootstrap, topic))
            ours.append(_ours(bootstrap, topic))
    finally:
        admin.delete_topics([topic])[topic].result()
    b, o = statistics.median(bare), statistics.median(ours)
    return [
        Row("bare Producer throughput (256 B packets)", b, "msg/s"),
        ratio_row("LeylineProducer.send throughput", o, "msg/s", "bare Producer", b),
    ]


if __name__ == "__main__":
    print_table(run(), "producer")
