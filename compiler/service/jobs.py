"""One compile job of the service, in its own thread: WAL BEGIN and DATA, the sandboxed compile through the compile
breaker, the artifact stored through the store breaker, WAL COMMIT (or ABORT), then its outcome to the lane.

The WAL holds a job as: BEGIN {key, strategy, blueprint_id, device, lane}, DATA (the canonical IR bytes), then
COMMIT {artifact_id} or ABORT {failure, error}. After a crash, `recovered_jobs` reads it back: committed jobs index
their artifacts (finished work is answered from the store, never recompiled), jobs with their DATA are redone under
their own transaction id, and a job that has only its BEGIN is aborted (its request comes again from Kafka, whose
offset was not committed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.compile import compile_blueprint
from esper.compiler.conservative import ConservativeModeController
from esper.compiler.exceptions import ArtifactError, CompileFailedError, WalError
from esper.compiler.ir.validate import ValidatedBlueprint
from esper.compiler.sandbox import JobLimits, SandboxExecutor
from esper.compiler.service.cache import ArtifactCache
from esper.compiler.service.metrics import WalRecordType
from esper.compiler.tiers import TIERS
from esper.compiler.wal.format import RecordType
from esper.compiler.wal.log import Wal
from esper.compiler.wal.scan import ScannedRecord
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy, FailureReason
from esper.safety.breaker import CircuitBreaker
from esper.safety.events import EventSink
from esper.safety.exceptions import CallNotPermittedError

__all__ = ["BreakerStore", "JobOutcome", "JobRunner", "JobSpec", "RecoveredJobs", "recovered_jobs"]

log = logging.getLogger(__name__)

# The worker faults that say the compiler (not the blueprint) is in trouble: what the compile breaker counts.
INFRASTRUCTURE_FAILURES = frozenset({FailureReason.SANDBOX_CRASH, FailureReason.TIMEOUT})


def is_infrastructure_failure(error: BaseException) -> bool:
    return isinstance(error, CompileFailedError) and error.reason in INFRASTRUCTURE_FAILURES


@dataclass(frozen=True)
class JobSpec:
    key: str
    strategy: CompilationStrategy
    blueprint_id: str
    ir: bytes  # canonical BlueprintIR bytes
    validated: ValidatedBlueprint
    device: str
    lane: str


@dataclass(frozen=True)
class JobOutcome:
    spec: JobSpec
    artifact: pb.CompiledKernelArtifact | None  # None: failed
    failure: FailureReason | None
    error: str
    started_ms: float  # monotonic
    compile_ms: float
    worker: str


class BreakerStore:
    """An ArtifactStore whose reads and writes go through the store breaker."""

    def __init__(self, store: ArtifactStore, breaker: CircuitBreaker) -> None:
        self._store, self._breaker = store, breaker

    def uri(self, artifact_id: str) -> str:
        return self._store.uri(artifact_id)

    def exists(self, artifact_id: str) -> bool:
        return self._breaker.call(self._store.exists, artifact_id)

    def ids(self) -> list[str]:
        return self._breaker.call(self._store.ids)

    def names(self, artifact_id: str) -> list[str]:
        return self._breaker.call(self._store.names, artifact_id)

    def read(self, artifact_id: str, name: str, limit: int) -> bytes:
        return self._breaker.call(self._store.read, artifact_id, name, limit)

    def put(self, artifact_id: str, files: Mapping[str, bytes]) -> bool:
        return self._breaker.call(self._store.put, artifact_id, files)


class JobRunner:
    """Runs JobSpecs on a sandbox, each in a thread; `on_done` gets the outcome (from that thread)."""

    def __init__(
        self,
        *,
        wal: Wal | None,
        executor: SandboxExecutor,
        store: ArtifactStore,
        ring: KeyRing,
        cache: ArtifactCache,
        compile_breaker: CircuitBreaker,
        controller: ConservativeModeController,
        sink: EventSink,
        seed: int,
        worker: str,
        timeout_scale: float = 1.0,
        on_wal: Callable[[WalRecordType], None] = lambda _type: None,
        on_wal_failure: Callable[[BaseException], None] = lambda _e: None,
    ) -> None:
        self.wal, self.executor, self.store, self.ring, self.cache = wal, executor, store, ring, cache
        self.compile_breaker, self.controller, self.sink = compile_breaker, controller, sink
        self.seed, self.worker, self.timeout_scale = seed, worker, timeout_scale
        self._on_wal, self._on_wal_failure = on_wal, on_wal_failure
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, spec: JobSpec, on_done: Callable[[JobOutcome], None], *, txn: bytes | None = None) -> None:
        """Run `spec` in a new thread; `txn`: a recovered job's WAL transaction (its BEGIN and DATA are logged)."""
        thread = threading.Thread(target=self._run, args=(spec, on_done, txn), name=f"compile-{spec.key[:8]}")
        with self._lock:
            self._threads.add(thread)
        thread.start()

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._threads)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _log(self, kind: RecordType, txn: bytes, payload: bytes) -> None:
        if self.wal is None:
            return
        try:
            self.wal.append(kind, txn, payload)
        except WalError as e:
            self._on_wal_failure(e)
            raise
        self._on_wal(cast(WalRecordType, kind.name.lower()))

    def _run(self, spec: JobSpec, on_done: Callable[[JobOutcome], None], txn: bytes | None) -> None:
        started = time.monotonic() * 1e3
        try:
            outcome = self._compile(spec, txn, started)
        except WalError as e:  # durability is gone: the shell stops taking work; nothing is answered for this job
            outcome = JobOutcome(spec, None, FailureReason.STORE_ERROR, f"WAL: {e}", started, 0.0, self.worker)
        except Exception as e:  # a bug must not lose the job's tickets: they get a typed failure
            log.exception("compile job %s failed unexpectedly", spec.key[:12])
            outcome = JobOutcome(spec, None, FailureReason.COMPILER_ERROR, repr(e), started, 0.0, self.worker)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
        on_done(outcome)

    def _compile(self, spec: JobSpec, txn: bytes | None, started: float) -> JobOutcome:
        if txn is None:
            txn = uuid.uuid4().bytes
            head = {"key": spec.key, "strategy": spec.strategy.name, "blueprint_id": spec.blueprint_id}
            self._log(RecordType.BEGIN, txn, json.dumps({**head, "device": spec.device, "lane": spec.lane}).encode())
            self._log(RecordType.DATA, txn, spec.ir)
        timeout = TIERS[spec.strategy].timeout_s * self.timeout_scale * self.controller.policy().timeout_multiplier
        limits = JobLimits(timeout_s=timeout, cpu_s=max(1, int(timeout * 2)))
        failure: FailureReason | None = None
        error = ""
        artifact = None
        try:
            report = self.compile_breaker.call(
                compile_blueprint,
                spec.validated,
                spec.strategy,
                executor=self.executor,
                store=self.store,
                ring=self.ring,
                sink=self.sink,
                seed=self.seed,
                limits=limits,
                source_id=self.worker,
            )
            artifact = self.cache.put(spec.key, report.artifact)
        except CompileFailedError as e:
            failure, error = e.reason, str(e)
            if e.reason == FailureReason.TIMEOUT:
                self.controller.compile_timeout(spec.key[:12], f"{spec.strategy.name} over {timeout:.0f} s")
        except CallNotPermittedError as e:
            failure, error = FailureReason.CIRCUIT_OPEN, str(e)
        except (ArtifactError, OSError) as e:
            failure, error = FailureReason.STORE_ERROR, f"{type(e).__name__}: {e}"
        compile_ms = time.monotonic() * 1e3 - started
        if artifact is not None:
            self._log(RecordType.COMMIT, txn, json.dumps({"artifact_id": artifact.artifact_id}).encode())
        else:
            assert failure is not None
            self._log(RecordType.ABORT, txn, json.dumps({"failure": failure.name, "error": error[:2000]}).encode())
        return JobOutcome(spec, artifact, failure, error, started, compile_ms, self.worker)


@dataclass(frozen=True)
class RecoveredJobs:
    committed: dict[str, str]  # job key -> artifact id
    redo: list[tuple[bytes, dict[str, str], bytes]]  # (txn, BEGIN fields, canonical IR) of jobs to finish
    begun_only: list[bytes]  # jobs with a BEGIN and nothing else: aborted (their requests come again)


def recovered_jobs(records: Sequence[ScannedRecord]) -> RecoveredJobs:
    """What the WAL's records say about each job (pure): see the module's docstring."""
    begins: dict[bytes, dict[str, str]] = {}
    data: dict[bytes, bytes] = {}
    settled: set[bytes] = set()
    committed: dict[str, str] = {}
    for r in records:
        payload = r.payload or b""
        if r.type == RecordType.BEGIN:
            try:
                begins[r.txn] = {str(k): str(v) for k, v in json.loads(payload).items()}
            except (ValueError, AttributeError):
                log.warning("WAL job %s: unreadable BEGIN payload", r.txn.hex())
                begins[r.txn] = {}
        elif r.type == RecordType.DATA:
            data[r.txn] = payload
        elif r.type in (RecordType.COMMIT, RecordType.ABORT):
            settled.add(r.txn)
            if r.type == RecordType.COMMIT and "key" in begins.get(r.txn, {}):
                try:
                    committed[begins[r.txn]["key"]] = str(json.loads(payload)["artifact_id"])
                except (ValueError, KeyError, TypeError):
                    log.warning("WAL job %s: unreadable COMMIT payload", r.txn.hex())
    redo, begun_only = [], []
    for txn, head in begins.items():
        if txn in settled:
            continue
        if txn in data and "key" in head:
            redo.append((txn, head, data[txn]))
        else:
            begun_only.append(txn)
    return RecoveredJobs(committed, redo, begun_only)
