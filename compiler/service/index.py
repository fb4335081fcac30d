"""What the service knows of two logs, read whole by every instance outside any consumer group (each instance
needs all of them, not its share): `leyline.blueprints`, so a CompilationRequest may name a blueprint by id, and
`leyline.kernels`, the L3 cache's index of artifacts in the shared store.

The blueprint table is bounded by bytes (least recently used out first); a request whose blueprint is not in it waits
until this reader has read as far as the topic's end was when the request arrived, so a blueprint produced just
before a request that names it is always found.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from cachetools import LRUCache
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from esper.proto import leyline_pb2 as pb
from esper.streams.client_config import kafka_config
from esper.streams.envelope import decode
from esper.streams.exceptions import DecodeError
from esper.streams.topics import BLUEPRINTS, KERNELS

__all__ = ["LogIndex"]

log = logging.getLogger(__name__)


class LogIndex:
    """A reader thread over every partition of both topics, from their beginnings, read_committed."""

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str,
        on_kernel: Callable[[pb.CompiledKernelArtifact], None],
        *,
        blueprint_budget_bytes: int = 256 << 20,
        timeout_s: float = 10.0,
    ) -> None:
        self._on_kernel = on_kernel
        self._blueprints: LRUCache[str, bytes] = LRUCache(maxsize=blueprint_budget_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self._positions: dict[tuple[str, int], int] = {}
        # ends of the blueprints topic asked for by lanes (want_end), measured by the reader thread
        self._wanted = self._measured = self._reached = 0
        self._ends: deque[tuple[int, dict[tuple[str, int], int]]] = deque()
        self._consumer = Consumer(
            kafka_config(
                {
                    "bootstrap.servers": bootstrap_servers,
                    "group.id": f"{client_id}.index",  # required by librdkafka; assign() joins no group
                    "client.id": f"{client_id}.index",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 50,
                }
            )
        )
        self._partitions: list[TopicPartition] = []
        for topic in (BLUEPRINTS.name, KERNELS.name):
            meta = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None:
                self._consumer.close()
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"{topic}: no such topic"))
            self._partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        self._consumer.assign(self._partitions)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-index", daemon=True)
        self.records = 0
        self.skipped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def blueprint(self, blueprint_id: str) -> pb.BlueprintIR | None:
        with self._lock:
            data = self._blueprints.get(blueprint_id)
        return None if data is None else pb.BlueprintIR.FromString(data)

    def want_end(self) -> int:
        """Ask where the blueprints topic ends now; returns a ticket for `reached`. The reader thread measures the
        ends (one measurement serves every ticket asked before it), so a lane never waits on a broker round trip."""
        with self._lock:
            self._wanted += 1
            return self._wanted

    def reached(self, ticket: int) -> bool:
        """True once this reader has read as far as the topic ended when `ticket` was asked for."""
        with self._lock:
            return self._reached >= ticket

    def _measure_ends(self) -> None:
        with self._lock:
            wanted = self._wanted
        if wanted <= self._measured:
            return
        ends = {}
        for tp in self._partitions:
            if tp.topic == BLUEPRINTS.name:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), 5.0)
                ends[tp.topic, tp.partition] = high
        self._measured = wanted
        self._ends.append((wanted, ends))

    def _settle_ends(self) -> None:
        with self._lock:
            while self._ends and all(self._positions.get(tp, 0) >= end for tp, end in self._ends[0][1].items()):
                self._reached = self._ends.popleft()[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._measure_ends()
                batch = self._consumer.consume(500, 0.1)
                for msg in batch:
                    if msg.error() is None:
                        self._take(msg.topic() or "", msg.value(), msg.headers())
                positions = self._consumer.position(self._partitions)
            except KafkaException as e:  # the broker away: librdkafka reconnects, we keep asking
                log.warning("log index: %s", e)
                self._stop.wait(0.5)
                continue
            with self._lock:
                for tp in positions:
                    if tp.offset >= 0:
                        self._positions[tp.topic, tp.partition] = tp.offset
            self._settle_ends()

    def _take(self, topic: str, value: bytes | None, headers: object) -> None:
        try:
            message = decode(value, headers, topic).message  # type: ignore[arg-type]
        except DecodeError as e:  # the group consumer dead-letters bad blueprints; the index only skips them
            self.skipped += 1
            log.debug("log index skipped a record of %s: %s", topic, e)
            return
        self.records += 1
        if isinstance(message, pb.BlueprintIR):
            with self._lock:
                try:
                    self._blueprints[message.blueprint_id] = message.SerializeToString()
                except ValueError:  # one blueprint over the whole budget: not kept
                    self.skipped += 1
        elif isinstance(message, pb.CompiledKernelArtifact):
            self._on_kernel(message)
