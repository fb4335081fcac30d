"""The projections' fold, measured three ways over one realistic mixed log (Kasmina breakers, pauses, quota and
seeds, Tezzeret breakers and conservative mode, compilations asked, answered, completed, audited and stored,
telemetry packets of several metric points, dead letters), every record keyed as its producer keys it:
- (a) the pure reducers alone: `reducers.fold` over FOLD_EVENTS facts decoded beforehand, one core, no Kafka;
- (b) the first SLICE_EVENTS records of the Leyline source topics (the same share of each partition, from its
  start) read by a bare confluent-kafka consume-decode-fold loop of the same reducers into dicts, against `replay()`
  with the same `until_offset` into MemoryTables (ratio; rounds alternate);
- (c) `replay()` rebuilding every projection into a fresh RocksDB store (RocksTables) from the same topics;
- (d) the live app, one `esper projections run` worker of a fresh app id reading the same topics from their start:
  source records routed per second and routed records folded per second over a steady window (its consumer
  group's committed offsets, read from outside so the worker is not slowed by being asked), against (b)'s bare
  loop in the same run.
For (b) and (c) the source topics are first topped up with the same mixed log until they hold REPLAY_EVENTS records
(produced once with a bare Producer, then reused by every later run against the same broker: replay reads the
Leyline topics by name), so (c) and (d) read whatever the topics hold: the records read are reported beside each
figure.

ESPER_BOOTSTRAP_SERVERS names the broker (else the benches' own local one, bench/kafka_env.py);
ESPER_BENCH_REPLAY_EVENTS changes the 1,000,000. Figures only, never asserted.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import Row, print_table, ratio_row
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from google.protobuf.message import Message
from kafka_env import bench_bootstrap, watermarks

from esper.projections import digest, facts, reducers
from esper.projections.replay import ReplayResult, replay
from esper.projections.store import MemoryTables, RocksTables
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import Envelope, HeaderValue, encode
from esper.streams.exceptions import DecodeError
from esper.streams.producer import BASE_PRODUCER_CONFIG
from esper.streams.topics import (
    AUDIT,
    BLUEPRINTS,
    COMPILATION_EMERGENCY,
    COMPILATION_REQUESTS,
    COMPILATION_RESULTS,
    DEADLETTER,
    KERNELS,
    SAFETY,
    TELEMETRY,
    topic_spec,
)

FOLD_EVENTS = 200_000
FOLD_ROUNDS = 3  # each from empty tables; the median is reported
SLICE_EVENTS = 200_000  # (b) reads this many of the topics' records, the same share of each partition
SLICE_ROUNDS = 3
REPLAY_EVENTS = int(os.environ.get("ESPER_BENCH_REPLAY_EVENTS", "1000000"))
SOURCE_TOPICS = sorted({t for p in reducers.PROJECTIONS for t in p.topics})
KASMINA = [f"kasmina-{i:02d}" for i in range(16)]
TEZZERET = ["tezzeret-0", "tezzeret-1"]
SLOTS = [f"slot-{i}" for i in range(8)]
KASMINA_BREAKERS = ["graft", "step", "checkpoint"]
TEZZERET_BREAKERS = ["compile", "store"]
METRIC_NAMES = ["loss", "step_ms", "grad_norm", "lr", "tokens_per_s", "gpu_mem_gb", "seed_alpha", "queue_depth"]
SEED_PATH = [pb.SEED_DORMANT, pb.SEED_GERMINATED, pb.SEED_TRAINING, pb.SEED_BLENDING, pb.SEED_FOSSILIZED]
OPEN_FLOWS = 64  # compilations in flight at once, their steps interleaved
START_MS = 1_780_000_000_000

Partition = tuple[str, int]


@dataclass(frozen=True)
class Record:
    topic: str
    key: str
    value: bytes
    headers: list[tuple[str, HeaderValue]]
    at_ms: int


@dataclass
class _Flow:
    """One compilation's records still to come, in their order."""

    steps: list[tuple[str, Message, str]] = field(default_factory=list)


class MixedLog:
    """A deterministic mixed log (ids carry `tag`, so two runs' records are different events)."""

    def __init__(self, tag: str, seed: int = 1) -> None:
        self.tag, self.rng = tag, random.Random(seed)
        self.n = 0
        self.flows: list[_Flow] = []
        self.calls: dict[str, int] = {}
        self.seed_stage: dict[str, int] = {}

    def records(self, count: int) -> Iterator[Record]:
        kinds = [self._telemetry, self._breaker, self._kasmina, self._compilation, self._rare]
        weights = [35, 15, 15, 33, 2]
        for _ in range(count):
            self.n += 1
            topic, message, key = self.rng.choices(kinds, weights)[0]()
            at = START_MS + self.n
            value, headers = encode(message, Envelope(message.DESCRIPTOR.full_name, message_id=self._id("m")))
            yield Record(topic, key, value, headers, at)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self.tag}-{self.n}"

    def _safety(self, detail: Message, source: str, subsystem: str) -> tuple[str, Message, str]:
        event = safety_event(pb.TELEMETRY_INFO, "bench", detail, source_id=source, subsystem=subsystem)
        event.event_id = self._id("e")
        event.timestamp.FromMilliseconds(START_MS + self.n)
        # Kasmina keys its safety events by instance, Tezzeret's lane by event kind.
        key = f"kasmina/{source}" if subsystem == "kasmina" else f"tezzeret/{event.WhichOneof('detail')}"
        return SAFETY.name, event, key

    def _telemetry(self) -> tuple[str, Message, str]:
        source = self.rng.choice(KASMINA + TEZZERET)
        packet = pb.TelemetryPacket(
            packet_id=self._id("p"), source_subsystem=source.split("-")[0], source_id=source, level=pb.TELEMETRY_INFO
        )
        packet.timestamp.FromMilliseconds(START_MS + self.n)
        for name in self.rng.sample(METRIC_NAMES, self.rng.randint(3, 6)):
            packet.metrics.add(name=name, value=self.rng.random(), type=pb.METRIC_GAUGE, labels={"slot": "all"})
        if self.rng.random() < 0.2:
            packet.metrics.add(
                name="step_ms_hist",
                type=pb.METRIC_HISTOGRAM,
                bucket_bounds=[1, 5, 10, 50],
                bucket_counts=[3, 9, 4, 1],
                count=17,
                sum=120.0,
            )
        return TELEMETRY.name, packet, source

    def _breaker(self) -> tuple[str, Message, str]:
        kasmina = self.rng.random() < 0.8
        source = self.rng.choice(KASMINA if kasmina else TEZZERET)
        name = self.rng.choice(KASMINA_BREAKERS if kasmina else TEZZERET_BREAKERS)
        calls = self.calls[f"{source}/{name}"] = self.calls.get(f"{source}/{name}", 0) + 1
        state = self.rng.choice([pb.CIRCUIT_CLOSED] * 6 + [pb.CIRCUIT_OPEN, pb.CIRCUIT_HALF_OPEN])
        stats = pb.BreakerStats(
            name=name, state=state, total_calls=calls, total_failures=calls // 3, state_transition_count=calls // 20
        )
        detail: Message
        if self.rng.random() < 0.2:
            detail = pb.BreakerTransition(stats=stats, from_state=pb.CIRCUIT_CLOSED, to_state=state, reason="threshold")
        else:
            detail = pb.BreakerFailure(stats=stats, error_type="TimeoutError", error="step took too long")
        return self._safety(detail, source, "kasmina" if kasmina else "tezzeret")

    def _kasmina(self) -> tuple[str, Message, str]:
        source, slot, roll = self.rng.choice(KASMINA), self.rng.choice(SLOTS), self.rng.random()
        detail: Message
        if roll < 0.25:
            detail = pb.PauseEntered(instance_id=source, slot_id=slot, reason="operator", quota_ms=200)
        elif roll < 0.5:
            detail = pb.PauseExited(instance_id=source, slot_id=slot, duration_ms=150, cause="command")
        elif roll < 0.7:
            detail = pb.QuotaDecision(outcome=pb.QUOTA_FULL, requested=200, granted=200, remaining=800, max_quota=1000)
        elif roll < 0.72:
            detail = pb.QuotaReset(max_quota=1000)
        else:
            where = f"{source}/{slot}"
            now = self.seed_stage.get(where, 0)
            after = (now + 1) % len(SEED_PATH)
            self.seed_stage[where] = after
            detail = pb.SeedTransition(
                instance_id=source, slot_id=slot, from_stage=SEED_PATH[now], to_stage=SEED_PATH[after], gate=f"G{now}"
            )
        return self._safety(detail, source, "kasmina")

    def _compilation(self) -> tuple[str, Message, str]:
        if len(self.flows) < OPEN_FLOWS and (not self.flows or self.rng.random() < 0.25):
            self.flows.append(self._new_flow())
        flow = self.rng.choice(self.flows)
        step = flow.steps.pop(0)
        if not flow.steps:
            self.flows.remove(flow)
        return step

    def _new_flow(self) -> _Flow:
        rid, bp = self._id("r"), f"bp-{self.rng.randrange(2000)}"
        strategy = self.rng.choice([pb.STRATEGY_FAST, pb.STRATEGY_STANDARD, pb.STRATEGY_AGGRESSIVE])
        ok = self.rng.random() < 0.9
        steps: list[tuple[str, Message, str]] = []
        if self.rng.random() < 0.1:
            ir = pb.BlueprintIR(blueprint_id=bp, name="mlp", author="bench")
            steps.append((BLUEPRINTS.name, ir, bp))
        elif self.rng.random() < 0.05:
            emergency = pb.EmergencyCompile(request_id=rid, blueprint_id=bp, requestor="kasmina", reason="nan")
            steps.append((COMPILATION_EMERGENCY.name, emergency, bp))
        else:
            request = pb.CompilationRequest(request_id=rid, blueprint_id=bp, requestor="kasmina", strategy=strategy)
            steps.append((COMPILATION_REQUESTS.name, request, bp))
        artifact = f"a-{rid}"
        result = pb.CompilationResult(
            request_id=rid,
            blueprint_id=bp,
            success=ok,
            strategy=strategy,
            artifact_id=artifact if ok else "",
            failure_reason=pb.FAILURE_REASON_UNSPECIFIED if ok else pb.FAILURE_TIMEOUT,
            cache_level=self.rng.choice([pb.CACHE_MISS, pb.CACHE_L1, pb.CACHE_L2])
            if ok
            else pb.CACHE_LEVEL_UNSPECIFIED,
            queue_ms=4,
            compile_ms=40,
            total_ms=44,
        )
        steps.append((COMPILATION_RESULTS.name, result, bp))
        if ok:
            kernel = pb.CompiledKernelArtifact(artifact_id=artifact, blueprint_id=bp, strategy=strategy, size_bytes=9)
            kernel.created_at.FromMilliseconds(START_MS + self.n)
            steps.append((KERNELS.name, kernel, artifact))
            complete = pb.CompilationComplete(request_id=rid, blueprint_id=bp, artifact_id=artifact, strategy=strategy)
            steps.append((COMPILATION_RESULTS.name, complete, bp))
        steps.append((AUDIT.name, pb.AuditRecord(request_id=rid, blueprint_id=bp, success=ok, authorized=True), rid))
        return _Flow(steps)

    def _rare(self) -> tuple[str, Message, str]:
        if self.rng.random() < 0.5:
            source = self.rng.choice(TEZZERET)
            detail = pb.ConservativeModeChanged(service="tezzeret", active=self.rng.random() < 0.5, reasons=["p95"])
            return self._safety(detail, source, "tezzeret")
        origin = self.rng.choice([COMPILATION_REQUESTS.name, TELEMETRY.name, SAFETY.name])
        letter = pb.DeadLetter(origin_topic=origin, origin_offset=self.n, error_type="DecodeError", error="bad bytes")
        return DEADLETTER.name, letter, origin


# -- (a) the pure fold -----------------------------------------------------------------------------------------


def in_memory_facts(count: int) -> list[facts.Fact]:
    """The mixed log's first `count` records as the facts a consumer would decode, partitioned by key."""
    out: list[facts.Fact] = []
    offsets: dict[tuple[str, int], int] = {}
    for r in MixedLog("fold").records(count):
        spec = topic_spec(r.topic)
        partition = zlib.crc32(r.key.encode()) % (spec.partitions if spec else 1)
        offset = offsets[(r.topic, partition)] = offsets.get((r.topic, partition), -1) + 1
        out.append(facts.fact_from_record(r.value, r.headers, r.topic, partition, offset, r.at_ms, r.key.encode()))
    return out


def pure_fold(log: list[facts.Fact]) -> float:
    tables: reducers.Tables = {p.name: {} for p in reducers.PROJECTIONS}
    start = time.process_time()  # one core: CPU time of this thread's fold, not the neighbours' noise
    for fact in log:
        reducers.fold(tables, fact)
    return len(log) / (time.process_time() - start)


# -- (b) and (c) over the broker -------------------------------------------------------------------------------


def held(servers: str) -> int:
    """Records the source topics hold now."""
    c = Consumer({"bootstrap.servers": servers, "group.id": "bench-projections-count"})
    try:
        total = 0
        for topic in SOURCE_TOPICS:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = watermarks(c, topic, p)
                total += high - low
        return total
    finally:
        c.close()


def top_up(servers: str, target: int) -> tuple[int, float]:
    """Produce mixed records until the source topics hold `target`; (records produced, records/s encoded+sent)."""
    missing = target - held(servers)
    if missing <= 0:
        return 0, 0.0
    producer = Producer(
        {**BASE_PRODUCER_CONFIG, "bootstrap.servers": servers, "linger.ms": 50, "batch.size": 1_000_000}
    )
    start = time.perf_counter()
    for i, r in enumerate(MixedLog(uuid.uuid4().hex[:8]).records(missing)):
        while True:
            try:
                producer.produce(r.topic, value=r.value, key=r.key.encode(), headers=r.headers)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    if producer.flush(300) != 0:
        raise RuntimeError("records left undelivered")
    return missing, missing / (time.perf_counter() - start)


def slice_of(servers: str, records: int) -> dict[Partition, int]:
    """The last offset (inclusive) to read in each source partition so that about `records` are read, the same
    share of every partition from its start: an `until_offset` for replay and the bare loop alike."""
    c = Consumer({"bootstrap.servers": servers, "group.id": "bench-projections-count"})
    try:
        spans = {}
        for topic in SOURCE_TOPICS:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                spans[(topic, p)] = watermarks(c, topic, p)
    finally:
        c.close()
    share = min(1.0, records / max(1, sum(high - low for low, high in spans.values())))
    counts = {where: round((high - low) * share) for where, (low, high) in spans.items()}
    # A count of 0 is a limit before the partition's first offset: replay skips the partition.
    return {where: spans[where][0] + n - 1 for where, n in counts.items()}


def bare_consume_and_fold(servers: str, last: dict[Partition, int]) -> tuple[int, float]:
    """The source partitions from their start to `last` (inclusive), decoded and folded into dicts; (records,
    seconds, from before the consumer is made to the last fold, as replay's duration is)."""
    start = time.perf_counter()
    c = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",  # librdkafka wants one; never joined (assign)
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    tables: reducers.Tables = {p.name: {} for p in reducers.PROJECTIONS}
    ends = {where: offset + 1 for where, offset in last.items() if offset >= watermarks(c, *where)[0]}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for topic, p in ends])
        n = 0
        while ends:
            for m in c.consume(1000, 0.5):
                where = (m.topic() or "", m.partition() or 0)
                end = ends.get(where)
                if m.error() is not None or end is None or (m.offset() or 0) >= end:
                    continue
                with contextlib.suppress(DecodeError):  # garbage a test left in the topics: replay skips it too
                    reducers.fold(tables, facts.fact_from_kafka(m))
                n += 1
                if (m.offset() or 0) + 1 >= end:
                    del ends[where]
        return n, time.perf_counter() - start
    finally:
        c.close()


def replay_into_memory(servers: str, last: dict[Partition, int]) -> tuple[ReplayResult, float]:
    """The replay to `last`, and the seconds of it spent on the digests it ends with (computed again)."""
    with MemoryTables() as store:
        result = replay(servers, store, until_offset=last, idle_timeout_s=60)
        start = time.perf_counter()
        digest.digests(store.data)
        return result, time.perf_counter() - start


def replay_into_rocksdb(servers: str) -> ReplayResult:
    root = Path(tempfile.mkdtemp(prefix="bench-projections-"))
    try:
        start = time.perf_counter()
        with RocksTables.create(root / "store") as store:
            result = replay(servers, store, idle_timeout_s=60)
        result.duration_s = time.perf_counter() - start  # with the close that makes the store durable
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- (d) the live app -------------------------------------------------------------------------------------------

LIVE_WARMUP_S = 20.0  # group join, topic creation, the first fetches: not part of the rate
LIVE_WINDOW_S = 60.0


@dataclass
class LiveRates:
    routed: float  # source records routed per second
    folded: float  # routed records folded per second
    fanout: float  # routed records per source record
    lag: int  # routed records not yet folded at the window's end


def _committed(c: Consumer, group_topics: list[TopicPartition]) -> dict[str, int]:
    """Records behind the group's committed offsets, per topic (offset - low watermark, summed)."""
    out: dict[str, int] = {}
    for tp in c.committed(group_topics, timeout=10):
        if tp.offset >= 0:
            low, _ = watermarks(c, tp.topic, tp.partition)
            out[tp.topic] = out.get(tp.topic, 0) + tp.offset - low
    return out


def live_app(servers: str) -> LiveRates:
    """One worker of a fresh app id over the source topics, measured from its group's commits; then its worker,
    topics and group are removed."""
    from confluent_kafka.admin import AdminClient

    from esper.projections.app import ROUTED_PARTITIONS, routed_topic

    app_id = f"esper-projections-bench-{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    esper = str(Path(sys.executable).with_name("esper"))
    argv = [esper, "projections", "run", "--app-id", app_id, "--web-port", str(port), "--data-dir", str(root / "d")]
    env = {**os.environ, "ESPER_BOOTSTRAP_SERVERS": servers}
    worker = subprocess.Popen(
        [*argv, "--worker-id", "bench", "--loglevel", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=root.joinpath("log").open("w"),
    )
    c = Consumer({"bootstrap.servers": servers, "group.id": app_id})
    routed = routed_topic(app_id)
    try:
        sources = [
            TopicPartition(t, p) for t in SOURCE_TOPICS for p in c.list_topics(t, timeout=10).topics[t].partitions
        ]
        tps = [*sources, *(TopicPartition(routed, p) for p in range(ROUTED_PARTITIONS))]
        time.sleep(LIVE_WARMUP_S)
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited {worker.returncode}: {root.joinpath('log').read_text()[-2000:]}")
        t0, first = time.monotonic(), _committed(c, tps)
        time.sleep(LIVE_WINDOW_S)
        t1, last = time.monotonic(), _committed(c, tps)
        src0 = sum(n for t, n in first.items() if t != routed)
        src1 = sum(n for t, n in last.items() if t != routed)
        routed_high = sum(watermarks(c, routed, p)[1] for p in range(ROUTED_PARTITIONS))
        return LiveRates(
            routed=(src1 - src0) / (t1 - t0),
            folded=(last.get(routed, 0) - first.get(routed, 0)) / (t1 - t0),
            fanout=routed_high / max(1, src1),
            lag=routed_high - last.get(routed, 0),
        )
    finally:
        c.close()
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        admin = AdminClient({"bootstrap.servers": servers})
        ours = [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id)]
        for future in [*admin.delete_topics(ours).values(), *admin.delete_consumer_groups([app_id]).values()]:
            with contextlib.suppress(KafkaException):
                future.result(30)
        shutil.rmtree(root, ignore_errors=True)


def run() -> list[Row]:
    log = in_memory_facts(FOLD_EVENTS)
    fold_rate = statistics.median(pure_fold(log) for _ in range(FOLD_ROUNDS))
    del log
    servers = bench_bootstrap()
    produced, produce_rate = top_up(servers, REPLAY_EVENTS)
    last = slice_of(servers, SLICE_EVENTS)
    bare_rates, replay_rates, digest_times = [], [], []
    for _ in range(SLICE_ROUNDS):  # alternated, so that the neighbours' load hits both alike
        n_bare, bare_s = bare_consume_and_fold(servers, last)
        bare_rates.append(n_bare / bare_s)
        ours, digest_s = replay_into_memory(servers, last)
        replay_rates.append(ours.read / ours.duration_s)
        digest_times.append(digest_s)
    bare_rate = statistics.median(bare_rates)
    rocks = replay_into_rocksdb(servers)
    live = live_app(servers)
    rows = [
        Row(
            f"pure fold, mixed log of {FOLD_EVENTS:,} facts, one core (CPU time, median of {FOLD_ROUNDS})",
            fold_rate,
            "facts/s",
        ),
        Row(f"records produced to top the source topics up to {REPLAY_EVENTS:,} (0: reused)", produced, "records"),
    ]
    if produced:
        rows.append(Row("  their encode + produce rate (bare Producer, lz4, acks=all)", produce_rate, "records/s"))
    rows += [
        Row(
            f"bare consume + decode + fold, first {n_bare:,} records (median of {SLICE_ROUNDS})", bare_rate, "records/s"
        ),
        ratio_row(
            f"replay() into MemoryTables, the same {ours.read:,} ({ours.skipped} skipped; median of {SLICE_ROUNDS})",
            statistics.median(replay_rates),
            "records/s",
            "bare consume-and-fold",
            bare_rate,
        ),
        Row("  of its time, the digests it ends with (median)", statistics.median(digest_times), "s"),
        Row(f"replay() rebuild of every projection into RocksDB, {rocks.read:,} records", rocks.duration_s, "s"),
        ratio_row("  its rate", rocks.read / rocks.duration_s, "records/s", "bare consume-and-fold", bare_rate),
        ratio_row(
            f"live app, one worker: source records routed ({LIVE_WINDOW_S:.0f} s window)",
            live.routed,
            "records/s",
            "bare consume-and-fold",
            bare_rate,
        ),
        Row(f"  routed records folded (each source record routed to {live.fanout:.2f})", live.folded, "records/s"),
        Row("  routed records not yet folded at the window's end", live.lag, "records"),
    ]
    return rows


if __name__ == "__main__":
    print_table(run(), "projections")
