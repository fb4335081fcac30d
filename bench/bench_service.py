"""Tezzeret as a Kafka service (`esper compiler run`, in its own process, as it is deployed), against bare
confluent-kafka clients doing the least the same round trip needs, side by side in the same run:
- a request answered from the cache, produce -> CompilationResult seen by a read_committed reader, one at a time,
  p50 and p99 (aim p99 <= 50 ms), against a bare echo (a thread consuming one topic and producing each record to
  another) and a transactional one (each batch produced in a transaction with its consumed offset, as the service
  answers), blocks rotating;
- cache-hit answers per second, N requests produced at once until all N results are read, against the same echoes;
- an EmergencyCompile end to end on this machine's CPU, a fresh blueprint each run (a dimension varied: never a cache
  hit), median (spec 4-10 s, aim <= 1 s), and its queue_ms (produced -> compile started) as the result reports it;
- WAL recovery on start with 10,000 jobs logged (some unsettled): the service's _open_wal and recovered_jobs,
  against esper.compiler.wal.log.recover alone on the same directory (spec < 12 s). No Kafka for this one.

The service's consumer groups are set at the end of the input topics before it starts, so that a broker's history
(earlier runs, the soak's 10,000 blueprints) is not answered again. Figures only, never asserted.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import Row, print_table, ratio_row
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from kafka_env import bench_bootstrap, watermarks

from esper.compiler.artifacts.publish import compiler_version
from esper.compiler.ir.load import load_blueprint
from esper.compiler.service.app import TezzeretService
from esper.compiler.service.health import fetch_health
from esper.compiler.service.jobs import recovered_jobs
from esper.compiler.service_config import ServiceSettings, TezzeretConfig, WalSettings
from esper.compiler.wal.log import Entry, RecordType, Wal, recover
from esper.proto import leyline_pb2 as pb
from esper.settings import load_settings
from esper.streams.admin import admin_client
from esper.streams.envelope import decode
from esper.streams.producer import BASE_PRODUCER_CONFIG, LeylineProducer
from esper.streams.topics import BLUEPRINTS, COMPILATION_EMERGENCY, COMPILATION_REQUESTS, COMPILATION_RESULTS

REPO = Path(__file__).resolve().parents[1]
BLUEPRINT = REPO / "examples" / "blueprints" / "mlp.yaml"
ESPER = Path(sys.executable).parent / "esper"
LATENCY_BLOCKS = 5  # alternating service / echo blocks
LATENCY_PER_BLOCK = 50  # 250 requests each
BURST = 2000
EMERGENCY_RUNS = 3
WAL_JOBS = 10_000
WAL_ROUNDS = 3
ANSWER_TIMEOUT_S = 120.0
ECHO_POLL_S = 0.02
FAST_CLIENT: dict[str, Any] = {"linger.ms": 0}


def mlp(blueprint_id: str, hidden: int = 256, dropout: float = 0.1) -> pb.BlueprintIR:
    """examples/blueprints/mlp.yaml under its own id, its hidden width and dropout as given (others: another job)."""
    ir = load_blueprint(BLUEPRINT)
    ir.blueprint_id = blueprint_id
    for node in ir.nodes:
        for attr in node.attributes:
            if node.id == "up" and attr.key == "out_features":
                attr.i = hidden
            elif node.id == "drop" and attr.key == "p":
                attr.f = dropout
    return ir


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ready(consumer: Consumer, timeout_s: float) -> list[Message]:
    """The records there are, waiting at most timeout_s for the first one. (consume(n, t) waits for n records or
    the whole t: a reader timed with it would measure its own timeout.)"""
    first = consumer.poll(timeout_s)
    return [] if first is None else [first, *consumer.consume(500, 0)]


# -- the service in its own process ----------------------------------------------------------------------------


def start_at_end(servers: str, group_id: str, topics: Iterable[str]) -> None:
    """Commit `group_id`'s offsets at the end of `topics`: a service of that (new) group answers only what comes
    after, not the broker's history."""
    c = Consumer({"bootstrap.servers": servers, "group.id": group_id, "enable.auto.commit": False})
    try:
        offsets = []
        for topic in topics:
            meta = c.list_topics(topic, timeout=10).topics[topic]
            for p in sorted(meta.partitions):
                _low, high = watermarks(c, topic, p)
                offsets.append(TopicPartition(topic, p, high))
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


class ServiceProcess:
    """`esper compiler run` with a fresh home, WAL, store and consumer groups under `root`."""

    def __init__(self, servers: str, root: Path, **config: object) -> None:
        self.servers, self.root = servers, root
        tag = uuid.uuid4().hex[:8]
        self.instance, self.group = f"bench-{tag}", f"bench-tezzeret-{tag}"
        block: dict[str, object] = {
            "wal": {"path": str(root / "wal")},
            "service": {
                "store": str(root / "store"),
                "http_port": 0,
                "instance_id": self.instance,
                "group_id": self.group,
            },
            **config,
        }
        self.config_path = root / "tezzeret.json"
        self.config_path.write_text(json.dumps({"tezzeret": block}))
        self.log_path = root / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        start_at_end(self.servers, self.group, [BLUEPRINTS.name, COMPILATION_REQUESTS.name])
        start_at_end(self.servers, f"{self.group}.emergency", [COMPILATION_EMERGENCY.name])
        env = {**os.environ, "ESPER_HOME": str(self.root / "home"), "ESPER_BOOTSTRAP_SERVERS": self.servers}
        env.pop("ESPER_CONFIG", None)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(ESPER), "compiler", "run", "--config", str(self.config_path)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /health/tezzeret says every sandbox worker is warm and both lanes hold their partitions."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            found = re.search(r"health: (http://\S+/health/tezzeret)", self.tail(100_000))
            if found:
                try:
                    _code, report = fetch_health(found.group(1))
                except (OSError, ValueError):
                    report = {}
                workers, lanes = report.get("workers", []), report.get("queue", {}).get("lanes", [])
                if workers and all(w["ready"] for w in workers) and lanes and all(x["partitions"] for x in lanes):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the service was not ready within {timeout_s:g} s: {self.tail()}")

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the service exited ({self.proc.returncode}): {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Results:
    """leyline.compilation.results read_committed from where it ends now, by request id."""

    def __init__(self, servers: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": f"bench-results-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
            }
        )
        topic = COMPILATION_RESULTS.name
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        starts = []
        for p in sorted(meta.partitions):
            _low, high = watermarks(self.consumer, topic, p)
            starts.append(TopicPartition(topic, p, high))
        self.consumer.assign(starts)
        self.seen: dict[str, tuple[float, pb.CompilationResult]] = {}  # request id -> (perf_counter, result)

    def poll(self, timeout_s: float) -> None:
        for msg in ready(self.consumer, timeout_s):
            if msg.error() is None:
                result = decode(msg.value(), msg.headers(), msg.topic()).message
                if isinstance(result, pb.CompilationResult):
                    self.seen[result.request_id] = (time.perf_counter(), result)

    def wait(
        self, request_ids: Iterable[str], timeout_s: float = ANSWER_TIMEOUT_S, service: ServiceProcess | None = None
    ) -> None:
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.seen.keys():
            if time.monotonic() > deadline:
                missing = len(wanted - self.seen.keys())
                raise RuntimeError(f"{missing} of {len(wanted)} results not seen within {timeout_s:g} s")
            if service is not None:
                service.check()
            self.poll(0.05)

    def close(self) -> None:
        self.consumer.close()


def request(blueprint: pb.BlueprintIR, request_id: str, *, emergency_tier: bool = True) -> pb.CompilationRequest:
    """A CompilationRequest carrying `blueprint`, at the EMERGENCY tier (else the service chooses)."""
    req = pb.CompilationRequest(request_id=request_id, requestor="bench", blueprint=blueprint, device="cpu")
    if emergency_tier:
        req.strategy = pb.STRATEGY_EMERGENCY
    req.requested_at.GetCurrentTime()
    return req


def ask(
    producer: LeylineProducer,
    results: Results,
    message: pb.CompilationRequest | pb.EmergencyCompile,
    topic: str,
    service: ServiceProcess,
) -> tuple[float, pb.CompilationResult]:
    """Produce one request; seconds until its result is read, and the result."""
    start = time.perf_counter()
    producer.send(topic, message, key=message.blueprint_id)
    producer.poll(0)
    results.wait([message.request_id], service=service)
    seen, result = results.seen.pop(message.request_id)
    return seen - start, result


# -- the bare baseline: a consume-and-produce echo -------------------------------------------------------------


class Echo:
    """A thread consuming `in` and producing each record (key, value, headers) to `out`: the least a consume and
    answer loop does. `transactional`: each batch read is produced in one transaction with its consumed offset
    (send_offsets_to_transaction), read back read_committed, as the service answers (its producer's settings)."""

    def __init__(self, servers: str, *, transactional: bool = False) -> None:
        tag = uuid.uuid4().hex[:8]
        self.servers, self.topic_in, self.topic_out = servers, f"bench.echo.in.{tag}", f"bench.echo.out.{tag}"
        self.transactional = transactional
        self.admin = admin_client(servers)
        for f in self.admin.create_topics([NewTopic(t, 1, 1) for t in (self.topic_in, self.topic_out)]).values():
            f.result()
        self.producer = Producer({**BASE_PRODUCER_CONFIG, **FAST_CLIENT, "bootstrap.servers": servers})
        self.reader = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": f"bench-echo-r-{tag}",
                "fetch.wait.max.ms": 5,
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if transactional else "read_uncommitted",
            }
        )
        self.reader.assign([TopicPartition(self.topic_out, 0, OFFSET_BEGINNING)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(tag,), name="echo", daemon=True)
        self._thread.start()

    def _loop(self, tag: str) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": f"bench-echo-{tag}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": int(ECHO_POLL_S * 1e3),
            }
        )
        c.assign([TopicPartition(self.topic_in, 0, OFFSET_BEGINNING)])
        if self.transactional:  # AnswerProducer's settings (compiler/service/txn.py)
            p = Producer(
                {
                    "bootstrap.servers": self.servers,
                    "transactional.id": f"bench-echo-{tag}",
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 2,
                }
            )
            p.init_transactions(30)
        else:
            p = Producer({**BASE_PRODUCER_CONFIG, **FAST_CLIENT, "bootstrap.servers": self.servers})
        while not self._stop.is_set():
            batch = [m for m in ready(c, ECHO_POLL_S) if m.error() is None]
            if batch and self.transactional:
                p.begin_transaction()
            for msg in batch:
                p.produce(self.topic_out, value=msg.value(), key=msg.key(), headers=msg.headers())
            if batch and self.transactional:
                end = TopicPartition(self.topic_in, 0, (batch[-1].offset() or 0) + 1)
                p.send_offsets_to_transaction([end], c.consumer_group_metadata(), 30)
                p.commit_transaction(30)
            p.poll(0)
        p.flush(10)
        c.close()

    def send(self, key: bytes, value: bytes) -> None:
        self.producer.produce(self.topic_in, value=value, key=key)
        self.producer.poll(0)

    def round_trip_ms(self, key: bytes, value: bytes) -> float:
        start = time.perf_counter()
        self.send(key, value)
        return (self.wait([key]) - start) * 1e3

    def wait(self, keys: Iterable[bytes], timeout_s: float = ANSWER_TIMEOUT_S) -> float:
        """Read `out` until every key came back; the perf_counter when the last one was read."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout_s
        last = 0.0
        while wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"echo: {len(wanted)} records not back within {timeout_s:g} s")
            for msg in ready(self.reader, 0.05):
                if msg.error() is None and msg.key() in wanted:
                    wanted.discard(msg.key() or b"")
                    last = time.perf_counter()
        return last

    def burst_rate(self, keys: list[bytes], value: bytes) -> float:
        start = time.perf_counter()
        for k in keys:
            self.send(k, value)
        return len(keys) / (self.wait(keys) - start)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush(10)
        self.reader.close()
        for f in self.admin.delete_topics([self.topic_in, self.topic_out]).values():
            f.result()


# -- the figures ---------------------------------------------------------------------------------------------


def cache_hits(servers: str, root: Path) -> list[Row]:
    service = ServiceProcess(servers, root)
    results = Results(servers)
    echoes = {"bare echo": Echo(servers), "transactional echo": Echo(servers, transactional=True)}
    producer = LeylineProducer(servers, producer_id="bench-service", **FAST_CLIENT)
    ms: dict[str, list[float]] = {name: [] for name in ("service", *echoes)}
    rates: dict[str, float] = {}
    levels: dict[str, int] = {}
    try:
        service.start()
        service.wait_ready()
        ir = mlp(f"bench-cache-{uuid.uuid4().hex[:8]}")
        warm_s, warm = ask(producer, results, request(ir, uuid.uuid4().hex), COMPILATION_REQUESTS.name, service)
        if not warm.success:
            raise RuntimeError(f"the warm-up compile failed: {warm.failure_reason} {warm.error}")
        value = request(ir, "x").SerializeToString()  # what the echoes carry: a request's size
        for echo in echoes.values():
            echo.round_trip_ms(b"warm", value)
        names = list(ms)
        for block in range(LATENCY_BLOCKS):  # rotating, so that drift hits all alike
            for which in names[block % len(names) :] + names[: block % len(names)]:
                for _ in range(LATENCY_PER_BLOCK):
                    rid = uuid.uuid4().hex
                    if which == "service":
                        took, result = ask(producer, results, request(ir, rid), COMPILATION_REQUESTS.name, service)
                        level = pb.CacheLevel.Name(result.cache_level)
                        levels[level] = levels.get(level, 0) + 1
                        ms[which].append(took * 1e3)
                    else:
                        ms[which].append(echoes[which].round_trip_ms(rid.encode(), value))
        # a burst: N at once, until all N are read
        ids = [uuid.uuid4().hex for _ in range(BURST)]
        msgs = [request(ir, rid) for rid in ids]
        start = time.perf_counter()
        for m in msgs:
            producer.send(COMPILATION_REQUESTS.name, m, key=m.blueprint_id)
        producer.poll(0)
        results.wait(ids, service=service)
        rates["service"] = BURST / (max(results.seen[r][0] for r in ids) - start)
        for name, echo in echoes.items():
            rates[name] = echo.burst_rate([uuid.uuid4().hex.encode() for _ in range(BURST)], value)
    finally:
        producer.close()
        for echo in echoes.values():
            echo.close()
        results.close()
        service.stop()
    hit = ", ".join(f"{k} {v}" for k, v in sorted(levels.items()))
    rows = [Row(f"cache-warming EMERGENCY compile, produce -> result (cpu, first compile) [{hit}]", warm_s * 1e3, "ms")]
    bare = ms["bare echo"]
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        rows.append(Row(f"bare echo round trip {label} (n={len(bare)})", percentile(bare, q), "ms"))
        txn = ms["transactional echo"]
        rows.append(
            ratio_row(
                f"transactional echo round trip {label} (n={len(txn)})",
                percentile(txn, q),
                "ms",
                f"bare echo {label}",
                percentile(bare, q),
            )
        )
        aim = "; aim <= 50" if label == "p99" else ""
        rows.append(
            ratio_row(
                f"cache-hit request -> result {label} (n={len(ms['service'])}{aim})",
                percentile(ms["service"], q),
                "ms",
                f"bare echo {label}",
                percentile(bare, q),
            )
        )
    rows.append(Row(f"bare echo, {BURST} at once", rates["bare echo"], "msg/s"))
    rows.append(
        ratio_row(
            f"transactional echo, {BURST} at once",
            rates["transactional echo"],
            "msg/s",
            "bare echo",
            rates["bare echo"],
        )
    )
    rows.append(
        ratio_row(
            f"cache-hit answers, {BURST} requests at once",
            rates["service"],
            "answers/s",
            "bare echo",
            rates["bare echo"],
        )
    )
    return rows


def emergency(servers: str, root: Path) -> list[Row]:
    service = ServiceProcess(servers, root)
    results = Results(servers)
    producer = LeylineProducer(servers, producer_id="bench-service", **FAST_CLIENT)
    totals: list[float] = []
    queues: list[int] = []
    compiles: list[int] = []
    try:
        service.start()
        service.wait_ready()
        widths = random.sample(range(100, 4000), EMERGENCY_RUNS)  # fresh jobs: never a cache hit
        for width in widths:
            msg = pb.EmergencyCompile(
                request_id=uuid.uuid4().hex,
                blueprint_id=f"bench-emergency-{uuid.uuid4().hex[:8]}",
                requestor="tamiyo",
                reason="bench",
                device="cpu",
            )
            msg.blueprint.CopyFrom(mlp(msg.blueprint_id, width))
            msg.requested_at.GetCurrentTime()
            took, result = ask(producer, results, msg, COMPILATION_EMERGENCY.name, service)
            if not result.success:
                raise RuntimeError(
                    f"emergency compile failed: {pb.FailureReason.Name(result.failure_reason)} {result.error}"
                )
            if result.cache_level != pb.CACHE_MISS:
                raise RuntimeError(f"emergency compile was a cache hit ({pb.CacheLevel.Name(result.cache_level)})")
            totals.append(took * 1e3)
            queues.append(result.queue_ms)
            compiles.append(result.compile_ms)
    finally:
        producer.close()
        results.close()
        service.stop()
    each = ", ".join(f"{t / 1e3:.2f}" for t in totals)
    return [
        Row(
            f"EmergencyCompile produce -> result, fresh blueprint, cpu, median (runs {each} s; spec 4-10 s, aim 1)",
            statistics.median(totals),
            "ms",
        ),
        Row("  its compile_ms (result), median", statistics.median(compiles), "ms"),
        Row(
            "  its queue_ms (produced -> compile started, as the result says), median", statistics.median(queues), "ms"
        ),
    ]


def write_wal(path: Path, context: dict[str, str], jobs: int) -> tuple[int, int]:
    """`jobs` jobs as jobs.py logs them (BEGIN, DATA of 1-2 KB, COMMIT), every 20th without its COMMIT and every
    20th (another) with its BEGIN only; written in group-commit batches. Returns (redo, begun only)."""
    rng = random.Random(7)
    wal = Wal.open(str(path), context)
    redo = begun_only = 0
    batch: list[Entry] = []
    try:
        for i in range(jobs):
            txn = uuid.uuid4().bytes
            key = os.urandom(32).hex()
            head = {"key": key, "strategy": "EMERGENCY", "blueprint_id": f"bp-{i}", "device": "cpu", "lane": "normal"}
            batch.append(Entry(RecordType.BEGIN, txn, json.dumps(head).encode()))
            if i % 20 == 10:
                begun_only += 1
            else:
                batch.append(Entry(RecordType.DATA, txn, rng.randbytes(rng.randint(1024, 2048))))
                if i % 20 == 0:
                    redo += 1
                else:
                    batch.append(
                        Entry(RecordType.COMMIT, txn, json.dumps({"artifact_id": os.urandom(32).hex()}).encode())
                    )
            if len(batch) >= 900:
                wal.append_batch(batch)
                batch = []
        wal.append_batch(batch)
    finally:
        wal.close()
    return redo, begun_only


def wal_recovery(root: Path) -> list[Row]:
    settings = load_settings(home=root / "home", bootstrap_servers="127.0.0.1:1")  # nothing connects: no Kafka
    config = TezzeretConfig(
        wal=WalSettings(path=root / "wal"),
        service=ServiceSettings(store=str(root / "store"), http_port=0, instance_id="bench-wal", group_id="bench-wal"),
    )
    context = {"service": "tezzeret", "instance": "bench-wal", "compiler": compiler_version(), "device": "cpu"}
    redo, begun_only = write_wal(root / "wal", context, WAL_JOBS)
    bare: list[float] = []
    ours: list[float] = []
    reading: list[float] = []  # recovered_jobs alone
    scanned = 0
    counts = (0, 0, 0)
    for i in range(WAL_ROUNDS):
        for which in ("bare", "service") if i % 2 == 0 else ("service", "bare"):
            if which == "bare":
                start = time.perf_counter()
                report = recover(str(root / "wal"), keep_payloads=True)
                bare.append((time.perf_counter() - start) * 1e3)
                scanned = report.bytes_scanned
                if report.corruption is not None:
                    raise RuntimeError(f"the bench WAL is corrupt: {report.corruption}")
            else:
                service = TezzeretService(config, settings, "127.0.0.1:1")
                start = time.perf_counter()
                records = service._open_wal()
                opened = time.perf_counter()
                jobs = recovered_jobs(records)
                ours.append((time.perf_counter() - start) * 1e3)
                reading.append((time.perf_counter() - opened) * 1e3)
                counts = (len(jobs.committed), len(jobs.redo), len(jobs.begun_only))
                if service.wal is not None:
                    service.wal.close()
    if counts != (WAL_JOBS - redo - begun_only, redo, begun_only):
        raise RuntimeError(f"recovered {counts}, logged {(WAL_JOBS - redo - begun_only, redo, begun_only)}")
    b, o = statistics.median(bare), statistics.median(ours)
    what = f"{WAL_JOBS} jobs, {counts[1]} to redo, {counts[2]} begun only, {scanned / 2**20:.0f} MiB"
    return [
        Row(f"WAL recover() alone ({what})", b, "ms"),
        ratio_row(f"service WAL recovery: _open_wal + recovered_jobs (spec < 12 s) ({what})", o, "ms", "recover()", b),
        Row("  of which recovered_jobs (the records to jobs)", statistics.median(reading), "ms"),
    ]


def run() -> list[Row]:
    servers = bench_bootstrap()
    rows: list[Row] = []
    for figure in (lambda r: cache_hits(servers, r), lambda r: emergency(servers, r), wal_recovery):
        root = Path(tempfile.mkdtemp(prefix="esper-bench-service-"))
        try:
            rows += figure(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    print_table(run(), "Tezzeret service")
