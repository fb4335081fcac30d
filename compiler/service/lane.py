"""A lane of the service: one consumer group over its input topics, one transactional producer, one scheduler, and
the loop that joins them. The service runs two: the normal lane (leyline.blueprints, leyline.compilation.requests)
and the emergency lane (leyline.compilation.emergency) with its own group, producer, sandbox worker and loop, so an
emergency compile never waits behind normal work, not even behind a long batch of normal records being read.

Each input record is answered exactly once as a read_committed reader sees it (see ledger.py and txn.py): its
answer (a CompilationResult, or a dead letter when it cannot be decoded) and its audit record are produced in the
transaction that commits its offset. The loop, in order: take new records (answer at once what needs no compile:
refusals, invalid blueprints, expired deadlines, cache hits; hand the rest to the scheduler), answer the tickets of
finished and expired jobs, start what the scheduler allows, commit the batch, then flow control.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from esper.compiler.conservative import ConservativeModeController
from esper.compiler.exceptions import BlueprintValidationError
from esper.compiler.ir.canonical import canonical_bytes
from esper.compiler.ir.validate import SecurityValidator, ValidatedBlueprint
from esper.compiler.service.cache import ArtifactCache, service_job_key
from esper.compiler.service.index import LogIndex
from esper.compiler.service.jobs import JobOutcome, JobRunner, JobSpec
from esper.compiler.service.ledger import LedgerMetadataError, PartitionLedger
from esper.compiler.service.metrics import TezzeretMetrics
from esper.compiler.service.requests import Work, WorkError, authorized, work_from_record
from esper.compiler.service.scheduler import Admission, Scheduler, Ticket, choose_strategy
from esper.compiler.service.txn import AnswerProducer, Output, TxnAbortedError, TxnFatalError
from esper.compiler.service_config import TezzeretConfig
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CacheLevel, CompilationStrategy, FailureReason, RequestKind
from esper.safety.breaker import CircuitBreaker
from esper.safety.exceptions import CallNotPermittedError
from esper.streams.client_config import kafka_config
from esper.streams.consumer import Record
from esper.streams.deadletter import dead_letter_for
from esper.streams.envelope import decode
from esper.streams.exceptions import DecodeError
from esper.streams.topics import AUDIT, COMPILATION_RESULTS, DEADLETTER, KERNELS, SAFETY

__all__ = ["Lane", "LaneShared", "Ticketed"]

log = logging.getLogger(__name__)

FETCH_BATCH = 200  # records taken per loop step (the ledger's window bounds how far a partition runs ahead)
PARK_TIMEOUT_MS = 30_000  # a request naming an unknown blueprint waits this long for the blueprint index
RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0)


def _now_ms() -> float:
    return time.monotonic() * 1e3


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _produced_ms(timestamp_ms: int) -> float:
    """When a record was produced, on the monotonic clock: queue and total times count from there (a record with
    no usable timestamp counts from now)."""
    now, age = _now_ms(), _wall_ms() - timestamp_ms
    return now - age if 0 <= age < 86_400_000 else now


@dataclass
class LaneShared:
    """What both lanes share."""

    config: TezzeretConfig
    cache: ArtifactCache
    index: LogIndex
    controller: ConservativeModeController
    metrics: TezzeretMetrics
    publish_breaker: CircuitBreaker
    events: deque[pb.SafetyEvent]  # safety events to produce, in order (breakers, conservative mode)
    instance_id: str
    validator: SecurityValidator = field(default_factory=SecurityValidator)
    stopping: threading.Event = field(default_factory=threading.Event)
    on_fatal: Callable[[str], None] = lambda _why: None


@dataclass
class Ticketed:
    """A request waiting for its answer."""

    work: Work
    coords: tuple[str, int, int]
    message_id: str
    received_ms: float  # monotonic: when the record was produced (its timestamp)
    strategy: CompilationStrategy | None  # None: refused before a tier was chosen
    reason: str
    key: str


@dataclass
class _Parked:
    work: Work
    coords: tuple[str, int, int]
    message_id: str
    received_ms: float
    end_ticket: int  # LogIndex.want_end(): found, or not there, once the index has read that far


class Lane:
    def __init__(
        self,
        name: str,
        topics: list[str],
        *,
        group_id: str,
        bootstrap_servers: str,
        shared: LaneShared,
        runner: JobRunner,
        scheduler: Scheduler,
        emergency: bool,
    ) -> None:
        self.name, self.topics, self.group_id, self.shared, self.runner = name, topics, group_id, shared, runner
        self.scheduler = scheduler
        self.emergency = emergency
        self.producer = AnswerProducer(
            bootstrap_servers,
            f"{shared.instance_id}.{name}",
            producer_name=f"tezzeret/{shared.instance_id}",
        )
        self.consumer = Consumer(
            kafka_config(
                {
                    "bootstrap.servers": bootstrap_servers,
                    "group.id": group_id,
                    "client.id": f"{shared.instance_id}.{name}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                    "fetch.wait.max.ms": 20,
                }
            )
        )
        self.ledgers: dict[tuple[str, int], PartitionLedger] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._paused: set[tuple[str, int]] = set()
        self._tickets: dict[str, Ticketed] = {}
        self._specs: dict[str, JobSpec] = {}  # queued and running jobs, by key
        self._parked: list[_Parked] = []
        self._outputs: list[Output] = []
        self._answered: list[tuple[str, int, int]] = []
        self._publishing: list[str] = []  # job keys whose kernels record is in the batch
        self._completions: deque[JobOutcome] = deque()
        self._background: set[str] = set()  # keys of ticketless jobs (idle upgrades, recovered jobs)
        self._recovered_txn: dict[str, bytes] = {}
        self._failures = 0
        self._retry_at = 0.0
        self.last_activity_ms = _now_ms()
        self.answers = 0
        self.kafka_error = ""
        # hooks of the service: a request answered with an artifact (what idle upgrades learn from), and the idle
        # work to queue when nothing waits
        self.on_success: Callable[[Ticketed, JobSpec | None], None] = lambda _t, _s: None
        self.idle_work: Callable[[Lane], JobSpec | None] = lambda _lane: None
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- rebalances --------------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        for tp in committed:
            low, _high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)
            base = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
            try:  # the metadata counts from the committed offset, even where retention has deleted past it
                ledger = PartitionLedger(base, tp.metadata or "")
            except (LedgerMetadataError, ValueError) as e:
                log.error(
                    "%s: %s[%d] offset metadata not ours (%s): answering from the offset",
                    self.name,
                    tp.topic,
                    tp.partition,
                    e,
                )
                ledger = PartitionLedger(base)
            self.ledgers[tp.topic, tp.partition] = ledger
        # where each partition resumes, and how many records above it were answered already (skipped when re-read)
        log.info(
            "%s assigned %s",
            self.name,
            [f"{t}[{p}]@{led.commit_point()[0]}+{led.window}" for (t, p), led in sorted(self.ledgers.items())],
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is answered while the generation still holds, then forget the partitions' requests: the
        next owner answers every one that was not committed."""
        self._flush(final=True)
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        log.info("%s revoked %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop_batch()
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        log.warning("%s lost %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        def kept(t: Ticket) -> bool:
            ctx = self._tickets.get(t.ticket_id)
            return ctx is not None and (ctx.coords[0], ctx.coords[1]) not in gone

        for t in self.scheduler.discard(kept):
            self._tickets.pop(t.ticket_id, None)
        self._parked = [p for p in self._parked if (p.coords[0], p.coords[1]) not in gone]
        for tp in gone:
            self.ledgers.pop(tp, None)
            self._dirty.discard(tp)
            self._paused.discard(tp)
        self._drop_unqueued_specs()

    def _drop_batch(self) -> None:
        self._outputs, self._answered, self._publishing = [], [], []

    def _drop_unqueued_specs(self) -> None:
        live = set(self.scheduler.running_keys()) | {t.key for t in self._tickets.values()}
        self._specs = {k: s for k, s in self._specs.items() if k in live or k in self._background}

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.shared.stopping.is_set():
            try:
                self.step()
            except KafkaException as e:
                self.kafka_error = str(e)
                log.warning("%s: %s", self.name, e)
                time.sleep(0.2)
        self._flush(final=True)

    def step(self, timeout_s: float = 0.02) -> None:
        now = _now_ms()
        batch = self._fetch(timeout_s) if self._may_take() else []
        for msg in batch:
            self._take(msg)
        if batch:
            self.kafka_error = ""
        self._retry_parked()
        self._finish_jobs()
        for t in self.scheduler.expire(now):
            self._answer_ticket(
                t.ticket_id, failure=FailureReason.TIMEOUT, error="the deadline passed before the compile finished"
            )
        if self.scheduler.idle and not self._parked:
            spec = self.idle_work(self)
            if spec is not None and self.add_background(spec):
                log.info("idle upgrade: %s to %s", spec.blueprint_id, spec.strategy.name)
        self._start_jobs()
        self._flush()
        self._flow_control()

    def _fetch(self, timeout_s: float) -> list[Message]:
        """Wait for the first record only (consume(n, t) waits for n records or all of t: a lone request would sit
        out the timeout), then take what else is there without waiting."""
        first = self.consumer.poll(timeout_s)
        return [] if first is None else [first, *self.consumer.consume(FETCH_BATCH - 1, 0)]

    def _may_take(self) -> bool:
        return not self.shared.stopping.is_set()

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s consumer: %s", self.name, err)
            return
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        ledger = self.ledgers.get((topic, partition))
        if ledger is None or not ledger.consumed(offset):
            return  # not ours any more, or answered before (named by the committed metadata)
        self.last_activity_ms = _now_ms()
        coords = (topic, partition, offset)
        try:
            decoded = decode(msg.value(), msg.headers(), topic)
        except DecodeError as e:
            self._dead_letter(msg, e, coords)
            return
        record = Record(topic, partition, offset, msg.key(), msg.timestamp()[1], decoded)
        try:
            work = work_from_record(record)
        except (WorkError, ValueError) as e:
            self._refuse(coords, decoded.envelope.message_id, record, FailureReason.VALIDATION, str(e))
            return
        self._admit(work, coords, decoded.envelope.message_id, _produced_ms(record.timestamp_ms))

    def _admit(self, work: Work, coords: tuple[str, int, int], message_id: str, received: float) -> None:
        ok, why = authorized(work, self.shared.config.authorization)
        if not ok:
            self._answer(work, coords, message_id, received, failure=FailureReason.UNAUTHORIZED, error=why)
            return
        if work.kind == RequestKind.EMERGENCY and not self.shared.config.compilation.enable_emergency_compilation:
            self._answer(
                work,
                coords,
                message_id,
                received,
                failure=FailureReason.CANCELLED,
                error="emergency compilation is disabled (compilation.enable_emergency_compilation)",
            )
            return
        blueprint = work.blueprint
        if blueprint is None:
            blueprint = self.shared.index.blueprint(work.blueprint_id)
            if blueprint is None:  # maybe produced just before the request: wait for the index to read that far
                self._parked.append(_Parked(work, coords, message_id, received, self.shared.index.want_end()))
                return
        self._validated(work, blueprint, coords, message_id, received)

    def _retry_parked(self) -> None:
        if not self._parked:
            return
        now, still = _now_ms(), []
        for p in self._parked:
            bp = self.shared.index.blueprint(p.work.blueprint_id)
            if bp is not None:
                self._validated(p.work, bp, p.coords, p.message_id, p.received_ms)
            elif self.shared.index.reached(p.end_ticket) or now - p.received_ms > PARK_TIMEOUT_MS:
                self._answer(
                    p.work,
                    p.coords,
                    p.message_id,
                    p.received_ms,
                    failure=FailureReason.VALIDATION,
                    error=f"no blueprint {p.work.blueprint_id!r} on leyline.blueprints",
                )
            else:
                still.append(p)
        self._parked = still

    def _validated(
        self, work: Work, blueprint: pb.BlueprintIR, coords: tuple[str, int, int], message_id: str, received: float
    ) -> None:
        if work.device != "cpu" and not work.device.startswith("cuda"):
            self._answer(
                work,
                coords,
                message_id,
                received,
                failure=FailureReason.VALIDATION,
                error=f"unknown device {work.device!r} (cpu, cuda, cuda:N)",
            )
            return
        try:
            validated = self.shared.validator.validate(blueprint)
        except BlueprintValidationError as e:
            self._answer(work, coords, message_id, received, failure=FailureReason.VALIDATION, error=str(e))
            return
        strategy, reason = self._strategy(work, validated)
        deadline = None
        if work.deadline_at_ms is not None:
            deadline = _now_ms() + (work.deadline_at_ms - _wall_ms())
        ir = canonical_bytes(validated)
        key = service_job_key(ir, strategy, self.shared.config.service.seed, work.device.split(":")[0])
        ctx = Ticketed(work, coords, message_id, received, strategy, reason, key)
        spec = JobSpec(key, strategy, validated.ir.blueprint_id, ir, validated, work.device, self.name)
        if self.shared.config.compilation.enable_caching:
            hit = self.shared.cache.lookup(key)
            if hit is not None:
                self._answer_ctx(ctx, artifact=hit.artifact, level=hit.level, kernels=not hit.published)
                self.on_success(ctx, spec)
                return
        ticket = Ticket(
            ticket_id=f"{coords[0]}:{coords[1]}:{coords[2]}",
            request_id=work.request_id,
            job_key=key,
            strategy=strategy,
            priority=work.priority,
            emergency=work.kind == RequestKind.EMERGENCY,
            deadline_ms=deadline,
            submitted_ms=received,
        )
        admission = self.scheduler.submit(ticket, _now_ms())
        if admission == Admission.EXPIRED:
            self._answer_ctx(ctx, failure=FailureReason.TIMEOUT, error="the deadline had passed when it was read")
            return
        self._tickets[ticket.ticket_id] = ctx
        self._specs.setdefault(key, spec)

    def _strategy(self, work: Work, validated: ValidatedBlueprint) -> tuple[CompilationStrategy, str]:
        policy = self.shared.controller.policy()
        if work.strategy is not None:
            strategy, reason = work.strategy, "as requested"
        elif work.kind == RequestKind.BLUEPRINT:
            strategy, reason = self.shared.config.compilation.default_strategy, "the configured default tier"
        else:
            left = None if work.deadline_at_ms is None else work.deadline_at_ms - _wall_ms()
            choice = choose_strategy(
                params=validated.params,
                flops=validated.flops,
                deadline_left_ms=left,
                queued=self.scheduler.queued_jobs,
                running=self.scheduler.running_jobs,
                policy=policy,
                default=self.shared.config.compilation.default_strategy,
            )
            return choice.strategy, choice.reason  # choose_strategy applies the policy itself
        lowered = policy.tier(strategy)  # EMERGENCY has no cheaper tier: it stays
        if lowered != strategy:
            reason += f"; conservative mode lowered {strategy.name} to {lowered.name}"
        return lowered, reason

    # -- jobs --------------------------------------------------------------------------------------------------

    def add_background(self, spec: JobSpec) -> bool:
        """Queue a ticketless job (an idle upgrade, a recovered job); its artifact is published like any other."""
        if spec.key in self._specs or not self.scheduler.add_background(spec.key, spec.strategy, _now_ms()):
            return False
        self._specs[spec.key] = spec
        self._background.add(spec.key)
        return True

    def _start_jobs(self) -> None:
        limit = None if self.emergency else self.shared.controller.policy().max_concurrent_jobs
        for start in self.scheduler.start(_now_ms(), limit):
            spec = self._specs.get(start.job_key)
            if spec is None:  # every ticket of it left (rebalance) between queueing and starting
                self.scheduler.finish(start.job_key)
                continue
            self.runner.start(spec, self._completions.append, txn=self._recovered_txn.pop(spec.key, None))

    def add_recovered(self, spec: JobSpec, txn: bytes) -> None:
        """A job the WAL says was in flight at the crash: redone under its own WAL transaction."""
        self._recovered_txn[spec.key] = txn
        self.add_background(spec)

    def _finish_jobs(self) -> None:
        while self._completions:
            outcome = self._completions.popleft()
            key = outcome.spec.key
            tickets = self.scheduler.finish(key)
            self._specs.pop(key, None)
            self._background.discard(key)
            ms = outcome.compile_ms
            if outcome.artifact is not None:
                self.shared.metrics.observe_compile(outcome.spec.strategy, ms)
                art = outcome.artifact
                self._outputs.append(Output(KERNELS.name, art.artifact_id, art))
                complete = pb.CompilationComplete(
                    request_id=tickets[0].request_id if tickets else "",
                    blueprint_id=art.blueprint_id,
                    artifact_id=art.artifact_id,
                    strategy=art.strategy,
                    artifact_sha256=art.sha256,
                    store_uri=art.store_uri,
                    compile_ms=round(ms),
                )
                complete.completed_at.GetCurrentTime()
                self._outputs.append(Output(COMPILATION_RESULTS.name, art.blueprint_id, complete))
                self._publishing.append(key)
            for t in tickets:
                if outcome.artifact is not None:
                    self._answer_ticket(
                        t.ticket_id,
                        artifact=outcome.artifact,
                        level=CacheLevel.MISS,
                        compile_ms=ms,
                        started_ms=outcome.started_ms,
                        spec=outcome.spec,
                    )
                else:
                    self._answer_ticket(
                        t.ticket_id,
                        failure=outcome.failure,
                        error=outcome.error,
                        compile_ms=ms,
                        started_ms=outcome.started_ms,
                    )

    # -- answers -----------------------------------------------------------------------------------------------

    def _answer_ticket(self, ticket_id: str, *, spec: JobSpec | None = None, **kwargs: object) -> None:
        ctx = self._tickets.pop(ticket_id, None)
        if ctx is None:
            return
        self._answer_ctx(ctx, **kwargs)  # type: ignore[arg-type]
        if spec is not None:
            self.on_success(ctx, spec)

    def _answer(
        self, work: Work, coords: tuple[str, int, int], message_id: str, received: float, **kwargs: object
    ) -> None:
        """Answer a request that never reached the scheduler (refused, invalid, expired)."""
        reason = "as requested" if work.strategy is not None else ""
        self._answer_ctx(Ticketed(work, coords, message_id, received, work.strategy, reason, ""), **kwargs)  # type: ignore[arg-type]

    def _answer_ctx(
        self,
        ctx: Ticketed,
        *,
        artifact: pb.CompiledKernelArtifact | None = None,
        level: CacheLevel = CacheLevel.MISS,
        failure: FailureReason | None = None,
        error: str = "",
        compile_ms: float = 0.0,
        started_ms: float | None = None,
        kernels: bool = False,
    ) -> None:
        now = _now_ms()
        work = ctx.work
        conservative = self.shared.controller.active
        result = pb.CompilationResult(
            request_id=work.request_id,
            blueprint_id=work.blueprint_id,
            success=artifact is not None,
            strategy=pb.CompilationStrategy.Name(int(ctx.strategy or 0)),
            artifact_id=artifact.artifact_id if artifact is not None else "",
            failure_reason=pb.FailureReason.Name(int(failure or 0)),
            error=error[:4000],
            queue_ms=round((started_ms if started_ms is not None else now) - ctx.received_ms),
            compile_ms=round(compile_ms),
            total_ms=round(now - ctx.received_ms),
            cache_level=pb.CacheLevel.Name(int(level) if artifact is not None else 0),
            conservative_mode=conservative,
            worker_id=self.shared.instance_id,
            requestor=work.requestor,
            strategy_reason=ctx.reason,
        )
        result.completed_at.GetCurrentTime()
        causation = ctx.message_id
        self._outputs.append(Output(COMPILATION_RESULTS.name, work.blueprint_id, result, work.request_id, causation))
        if artifact is not None and kernels:
            self._outputs.append(Output(KERNELS.name, artifact.artifact_id, artifact))
            self._publishing.append(ctx.key)
        audit = pb.AuditRecord(
            request_id=work.request_id,
            kind=pb.RequestKind.Name(int(work.kind)),
            requestor=work.requestor,
            blueprint_id=work.blueprint_id,
            origin_topic=ctx.coords[0],
            origin_partition=ctx.coords[1],
            origin_offset=ctx.coords[2],
            authorized=failure != FailureReason.UNAUTHORIZED,
            success=result.success,
            failure_reason=result.failure_reason,
            strategy=result.strategy,
            strategy_reason=ctx.reason,
            artifact_id=result.artifact_id,
            cache_level=result.cache_level,
            worker_id=self.shared.instance_id,
            error=result.error[:500],
        )
        audit.at.GetCurrentTime()
        self._outputs.append(Output(AUDIT.name, work.request_id, audit, work.request_id, causation))
        self._answered.append(ctx.coords)
        self.shared.metrics.request(
            work.kind, None if artifact is not None else failure or FailureReason.COMPILER_ERROR
        )

    def _refuse(
        self, coords: tuple[str, int, int], message_id: str, record: Record, failure: FailureReason, error: str
    ) -> None:
        kind = {"leyline.blueprints": RequestKind.BLUEPRINT, "leyline.compilation.emergency": RequestKind.EMERGENCY}
        msg = record.message
        work = Work(
            kind=kind.get(record.topic, RequestKind.COMPILATION),
            request_id=str(getattr(msg, "request_id", "") or message_id or ":".join(map(str, coords)))[:256],
            requestor=str(getattr(msg, "requestor", ""))[:256],
            blueprint_id=str(getattr(msg, "blueprint_id", ""))[:256],
            blueprint=None,
            strategy=None,
            priority=0,
            deadline_at_ms=None,
            device="cpu",
        )
        self._answer(work, coords, message_id, _now_ms(), failure=failure, error=error)

    def _dead_letter(self, msg: Message, error: BaseException, coords: tuple[str, int, int]) -> None:
        letter = dead_letter_for(msg, error, self.group_id)
        self._outputs.append(Output(DEADLETTER.name, f"{coords[0]}:{coords[1]}:{coords[2]}", letter))
        audit = pb.AuditRecord(
            request_id=f"{coords[0]}:{coords[1]}:{coords[2]}",
            origin_topic=coords[0],
            origin_partition=coords[1],
            origin_offset=coords[2],
            failure_reason=pb.FAILURE_DECODE,
            worker_id=self.shared.instance_id,
            error=letter.error[:500],
            dead_lettered=True,
        )
        audit.at.GetCurrentTime()
        self._outputs.append(Output(AUDIT.name, audit.request_id, audit))
        self._answered.append(coords)
        self.shared.metrics.dead_letter()

    # -- the transaction ---------------------------------------------------------------------------------------

    def _flush(self, *, final: bool = False) -> None:
        events: list[pb.SafetyEvent] = []
        if not self.emergency:  # the normal lane carries the service's safety events
            while self.shared.events:
                events.append(self.shared.events.popleft())
        if not (self._outputs or self._answered or events):
            return
        if not final and time.monotonic() < self._retry_at:
            self.shared.events.extendleft(reversed(events))
            return
        outputs = self._outputs + [Output(SAFETY.name, _safety_key(e), e) for e in events]
        saved = {tp: copy.deepcopy(led) for tp, led in self.ledgers.items()}  # restored if the transaction fails
        touched = set(self._dirty)
        for topic, partition, offset in self._answered:
            ledger = self.ledgers.get((topic, partition))
            if ledger is not None:
                ledger.answered(offset)
                touched.add((topic, partition))
        offsets = []
        for tp in sorted(touched):
            ledger = self.ledgers.get(tp)
            if ledger is not None:
                offset, metadata = ledger.commit_point()
                offsets.append(TopicPartition(tp[0], tp[1], offset, metadata=metadata))
        try:
            self.shared.publish_breaker.call(
                self.producer.commit, outputs, offsets, self.consumer.consumer_group_metadata()
            )
        except (TxnAbortedError, CallNotPermittedError, KafkaException) as e:
            self.ledgers.update(saved)
            self.shared.events.extendleft(reversed(events))
            self._failures += 1
            self._retry_at = time.monotonic() + RETRY_BACKOFF_S[min(self._failures, len(RETRY_BACKOFF_S)) - 1]
            fenced = isinstance(e, TxnAbortedError) and e.fenced
            log.warning("%s: answer transaction failed (%s)%s", self.name, e, "; rejoining" if fenced else "")
            if fenced:
                self._rejoin()
            return
        except TxnFatalError as e:
            self.shared.on_fatal(f"{self.name}: {e}")
            raise
        self._failures = 0
        self.answers += len(self._answered)
        for key in self._publishing:
            self.shared.cache.mark_published(key)
        self._drop_batch()
        self._dirty.clear()

    def _rejoin(self) -> None:
        """The group moved on under us: drop the batch and every request, and read again from the committed
        offsets (the next assignment rebuilds the ledgers)."""
        self._drop_batch()
        self._forget(set(self.ledgers))
        self.consumer.unsubscribe()
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _flow_control(self) -> None:
        full = {tp for tp, led in self.ledgers.items() if led.full}
        pause, resume = full - self._paused, self._paused - full
        if pause:
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self._paused = full

    def snapshot(self) -> dict[str, object]:
        return {
            "lane": self.name,
            "partitions": len(self.ledgers),
            "waiting": len(self._tickets),
            "parked": len(self._parked),
            "paused_partitions": len(self._paused),
            "answers": self.answers,
            "transactions": self.producer.transactions,
            "aborted_transactions": self.producer.aborted,
            **self.scheduler.snapshot(),
        }

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()


def _safety_key(event: pb.SafetyEvent) -> str:
    kind = event.WhichOneof("detail") or "event"
    return f"{event.subsystem}/{kind}"
