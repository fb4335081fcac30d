"""Tezzeret, the service (`esper compiler run`): the compilation core behind Kafka, its WAL, breakers and
conservative mode, observable on /metrics and /health/tezzeret.

Start-up, in order: the WAL is recovered (its duration is tezzeret_wal_recovery_duration_ms; corruption in the
middle quarantines the directory and keeps what came before it: the failure-mode table's "restore from the last
checkpoint"), the artifact store is indexed (L2), committed jobs index their artifacts, unfinished ones are queued
to be redone, the sandbox workers warm up, the log index starts reading leyline.blueprints and leyline.kernels,
then the two lanes (lane.py) start consuming and the health server listens. A housekeeping thread feeds
conservative mode (resource samples, ticks), refreshes the gauges, runs the TTL memory manager and retires settled
WAL segments. Any fatal condition (an fsync error, a fenced producer) stops the service: crash-only, the next start
recovers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import psutil

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.publish import compiler_version
from esper.compiler.artifacts.store import open_store
from esper.compiler.conservative import ConservativeModeController, Nvml, sample_resources
from esper.compiler.exceptions import BlueprintValidationError, WalCorruptionError, WalError
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import SandboxExecutor
from esper.compiler.service.cache import ArtifactCache, service_job_key
from esper.compiler.service.health import HealthServer, ServiceSnapshot
from esper.compiler.service.index import LogIndex
from esper.compiler.service.jobs import BreakerStore, JobRunner, JobSpec, is_infrastructure_failure, recovered_jobs
from esper.compiler.service.lane import Lane, LaneShared, Ticketed
from esper.compiler.service.metrics import TezzeretMetrics
from esper.compiler.service.scheduler import Scheduler
from esper.compiler.service_config import TezzeretConfig
from esper.compiler.wal.format import RecordType
from esper.compiler.wal.log import Wal
from esper.compiler.wal.scan import ScannedRecord
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CacheLevel, CompilationStrategy
from esper.safety.breaker import CircuitBreaker
from esper.settings import EsperSettings
from esper.streams.topics import BLUEPRINTS, COMPILATION_EMERGENCY, COMPILATION_REQUESTS

__all__ = ["IdleUpgrades", "TezzeretService"]

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 5.0  # resource samples for conservative mode (its GPU rule wants minutes of them)
RETIRE_EVERY_S = 60.0
BREAKERS = ("compile", "store", "publish")
_UPGRADE = {
    CompilationStrategy.EMERGENCY: CompilationStrategy.FAST,
    CompilationStrategy.FAST: CompilationStrategy.STANDARD,
    CompilationStrategy.STANDARD: CompilationStrategy.AGGRESSIVE,
}


class _QueueSink:
    """Safety events of the breakers and conservative mode, produced by the normal lane in its next transaction."""

    def __init__(self, events: deque[pb.SafetyEvent]) -> None:
        self._events = events

    def emit(self, event: pb.SafetyEvent) -> None:
        self._events.append(event)


@dataclass
class _Use:
    count: int
    spec: JobSpec


@dataclass
class IdleUpgrades:
    """Value-driven idle work: the artifacts answered most often are recompiled one tier higher when the service
    has nothing else to do (never in conservative mode). Bounded: the `max_tracked` most recent keys."""

    seed: int
    min_uses: int = 2
    max_tracked: int = 1024
    uses: dict[str, _Use] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)

    def used(self, ctx: Ticketed, spec: JobSpec | None) -> None:
        if spec is None or spec.strategy not in _UPGRADE:
            return
        use = self.uses.pop(spec.key, None) or _Use(0, spec)
        use.count += 1
        self.uses[spec.key] = use  # most recent last
        while len(self.uses) > self.max_tracked:
            self.uses.pop(next(iter(self.uses)))

    def pick(self, cache: ArtifactCache) -> JobSpec | None:
        """The most used artifact whose next tier is not cached (nor tried already), as a job at that tier."""
        for key, use in sorted(self.uses.items(), key=lambda kv: -kv[1].count):
            if use.count < self.min_uses or key in self.tried:
                continue
            self.tried.add(key)
            spec = use.spec
            higher = _UPGRADE[spec.strategy]
            upgraded = service_job_key(spec.ir, higher, self.seed, spec.device.split(":")[0])
            if cache.lookup(upgraded) is None:
                return JobSpec(upgraded, higher, spec.blueprint_id, spec.ir, spec.validated, spec.device, spec.lane)
        return None

    def cleanup(self) -> None:
        if len(self.tried) > self.max_tracked * 4:
            self.tried.clear()


class TezzeretService:
    def __init__(self, config: TezzeretConfig, settings: EsperSettings, bootstrap_servers: str) -> None:
        self.config, self.settings, self.bootstrap = config, settings, bootstrap_servers
        svc = config.service
        self.instance_id = svc.instance_id
        self.metrics = TezzeretMetrics()
        self.events: deque[pb.SafetyEvent] = deque()
        sink = _QueueSink(self.events)
        self.started = time.monotonic()
        self.fatal = ""
        self.stopping = threading.Event()
        breaker_config = config.circuit_breakers.breaker_config()
        # the compile breaker counts the compiler's faults, not a blueprint's (a bad blueprint is its author's)
        compile_config = replace(breaker_config, record_failure_predicate=is_infrastructure_failure)
        self.breakers = {
            name: CircuitBreaker(
                name, compile_config if name == "compile" else breaker_config, sink=sink, source_id=self.instance_id
            )
            for name in BREAKERS
        }
        if not config.circuit_breakers.enabled:
            for b in self.breakers.values():
                b.transition_to_disabled("circuit_breakers.enabled is false")
        self.controller = ConservativeModeController(
            config.conservative_limits(), sink=sink, source_id=self.instance_id
        )
        for b in self.breakers.values():
            self.controller.watch(b)
        # GPU readings wherever the driver answers (the rule is about the GPU Tezzeret shares with training,
        # whatever device it compiles for); reported absent, never 0, where it does not
        self.nvml = Nvml()
        if not self.nvml.available:
            log.info("no GPU readings: %s", self.nvml.error or "NVML absent")
        self.ring = KeyRing(settings.key_ring_dir())
        if self.ring.signing_key_id() is None:
            log.warning("no signing key in %s: generating one (esper keys list shows it)", settings.key_ring_dir())
            self.ring.generate()
        self.local_store = open_store(svc.store or str(settings.artifact_store_dir()))
        shared = open_store(svc.shared_store) if svc.shared_store else None
        policy = self.controller.policy()
        self.cache = ArtifactCache(
            self.local_store,
            self.ring,
            shared=shared,
            max_entries=policy.cache_entries,
            ttl_s=svc.cache_ttl_seconds,
            sink=sink,
            source_id=self.instance_id,
        )
        self.wal: Wal | None = None
        self.wal_path = config.wal.directory(settings.home)
        self.recovery_ms = 0.0
        self.quarantined = ""
        self.upgrades = IdleUpgrades(seed=svc.seed, min_uses=svc.idle_upgrade_min_uses)
        self.lanes: list[Lane] = []
        self.executors: list[SandboxExecutor] = []
        self.index: LogIndex | None = None
        self.http: HealthServer | None = None
        self._threads: list[threading.Thread] = []

    # -- start ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        records = self._open_wal()
        indexed = self.cache.scan_local()
        jobs = recovered_jobs(records)
        for key, artifact_id in jobs.committed.items():
            self.cache.record_local(key, artifact_id)
        if self.wal is not None:
            for txn in jobs.begun_only:
                self.wal.append(RecordType.ABORT, txn, b'{"failure": "CRASHED_BEFORE_DATA"}')
        log.info(
            "WAL recovered in %.1f ms: %d committed, %d to redo, %d aborted; %d artifacts in the store",
            self.recovery_ms,
            len(jobs.committed),
            len(jobs.redo),
            len(jobs.begun_only),
            indexed,
        )
        c = self.config
        normal = SandboxExecutor(size=c.compilation.max_concurrent_jobs)
        emergency = SandboxExecutor(size=1)
        self.executors = [normal, emergency]
        for ex in self.executors:
            threading.Thread(target=ex.wait_ready, name="sandbox-warm", daemon=True).start()
        self.index = LogIndex(self.bootstrap, self.instance_id, self.cache.observe_kernel)
        self.index.start()
        shared = LaneShared(
            config=c,
            cache=self.cache,
            index=self.index,
            controller=self.controller,
            metrics=self.metrics,
            publish_breaker=self.breakers["publish"],
            events=self.events,
            instance_id=self.instance_id,
            stopping=self.stopping,
            on_fatal=self._on_fatal,
        )
        store = BreakerStore(self.local_store, self.breakers["store"])
        group = c.service.group_id
        for name, topics, executor, scheduler, emergency_lane in (
            (
                "normal",
                [BLUEPRINTS.name, COMPILATION_REQUESTS.name],
                normal,
                Scheduler(c.compilation.max_concurrent_jobs, emergency_slots=0),
                False,
            ),
            ("emergency", [COMPILATION_EMERGENCY.name], emergency, Scheduler(1, emergency_slots=1), True),
        ):
            runner = JobRunner(
                wal=self.wal,
                executor=executor,
                store=store,
                ring=self.ring,
                cache=self.cache,
                compile_breaker=self.breakers["compile"],
                controller=self.controller,
                sink=_QueueSink(self.events),
                seed=c.service.seed,
                timeout_scale=c.service.tier_timeout_scale,
                worker=self.instance_id,
                on_wal=self.metrics.wal_transaction,
                on_wal_failure=lambda e: self._on_fatal(f"WAL: {e}"),
            )
            lane = Lane(
                name,
                topics,
                group_id=group if not emergency_lane else f"{group}.emergency",
                bootstrap_servers=self.bootstrap,
                shared=shared,
                runner=runner,
                scheduler=scheduler,
                emergency=emergency_lane,
            )
            self.lanes.append(lane)
        normal_lane = self.lanes[0]
        normal_lane.on_success = self.upgrades.used
        normal_lane.idle_work = self._idle_work
        validator = SecurityValidator()
        for txn, head, ir in jobs.redo:
            try:
                validated = validator.validate(pb.BlueprintIR.FromString(ir))
                strategy = CompilationStrategy[head["strategy"]]
            except (BlueprintValidationError, KeyError, ValueError) as e:
                log.error("WAL job %s cannot be redone (%s): aborted", txn.hex(), e)
                if self.wal is not None:
                    self.wal.append(RecordType.ABORT, txn, b'{"failure": "UNREPLAYABLE"}')
                continue
            lane = self.lanes[1] if head.get("lane") == "emergency" else normal_lane
            spec = JobSpec(
                head["key"], strategy, validated.ir.blueprint_id, ir, validated, head.get("device", "cpu"), lane.name
            )
            lane.add_recovered(spec, txn)
        for lane in self.lanes:
            t = threading.Thread(target=self._run_lane, args=(lane,), name=f"lane-{lane.name}", daemon=True)
            t.start()
            self._threads.append(t)
        hk = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        hk.start()
        self._threads.append(hk)
        self.http = HealthServer(c.service.http_host, c.service.http_port, self.metrics, self.snapshot)
        self.http.start()
        log.info("tezzeret %s serving: health %s/health/tezzeret", self.instance_id, self.http.url)

    def _open_wal(self) -> list[ScannedRecord]:
        if not self.config.wal.enabled:
            return []
        path = str(self.wal_path)
        self.wal_path.parent.mkdir(parents=True, exist_ok=True)
        context = {
            "service": "tezzeret",
            "instance": self.instance_id,
            "compiler": compiler_version(),
            "device": self.config.service.device,
        }
        t0 = time.perf_counter()
        records: list[ScannedRecord]
        try:
            self.wal = Wal.open(path, context, keep_payloads=True)
            records = list(self.wal.recovery.records)
        except WalCorruptionError as e:  # the failure-mode table: restore from the last sound record
            records = list(e.report.records)  # the sound prefix, up to the corruption
            self.quarantined = f"{path}.corrupt-{time.time_ns()}"
            os.rename(path, self.quarantined)
            log.error("WAL corrupt (%s): quarantined to %s; %d sound records kept", e, self.quarantined, len(records))
            self.wal = Wal.open(path, context, keep_payloads=True)
            self._relog(records)
        self.recovery_ms = (time.perf_counter() - t0) * 1e3
        self.metrics.observe_recovery(self.recovery_ms)
        return records

    def _relog(self, records: list[ScannedRecord]) -> None:
        """Carry the unsettled jobs of a quarantined WAL into the new one (the settled ones are in the store)."""
        assert self.wal is not None
        jobs = recovered_jobs(records)
        for txn, head, ir in jobs.redo:
            self.wal.append(RecordType.BEGIN, txn, _json(head))
            self.wal.append(RecordType.DATA, txn, ir)

    # -- running ---------------------------------------------------------------------------------------------

    def _run_lane(self, lane: Lane) -> None:
        try:
            lane.run()
        except Exception as e:  # a lane that dies takes the service down: its requests are answered after a restart
            log.exception("lane %s failed", lane.name)
            self._on_fatal(f"lane {lane.name}: {e}")

    def _idle_work(self, lane: Lane) -> JobSpec | None:
        policy = self.controller.policy()
        idle_for = time.monotonic() * 1e3 - lane.last_activity_ms
        if self.controller.active or not policy.idle_recompilation:
            return None
        if idle_for < self.config.service.idle_upgrade_after_seconds * 1e3:
            return None
        return self.upgrades.pick(self.cache)

    def _on_fatal(self, why: str) -> None:
        if not self.fatal:
            self.fatal = why
            log.critical("tezzeret stopping: %s", why)
        self.stopping.set()

    def _housekeeping(self) -> None:
        last_sample = last_cleanup = last_retire = 0.0
        cache_entries = self.controller.policy().cache_entries
        mm = self.config.memory_management
        while not self.stopping.wait(1.0):
            now = time.monotonic()
            try:
                self.controller.tick()
                if now - last_sample >= SAMPLE_EVERY_S:
                    last_sample = now
                    sample = sample_resources(self.nvml)
                    self.controller.sample(sample)
                    self.metrics.set_gpu(sample.gpu_percent)
                policy = self.controller.policy()
                if policy.cache_entries != cache_entries:
                    cache_entries = policy.cache_entries
                    self.cache.resize(cache_entries)
                if mm.ttl_cleanup_enabled and now - last_cleanup >= mm.cleanup_interval_seconds:
                    last_cleanup = now
                    removed = self.cache.cleanup()
                    self.upgrades.cleanup()
                    log.debug("memory manager: %d cache entries removed", removed)
                if self.wal is not None and now - last_retire >= RETIRE_EVERY_S:
                    last_retire = now
                    self.wal.retire_settled()
                self._gauges()
            except WalError as e:
                self._on_fatal(f"WAL: {e}")
            except Exception:  # housekeeping must not die of one bad reading
                log.exception("housekeeping")

    def _gauges(self) -> None:
        m = self.metrics
        for name, b in self.breakers.items():
            m.set_breaker(name, b.state)
        m.set_conservative(self.controller.active)
        m.set_concurrency(sum(lane.runner.running for lane in self.lanes))
        m.set_queue_depth(sum(lane.scheduler.queued_jobs for lane in self.lanes))
        m.set_memory_gb(psutil.Process().memory_info().rss / (1 << 30))
        stats = self.cache.stats()
        m.set_cache_hit_rates({lv: stats.hit_rate(lv) for lv in (CacheLevel.L1, CacheLevel.L2, CacheLevel.L3)})

    def snapshot(self) -> ServiceSnapshot:
        wal = self.wal
        workers = tuple(
            {"pid": w.pid, "ready": w.ready, "cpu_only": w.cpu_only, "lane": lane}
            for lane, ex in zip(("normal", "emergency"), self.executors, strict=False)
            for w in ex.workers()
        )
        kafka_errors = [lane.kafka_error for lane in self.lanes if lane.kafka_error]
        fatal = [lane.producer.fatal for lane in self.lanes if lane.producer.fatal]
        return ServiceSnapshot(
            instance_id=self.instance_id,
            breakers={name: b.state for name, b in self.breakers.items()},
            conservative_active=self.controller.active,
            conservative_causes=tuple(f"{c.kind}:{c.subject}" for c in self.controller.causes),
            wal={
                "enabled": wal is not None,
                "path": str(self.wal_path),
                "epoch": wal.epoch if wal is not None else 0,
                "unsettled": len(wal.unsettled_jobs()) if wal is not None else 0,
                "segments": len(wal.segments) if wal is not None else 0,
                "usable": (wal is not None or not self.config.wal.enabled) and not self.fatal,
                "recovery_ms": round(self.recovery_ms, 3),
                "quarantined": self.quarantined,
            },
            queue={
                "depth": sum(lane.scheduler.queued_jobs for lane in self.lanes),
                "running": sum(lane.runner.running for lane in self.lanes),
                "waiting": sum(lane.scheduler.waiting_tickets for lane in self.lanes),
                "lanes": [lane.snapshot() for lane in self.lanes],
            },
            workers=workers,
            kafka_ok=not kafka_errors and not fatal and not self.fatal,
            kafka_error="; ".join(kafka_errors + fatal + ([self.fatal] if self.fatal else [])),
            uptime_s=time.monotonic() - self.started,
        )

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the service stops (a signal, a fatal condition); True when it stopped."""
        return self.stopping.wait(timeout_s)

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(30)
        for lane in self.lanes:
            lane.runner.join(5)
            lane.close()
        if self.index is not None:
            self.index.stop()
        if self.http is not None:
            self.http.stop()
        for ex in self.executors:
            ex.close()
        if self.wal is not None:
            self.wal.close()


def _json(d: dict[str, str]) -> bytes:
    return json.dumps(d).encode()
