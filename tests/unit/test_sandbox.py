"""The sandbox against real faults: each job below runs in a warm worker process, and the caller gets a typed
outcome in bounded time (pytest-timeout bounds each test; nothing asserts a duration).

The `job_*` functions are the jobs: the workers import this module by name, so it must stay importable as
`tests.unit.test_sandbox`."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.compiler.exceptions import SandboxClosedError, SandboxJobRejectedError
from esper.compiler.sandbox import JobLimits, JobResult, SandboxExecutor, SandboxOutcome
from esper.proto.enums import FailureReason

JOBS = __name__  # the allow-list of the executors below holds this module only
SMALL = JobLimits(timeout_s=60.0, cpu_s=30, memory_bytes=512 << 20)

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- jobs (run inside the workers)


def job_echo(args: Any, data: bytes) -> JobResult:
    return JobResult({"args": args, "pid": os.getpid(), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}, data)


def job_raise(args: Any, data: bytes) -> JobResult:
    raise ValueError(f"bad blueprint {args['name']}")


def job_memory_bomb(args: Any, data: bytes) -> JobResult:
    hoard = []
    while True:
        hoard.append(b"\x01" * (64 << 20))  # written, not just mapped


def job_wrapped_memory_error(args: Any, data: bytes) -> JobResult:
    # As dynamo reports a std::bad_alloc: InternalTorchDynamoError raised from the MemoryError.
    try:
        raise MemoryError("std::bad_alloc")
    except MemoryError as exc:
        raise RuntimeError("compile failed") from exc


def job_tensor_bomb(args: Any, data: bytes) -> JobResult:
    import torch

    return JobResult(torch.ones(1 << 33).sum().item())  # 32 GiB of float32


def job_endless_loop(args: Any, data: bytes) -> JobResult:
    while True:
        pass


def job_abort(args: Any, data: bytes) -> JobResult:
    os.abort()


def job_segfault(args: Any, data: bytes) -> JobResult:
    import ctypes

    ctypes.string_at(0)
    raise AssertionError("unreachable")


def job_exit(args: Any, data: bytes) -> JobResult:
    os._exit(3)


def job_hung_gxx(args: Any, data: bytes) -> JobResult:
    # g++ reading its source from a pipe that never closes, a compiler hung in a child process: g++ (and the
    # cc1plus it starts) hold the write end themselves, so the worker's death alone does not end it.
    read, write = os.pipe()
    gxx = subprocess.Popen(["g++", "-x", "c++", "-fsyntax-only", "-"], stdin=read, pass_fds=(write,))
    os.close(read)
    os.close(write)
    staged = Path(args["pid_file"] + ".tmp")
    staged.write_text(str(gxx.pid))
    staged.rename(args["pid_file"])  # whole or absent: the test polls for it
    gxx.wait()
    raise AssertionError("unreachable")


def job_sleep(args: Any, data: bytes) -> JobResult:
    Path(args["started"]).touch()
    time.sleep(60)
    return JobResult()


def job_forged_frame(args: Any, data: bytes) -> JobResult:
    # A compromised worker writes its own frame header claiming 4 GiB into the channel.
    fd = json.loads(sys.argv[1])["fd"]
    os.write(fd, struct.pack("!II", 0xFFFFFFFF, 0))
    time.sleep(60)
    return JobResult()


def job_compile(args: Any, data: bytes) -> JobResult:
    import torch
    import torch._dynamo.utils

    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.sin(x) ** 2 + x, backend=args["backend"], fullgraph=True)
    x = torch.arange(4.0, requires_grad=True)
    f(x).sum().backward()
    assert x.grad is not None
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return JobResult({"grad": x.grad.tolist(), "graphs": graphs})


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def jobs_importable() -> Iterator[None]:
    """Workers get the caller's sys.path; pytest's importlib mode imports this module without the repository
    root on it, so it is put there while this module's workers start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).resolve().parents[2]))
        yield


@pytest.fixture(scope="module")
def sandbox(jobs_importable: None) -> Iterator[SandboxExecutor]:
    # Two workers: a fault's replacement warms while the next test runs on the other one.
    with SandboxExecutor(2, allowed_modules=(JOBS,), limits=SMALL, max_data_bytes=1 << 20) as ex:
        ex.wait_ready()
        yield ex


@pytest.fixture(scope="module")
def crash_sandbox(jobs_importable: None) -> Iterator[SandboxExecutor]:
    # One worker, so the job after a crash runs on the crashed worker's replacement.
    with SandboxExecutor(1, allowed_modules=(JOBS,), limits=SMALL) as ex:
        ex.wait_ready()
        yield ex


def _live_in_group(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (an orphan's zombie may wait for a slow init to reap it)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _replaced(ex: SandboxExecutor, outcome: SandboxOutcome) -> None:
    """The dead worker is gone from the pool and was replaced in normal (not CPU-only) mode."""
    workers = ex.workers()
    assert len(workers) == 2
    assert outcome.worker_pid not in [w.pid for w in workers]
    assert not any(w.cpu_only for w in workers)


# ---------------------------------------------------------------- tests


def test_job_gets_json_and_bytes_back_and_worker_stays_warm(sandbox: SandboxExecutor) -> None:
    first = sandbox.run(f"{JOBS}.job_echo", {"n": [1, 2]}, b"\x00\xff" * 10)
    second = sandbox.run(f"{JOBS}.job_echo", "x", b"")
    assert first.ok and first.failure is None
    assert first.value["args"] == {"n": [1, 2]} and first.data == b"\x00\xff" * 10
    assert first.value["pid"] == first.worker_pid != os.getpid()  # ran in a worker, not here
    assert first.timings.job_s is not None
    # Two workers, two jobs: both stay alive for the next job.
    pids = {w.pid for w in sandbox.workers()}
    assert {first.worker_pid, second.worker_pid} <= pids


def test_python_exception_is_a_compiler_error_with_its_traceback(sandbox: SandboxExecutor) -> None:
    out = sandbox.run(f"{JOBS}.job_raise", {"name": "bp-7"})
    assert not out.ok
    assert out.failure == FailureReason.COMPILER_ERROR
    assert "ValueError: bad blueprint bp-7" in out.message and "job_raise" in out.message
    assert out.exit_code is None and out.signal is None
    assert out.worker_pid in [w.pid for w in sandbox.workers()]  # an exception does not cost the worker


@pytest.mark.parametrize("job", ["job_memory_bomb", "job_tensor_bomb", "job_wrapped_memory_error"])
def test_memory_bomb_hits_the_address_space_limit_and_worker_survives(sandbox: SandboxExecutor, job: str) -> None:
    out = sandbox.run(f"{JOBS}.{job}", limits=JobLimits(timeout_s=60.0, cpu_s=30, memory_bytes=256 << 20))
    assert out.failure == FailureReason.RESOURCE_LIMIT, out.message
    assert "MemoryError" in out.message or "can't allocate memory" in out.message
    assert out.signal is None
    after = sandbox.run(f"{JOBS}.job_echo", None)  # the limit was lifted after the job: the worker works
    assert after.ok
    assert out.worker_pid in [w.pid for w in sandbox.workers()]


def test_endless_loop_dies_of_the_cpu_limit(sandbox: SandboxExecutor) -> None:
    out = sandbox.run(f"{JOBS}.job_endless_loop", limits=JobLimits(timeout_s=60.0, cpu_s=1, memory_bytes=1 << 30))
    assert out.failure == FailureReason.RESOURCE_LIMIT
    assert out.signal == signal.SIGXCPU and out.exit_code is None
    assert "SIGXCPU" in out.message
    _replaced(sandbox, out)


def test_endless_loop_past_the_wall_clock_timeout_is_killed(sandbox: SandboxExecutor) -> None:
    out = sandbox.run(f"{JOBS}.job_endless_loop", limits=JobLimits(timeout_s=1.0, cpu_s=60, memory_bytes=1 << 30))
    assert out.failure == FailureReason.TIMEOUT
    assert out.signal == signal.SIGKILL
    _replaced(sandbox, out)


def test_hung_gxx_is_killed_with_its_worker(sandbox: SandboxExecutor, tmp_path: Path) -> None:
    pid_file = tmp_path / "gxx.pid"
    out = sandbox.run(f"{JOBS}.job_hung_gxx", {"pid_file": str(pid_file)}, limits=JobLimits(timeout_s=3.0))
    assert out.failure == FailureReason.TIMEOUT
    assert out.signal == signal.SIGKILL
    gxx = int(pid_file.read_text())
    # SIGKILL went to the worker's whole group: g++ and its cc1plus die (the loop ends under the test's timeout).
    while _live_in_group(out.worker_pid) or _alive(gxx):
        time.sleep(0.05)
    _replaced(sandbox, out)


def test_worker_exiting_mid_job_is_a_sandbox_crash(sandbox: SandboxExecutor) -> None:
    out = sandbox.run(f"{JOBS}.job_exit")
    assert out.failure == FailureReason.SANDBOX_CRASH
    assert out.exit_code == 3 and out.signal is None
    _replaced(sandbox, out)  # not the compiler crashing: no CPU-only mode


def test_forged_frame_from_a_compromised_worker_is_refused(sandbox: SandboxExecutor) -> None:
    out = sandbox.run(f"{JOBS}.job_forged_frame")
    assert out.failure == FailureReason.SANDBOX_CRASH
    assert "protocol violation" in out.message and out.signal == signal.SIGKILL
    _replaced(sandbox, out)


@pytest.mark.parametrize(("job", "sig", "text"), [("job_abort", signal.SIGABRT, "Aborted"),
                                                 ("job_segfault", signal.SIGSEGV, "Segmentation fault")])  # fmt: skip
def test_compiler_crash_is_a_sandbox_crash_and_the_replacement_is_cpu_only(
    crash_sandbox: SandboxExecutor, job: str, sig: signal.Signals, text: str
) -> None:
    out = crash_sandbox.run(f"{JOBS}.{job}")
    assert out.failure == FailureReason.SANDBOX_CRASH
    assert out.signal == sig and out.exit_code is None
    assert text in out.message and job in out.message  # faulthandler's traceback from the worker's stderr
    probe = crash_sandbox.run(f"{JOBS}.job_echo")
    assert probe.ok and probe.worker_pid != out.worker_pid
    assert probe.cpu_only and probe.value["cuda_visible"] == ""  # hidden before the worker imported torch


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_runs_in_the_worker(sandbox: SandboxExecutor, backend: str) -> None:
    # A worker's first compile maps more than 512 MiB (dynamo's lazy imports): SMALL would refuse it.
    limits = JobLimits(timeout_s=120.0, cpu_s=60, memory_bytes=2 << 30)
    out = sandbox.run(f"{JOBS}.job_compile", {"backend": backend}, limits=limits)
    assert out.ok, out.message
    assert out.value["graphs"] >= 1  # dynamo captured a graph: it compiled, not ran eager
    expected = [math.sin(2 * x) + 1 for x in range(4)]  # d/dx (sin^2 x + x)
    assert out.value["grad"] == pytest.approx(expected, rel=1e-6)


def test_jobs_the_caller_may_not_ask_for_are_rejected_before_any_worker(sandbox: SandboxExecutor) -> None:
    with pytest.raises(SandboxJobRejectedError):
        sandbox.run("os.system", "true")
    with pytest.raises(SandboxJobRejectedError):
        sandbox.run(f"{JOBS}x.job_echo")  # a prefix of the module name is not the module
    with pytest.raises(SandboxJobRejectedError):
        sandbox.run(f"{JOBS}.job_echo", {"not": {1, 2}})
    with pytest.raises(SandboxJobRejectedError):
        sandbox.run(f"{JOBS}.job_echo", None, bytes((1 << 20) + 1))
    with pytest.raises(SandboxJobRejectedError):
        JobLimits(timeout_s=0)


def test_close_cancels_the_job_in_flight_and_refuses_later_ones(jobs_importable: None, tmp_path: Path) -> None:
    ex = SandboxExecutor(1, allowed_modules=(JOBS,), limits=SMALL)
    started = tmp_path / "started"
    outcomes: list[SandboxOutcome] = []
    job = threading.Thread(target=lambda: outcomes.append(ex.run(f"{JOBS}.job_sleep", {"started": str(started)})))
    job.start()
    while not started.exists():
        time.sleep(0.05)
    ex.close()
    job.join()
    assert outcomes[0].failure == FailureReason.CANCELLED
    assert ex.workers() == []
    with pytest.raises(SandboxClosedError):
        ex.run(f"{JOBS}.job_echo")


# A caller of its own, killed by the test: its worker runs a hung g++ when it dies.
CALLER = """
import sys
sys.path.insert(0, sys.argv[1])
from esper.compiler.sandbox import SandboxExecutor
ex = SandboxExecutor(1, allowed_modules=(sys.argv[2],))
print(ex.wait_ready()[0].pid, flush=True)
ex.run(sys.argv[2] + ".job_hung_gxx", {"pid_file": sys.argv[3]})
"""


def test_a_killed_caller_takes_its_workers_and_their_children_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "gxx.pid"
    repo = str(Path(__file__).resolve().parents[2])
    args = [sys.executable, "-c", CALLER, repo, JOBS, str(pid_file)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as caller:
        assert caller.stdout is not None
        worker = int(caller.stdout.readline())
        while not pid_file.exists():
            time.sleep(0.05)
        gxx = int(pid_file.read_text())
        caller.kill()
    # The worker saw the channel close and killed its group: it, g++ and cc1plus go (bounded by the timeout).
    while _live_in_group(worker) or _alive(gxx):
        time.sleep(0.05)


def test_worker_that_does_not_start_in_time_is_a_sandbox_crash(jobs_importable: None) -> None:
    with SandboxExecutor(1, allowed_modules=(JOBS,), start_timeout_s=0.01) as ex:
        out = ex.run(f"{JOBS}.job_echo")
        assert out.failure == FailureReason.SANDBOX_CRASH
        assert "did not start" in out.message and out.signal == signal.SIGKILL
        assert [w.pid for w in ex.workers()] != [out.worker_pid]  # replaced


def test_the_caller_imports_neither_kafka_nor_torch() -> None:
    # The sandbox runs on the GPU benchmark machine, which has no Kafka client; torch lives in the workers.
    code = "import json, sys, esper.compiler.sandbox; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert "esper.compiler.sandbox" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("confluent_kafka", "torch") or m.startswith("esper.streams")]
