"""The forge spec's failure-mode table, row by row, against real parts: a real sandbox and real compiles where the
row is about compiling, the real conservative-mode controller and breakers on an injected clock, a real WAL on disk.

  Compilation timeout                        -> trigger conservative mode
  GPU memory exhaustion (memory usage > 80%) -> reduce concurrent jobs to 1
  Circuit breaker open                       -> enter conservative mode (and leave it after the cool-down)
  WAL corruption (CRC validation failure)    -> restore from the last checkpoint (quarantine, carry open jobs)
  torch.compile crash (process segfault)     -> restart with CPU-only mode

`job_segfault` runs in a sandbox worker, which imports it by name: this module must stay importable as
`tests.unit.test_service_failure_modes`."""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import esper.compiler.service.index as index_module
import esper.compiler.service.lane as lane_module
import esper.compiler.service.txn as txn_module
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.conservative import CauseKind, ConservativeModeController, Nvml, sample_resources
from esper.compiler.exceptions import CompileFailedError
from esper.compiler.ir.canonical import canonical_bytes
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import JobResult, SandboxExecutor
from esper.compiler.service.app import TezzeretService
from esper.compiler.service.cache import ArtifactCache, service_job_key
from esper.compiler.service.jobs import JobOutcome, JobRunner, JobSpec, is_infrastructure_failure, recovered_jobs
from esper.compiler.service.scheduler import Scheduler, Ticket
from esper.compiler.service_config import CircuitBreakerSettings, ServiceSettings, TezzeretConfig, WalSettings
from esper.compiler.wal.format import RecordType
from esper.compiler.wal.log import Wal, recover
from esper.proto.enums import CircuitState, CompilationStrategy, FailureReason
from esper.safety.breaker import CircuitBreaker
from esper.safety.clock import ManualClock
from esper.safety.exceptions import CallNotPermittedError
from esper.settings import load_settings
from tests.ir_samples import examples
from tests.sinks import MemorySink

JOBS = __name__
REPO = Path(__file__).resolve().parents[2]
CTX = {"service": "tezzeret", "compiler": "test", "device": "cpu"}
MINUTE_MS = 60_000

pytestmark = pytest.mark.timeout(180)


def job_segfault(args: Any, data: bytes) -> JobResult:
    import ctypes

    ctypes.string_at(0)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def jobs_importable() -> Iterator[None]:
    """Workers get the caller's sys.path; the repository root must be on it for them to import this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO))
        yield


@pytest.fixture(scope="module")
def executor(jobs_importable: None) -> Iterator[SandboxExecutor]:
    # One worker, so the job after a fault runs on the faulted worker's replacement.
    with SandboxExecutor(1, allowed_modules=("esper.compiler", JOBS)) as ex:
        ex.wait_ready()
        yield ex


@dataclass
class Rig:
    """One JobRunner's parts, as app.py wires them, on an injected clock."""

    runner: JobRunner
    wal: Wal
    wal_path: str
    sink: MemorySink
    clock: ManualClock
    breaker: CircuitBreaker
    controller: ConservativeModeController
    wal_types: list[str]

    def run(self, spec: JobSpec, *, during: Any = None) -> JobOutcome:
        done: queue.Queue[JobOutcome] = queue.Queue()
        self.runner.start(spec, done.put)
        if during is not None:
            during()
        return done.get(timeout=120)

    def wal_records(self) -> list[tuple[RecordType, bytes, dict[str, Any]]]:
        """(type, txn, payload) of the job records, read back from the disk after closing the WAL."""
        self.wal.close()
        report = recover(self.wal_path, keep_payloads=True)
        assert report.corruption is None
        out = []
        for r in report.records:
            if r.type in (RecordType.BEGIN, RecordType.COMMIT, RecordType.ABORT):
                out.append((RecordType(r.type), r.txn, json.loads(r.payload or b"{}")))
            elif r.type == RecordType.DATA:
                out.append((RecordType.DATA, r.txn, {}))
        return out


def rig(tmp: Path, executor: SandboxExecutor, config: TezzeretConfig) -> Rig:
    clock, sink = ManualClock(), MemorySink()
    store = LocalStore(tmp / "store")
    ring = KeyRing(tmp / "keys")
    ring.generate()
    compile_config = replace(
        config.circuit_breakers.breaker_config(), record_failure_predicate=is_infrastructure_failure
    )
    breaker = CircuitBreaker("compile", compile_config, clock=clock, sink=sink)
    controller = ConservativeModeController(config.conservative_limits(), clock=clock, sink=sink)
    controller.watch(breaker)
    wal_path = str(tmp / "wal")
    wal = Wal.open(wal_path, CTX)
    types: list[str] = []
    runner = JobRunner(
        wal=wal,
        executor=executor,
        store=store,
        ring=ring,
        cache=ArtifactCache(store, ring),
        compile_breaker=breaker,
        controller=controller,
        sink=sink,
        seed=0,
        worker="test",
        timeout_scale=config.service.tier_timeout_scale,
        on_wal=types.append,
    )
    return Rig(runner, wal, wal_path, sink, clock, breaker, controller, types)


def service_config(tmp: Path) -> TezzeretConfig:
    return TezzeretConfig(wal=WalSettings(path=tmp / "wal"), service=ServiceSettings(store=str(tmp / "store")))


def mlp_spec(strategy: CompilationStrategy = CompilationStrategy.EMERGENCY) -> JobSpec:
    validated = SecurityValidator().validate(examples()["mlp.yaml"])
    ir = canonical_bytes(validated)
    key = service_job_key(ir, strategy, 0)
    return JobSpec(key, strategy, validated.ir.blueprint_id, ir, validated, "cpu", "normal")


def conservative_events(sink: MemorySink) -> list[bool]:
    return [e.conservative_mode.active for e in sink.of_kind("conservative_mode")]  # ConservativeModeChanged


# ---------------------------------------------------------------- compilation timeout -> conservative mode


def test_a_compile_past_its_scaled_tier_timeout_fails_aborts_in_the_wal_and_enters_conservative_mode(
    executor: SandboxExecutor, tmp_path: Path
) -> None:
    config = TezzeretConfig(service=ServiceSettings(tier_timeout_scale=0.001))  # EMERGENCY's 10 s -> 10 ms
    r = rig(tmp_path, executor, config)
    spec = mlp_spec()
    out = r.run(spec)
    assert out.artifact is None and out.failure is FailureReason.TIMEOUT, out.error
    assert r.wal_types == ["begin", "data", "abort"]
    assert r.controller.active and [c.kind for c in r.controller.causes] == [CauseKind.COMPILE_TIMEOUT]
    assert r.controller.causes[0].subject == spec.key[:12]
    assert r.controller.policy().max_concurrent_jobs == 1 and r.controller.policy().timeout_multiplier == 1.5
    assert conservative_events(r.sink) == [True]
    assert r.breaker.get_stats().total_failures == 1  # a timeout is the compiler's fault: the breaker counts it
    (begin, data, abort) = r.wal_records()
    assert (begin[0], data[0], abort[0]) == (RecordType.BEGIN, RecordType.DATA, RecordType.ABORT)
    assert begin[1] == data[1] == abort[1] and begin[2]["key"] == spec.key and abort[2]["failure"] == "TIMEOUT"


# ---------------------------------------------------------------- memory exhaustion -> one job at a time


class GpuMemory:
    """The NVML calls sample_resources makes, answered by a device whose memory is `used` of `total`."""

    def __init__(self, used: int, total: int) -> None:
        self.used, self.total = used, total

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index: object, handle: object) -> int:
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle: object, rates: Any) -> int:
        rates._obj.gpu = 10
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: object, memory: Any) -> int:
        memory._obj.used, memory._obj.total = self.used, self.total
        return 0


def ticket(n: int) -> Ticket:
    return Ticket(f"t:0:{n}", f"r-{n}", f"job-{n}", CompilationStrategy.FAST, 0, False, None, float(n))


def test_memory_above_80_percent_reduces_concurrent_jobs_to_one_until_the_cool_down_after_it_falls() -> None:
    config = TezzeretConfig()
    clock, sink = ManualClock(), MemorySink()
    controller = ConservativeModeController(config.conservative_limits(), clock=clock, sink=sink)
    scheduler = Scheduler(config.compilation.max_concurrent_jobs, emergency_slots=0)
    assert controller.policy().max_concurrent_jobs == 2
    device = GpuMemory(used=85, total=100)
    sample = sample_resources(Nvml(library=device))
    assert (sample.memory_source, sample.memory_fraction) == ("gpu", 0.85)
    controller.sample(sample)
    assert controller.active and [c.kind for c in controller.causes] == [CauseKind.MEMORY_HIGH]
    assert controller.policy().max_concurrent_jobs == 1
    for n in (1, 2):
        scheduler.submit(ticket(n), clock())
    started = scheduler.start(clock(), controller.policy().max_concurrent_jobs)
    assert [s.job_key for s in started] == ["job-1"]  # one of two
    # 80% exactly is not over it; the cool-down runs from the last sample above it
    clock.advance(MINUTE_MS)
    controller.memory_sample(0.80)
    clock.advance(config.conservative_limits().cooldown_ms - 1)
    controller.tick()
    assert controller.active
    clock.advance(1)
    controller.tick()
    assert not controller.active and conservative_events(sink) == [True, False]
    assert [s.job_key for s in scheduler.start(clock(), controller.policy().max_concurrent_jobs)] == ["job-2"]


# ---------------------------------------------------------------- breaker open -> conservative mode


def test_the_compile_breaker_counts_the_compilers_faults_only_and_its_opening_holds_conservative_mode() -> None:
    config = TezzeretConfig()
    clock, sink = ManualClock(), MemorySink()
    compile_config = replace(
        config.circuit_breakers.breaker_config(), record_failure_predicate=is_infrastructure_failure
    )
    breaker = CircuitBreaker("compile", compile_config, clock=clock, sink=sink)
    controller = ConservativeModeController(config.conservative_limits(), clock=clock, sink=sink)
    controller.watch(breaker)

    def fail(reason: FailureReason) -> None:
        def compile_() -> None:
            raise CompileFailedError(reason, f"{reason.name} in a test")

        with pytest.raises(CompileFailedError):
            breaker.call(compile_)

    for reason in (FailureReason.COMPILER_ERROR, FailureReason.VALIDATION) * 5:
        fail(reason)  # a blueprint's fault, however often
    assert breaker.state is CircuitState.CLOSED and not controller.active
    for _ in range(config.circuit_breakers.failure_threshold - 1):
        fail(FailureReason.SANDBOX_CRASH)
    assert breaker.state is CircuitState.CLOSED
    fail(FailureReason.TIMEOUT)
    assert breaker.state is CircuitState.OPEN
    assert controller.active and [(c.kind, c.subject) for c in controller.causes] == [
        (CauseKind.BREAKER_OPEN, "compile")
    ]
    assert controller.policy().max_concurrent_jobs == 1
    with pytest.raises(CallNotPermittedError):
        breaker.call(lambda: None)

    # the cool-down passes, but an open breaker holds the mode
    clock.advance(config.conservative_limits().cooldown_ms + 1)
    controller.tick()
    assert controller.active
    # the breaker's open timeout has passed too: probes succeed and close it
    for _ in range(breaker.config.success_threshold):
        breaker.call(lambda: None)
    assert breaker.state is CircuitState.CLOSED and controller.active  # the cool-down restarts at the close
    clock.advance(config.conservative_limits().cooldown_ms - 1)
    controller.tick()
    assert controller.active
    clock.advance(1)
    controller.tick()
    assert not controller.active and conservative_events(sink) == [True, False]


def test_the_service_wires_that_predicate_into_its_compile_breaker_and_watches_every_breaker(tmp_path: Path) -> None:
    svc = TezzeretService(service_config(tmp_path), load_settings(home=tmp_path), bootstrap_servers="unused")
    assert svc.breakers["compile"].config.record_failure_predicate is is_infrastructure_failure
    assert svc.breakers["store"].config.record_failure_predicate is None
    svc.breakers["publish"].transition_to_open("test")
    assert svc.controller.active and svc.controller.causes[0].subject == "publish"


# ---------------------------------------------------------------- WAL corruption -> restore from the checkpoint


def test_service_construction_touches_no_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kafka(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Kafka client was created")

    for module, name in ((lane_module, "Consumer"), (index_module, "Consumer"), (txn_module, "Producer")):
        monkeypatch.setattr(module, name, no_kafka)
    svc = TezzeretService(service_config(tmp_path), load_settings(home=tmp_path), bootstrap_servers="unused")
    assert svc.lanes == [] and svc.index is None and svc.wal is None and svc.http is None
    assert not (tmp_path / "wal").exists()  # nor the WAL: start() opens it


def test_a_corrupt_wal_is_quarantined_and_a_new_one_carries_the_unsettled_jobs(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    settled, unsettled, lost = b"s" * 16, b"u" * 16, b"l" * 16
    wal = Wal.open(str(path), CTX)
    wal.begin(settled, json.dumps({"key": "k-settled", "strategy": "FAST", "blueprint_id": "bp-s"}).encode())
    wal.data(settled, b"ir-settled")
    wal.commit(settled, json.dumps({"artifact_id": "a" * 64}).encode())
    head = {"key": "k-open", "strategy": "FAST", "blueprint_id": "bp-o", "device": "cpu", "lane": "normal"}
    wal.begin(unsettled, json.dumps(head).encode())
    wal.data(unsettled, b"ir-open")
    victim = wal.begin(lost, json.dumps({"key": "k-lost", "strategy": "FAST"}).encode())
    wal.data(lost, b"ir-lost")
    wal.data(lost, b"ir-lost-more")
    wal.close()
    # a header byte of `lost`'s BEGIN, with records after it: corruption, not a torn tail
    at = next(r for r in recover(str(path), repair=False).records if r.lsn == victim)
    segment = path / f"wal-{at.segment_id:016d}.seg"
    raw = bytearray(segment.read_bytes())
    raw[at.offset + 40] ^= 1
    segment.write_bytes(bytes(raw))
    corrupt = recover(str(path), repair=False)
    assert corrupt.corruption is not None and corrupt.corruption.offset == at.offset

    svc = TezzeretService(service_config(tmp_path), load_settings(home=tmp_path), bootstrap_servers="unused")
    records = svc._open_wal()
    assert svc.quarantined and Path(svc.quarantined).is_dir() and segment.name in os.listdir(svc.quarantined)
    assert svc.wal is not None and path.is_dir()
    # what came before the corruption: the settled job indexes its artifact, the open one is redone
    jobs = recovered_jobs(records)
    assert jobs.committed == {"k-settled": "a" * 64}
    assert [(txn, ir) for txn, _, ir in jobs.redo] == [(unsettled, b"ir-open")]
    assert set(svc.wal.unsettled_jobs()) == {unsettled}
    svc.wal.close()
    reopened = Wal.open(str(path), CTX, keep_payloads=True)
    carried = recovered_jobs(reopened.recovery.records)
    reopened.close()
    assert carried.redo == [(unsettled, head, b"ir-open")] and carried.committed == {}


# ---------------------------------------------------------------- a compiler crash -> CPU-only restart


def test_a_segfault_restarts_the_worker_cpu_only_where_compiles_go_on_and_a_crash_mid_compile_is_counted(
    executor: SandboxExecutor, tmp_path: Path
) -> None:
    executor.wait_ready()
    (before,) = executor.workers()
    assert not before.cpu_only  # only this test makes CPU-only workers
    out = executor.run(f"{JOBS}.job_segfault")
    assert out.failure is FailureReason.SANDBOX_CRASH and out.signal == signal.SIGSEGV
    (worker,) = executor.workers()
    assert worker.pid != before.pid and worker.cpu_only

    # the service goes on, on the CPU-only worker: a real compile commits
    r = rig(tmp_path, executor, TezzeretConfig(circuit_breakers=CircuitBreakerSettings(failure_threshold=1)))
    compiled = r.run(mlp_spec())
    assert compiled.failure is None and compiled.artifact is not None, compiled.error
    assert r.wal_types == ["begin", "data", "commit"]

    # a compile whose worker dies of SIGSEGV: a crash outcome, aborted, and the compile breaker counts it
    executor.wait_ready()
    (worker,) = executor.workers()

    def segfault() -> None:
        time.sleep(0.2)  # the job is on its way or running: a crash either way
        os.kill(worker.pid, signal.SIGSEGV)

    crashed = r.run(mlp_spec(CompilationStrategy.FAST), during=segfault)
    assert crashed.failure is FailureReason.SANDBOX_CRASH and "SIGSEGV" in crashed.error, crashed.error
    assert r.wal_types == ["begin", "data", "commit", "begin", "data", "abort"]
    assert r.breaker.state is CircuitState.OPEN and r.controller.active
    (replacement,) = executor.workers()
    assert replacement.pid != worker.pid and replacement.cpu_only
    abort = r.wal_records()[-1]
    assert abort[0] is RecordType.ABORT and abort[2]["failure"] == "SANDBOX_CRASH"
