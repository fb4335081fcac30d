"""Tezzeret's sandbox (the spec's SandboxExecutor): compiles run in warm worker processes, never in the caller.

Each worker is a fresh interpreter (exec'd, in its own session, so its whole process group, a hung g++ included,
can be killed) that imports torch, dynamo and inductor once and then serves one job at a time over a socket. A job
names a function by dotted path under an allow-listed module and passes JSON and bytes; the answer comes back as a
length-prefixed frame of JSON and bytes, never a pickle, so a compromised worker cannot run code in the caller.
Per job the worker's soft RLIMIT_AS and RLIMIT_CPU are lowered to what the job may add to it, and the caller kills
the process group when the wall-clock timeout passes. The outcome is judged by what came back or how the worker
died, and is always a `SandboxOutcome`; a dead worker is replaced, in CPU-only mode after a compiler crash.

This module imports no Kafka and no torch: the caller never imports torch for it, and it runs where Kafka is absent.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import importlib
import json
import math
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from esper.compiler.exceptions import SandboxClosedError, SandboxJobRejectedError
from esper.proto.enums import FailureReason

__all__ = ["JobLimits", "JobResult", "PhaseTimings", "SandboxExecutor", "SandboxOutcome", "WorkerInfo"]

_FRAME = struct.Struct("!II")  # JSON length, bytes length
_MAX_HEADER = 16 << 20  # a traceback or a JSON value larger than this is a worker misbehaving
_STDERR_TAIL = 8192  # what of a dead worker's stderr (faulthandler's traceback, say) the outcome quotes
# Deaths that mean the compiler itself crashed: the spec's failure table restarts such a worker CPU-only.
_COMPILER_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE})
_WORKER_MAIN = "from esper.compiler.sandbox import _worker_main; _worker_main()"


@dataclass(frozen=True)
class JobLimits:
    """What one job may use: wall-clock seconds (the tier's timeout), CPU seconds, and bytes of address space the
    job may add to the warm worker's (torch alone maps about 3.4 GB, so an absolute cap would mostly measure it)."""

    timeout_s: float = 600.0
    cpu_s: int = 600
    memory_bytes: int = 4 << 30

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.cpu_s > 0 and self.memory_bytes > 0):
            raise SandboxJobRejectedError(f"limits must be positive: {self}")


@dataclass(frozen=True)
class JobResult:
    """What a job function returns: a JSON value and bytes (an artifact, a cache blob)."""

    value: Any = None
    data: bytes = b""


@dataclass(frozen=True)
class PhaseTimings:
    """Seconds spent waiting for a warm worker, from sending the job to its answer or death (caller's clock), and
    inside the job function (the worker's clock; None when the worker died)."""

    wait_s: float
    run_s: float
    job_s: float | None


@dataclass(frozen=True)
class SandboxOutcome:
    """The result of one job. ok: `value`/`data` hold what the job returned. Else `failure` says why and
    `message` carries the traceback or the dead worker's last stderr; `exit_code` (a normal exit status) or
    `signal` (the signal that killed it) is set when the worker died."""

    ok: bool
    failure: FailureReason | None
    message: str
    timings: PhaseTimings
    worker_pid: int
    cpu_only: bool
    value: Any = None
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the executor sees it; `start_s` is launch to warm (torch imported), once it reported ready."""

    pid: int
    cpu_only: bool
    ready: bool
    start_s: float | None


class _ProtocolError(Exception):
    """The worker sent something that is not a frame we accept."""


def _read_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes | None:
    """n bytes, None at EOF; raises TimeoutError once the deadline (monotonic) passes."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _recv_frame(sock: socket.socket, deadline: float | None, max_data: int) -> tuple[Any, bytes] | None:
    head = _read_exact(sock, _FRAME.size, deadline)
    if head is None:
        return None
    n_json, n_data = _FRAME.unpack(head)
    if n_json > _MAX_HEADER or n_data > max_data:
        raise _ProtocolError(f"frame of {n_json} + {n_data} bytes is over the limit")
    body = _read_exact(sock, n_json + n_data, deadline)
    if body is None:
        return None
    try:
        header = json.loads(body[:n_json])
    except ValueError as exc:
        raise _ProtocolError(f"frame header is not JSON: {exc}") from None
    return header, body[n_json:]


def _send_frame(sock: socket.socket, header: Any, data: bytes, deadline: float | None) -> None:
    raw = json.dumps(header).encode()
    sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
    sock.sendall(_FRAME.pack(len(raw), len(data)) + raw + data)


def _allowed(function: str, allowed_modules: Sequence[str]) -> bool:
    module = function.rpartition(".")[0]
    return any(module == m or module.startswith(m + ".") for m in allowed_modules)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# ---------------------------------------------------------------- the worker (runs in the child interpreter)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _is_memory_error(exc: BaseException | None) -> bool:
    """Whether the exception or one it was raised from is an allocation refused (dynamo wraps a std::bad_alloc
    in InternalTorchDynamoError)."""
    import torch

    seen = 0
    while exc is not None and seen < 16:
        # torch's CPU allocator raises RuntimeError when RLIMIT_AS refuses it; CUDA's has a type of its own.
        if isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _run_job(request: Any, data: bytes, allowed_modules: Sequence[str]) -> tuple[dict[str, Any], bytes]:
    function = request["function"]
    if not _allowed(function, allowed_modules):  # the caller checked; a worker trusts no one
        return {"ok": False, "kind": "error", "message": f"{function} is not under an allowed module"}, b""
    saved = {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU)}
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    # RLIMIT_CPU counts the process's whole life: the job's budget starts at what a warm worker has used.
    soft = {
        resource.RLIMIT_CPU: math.ceil(rusage.ru_utime + rusage.ru_stime) + request["cpu_s"],
        resource.RLIMIT_AS: _address_space() + request["memory_bytes"],
    }
    error: BaseException | None = None
    started = time.monotonic()
    try:
        for r, (_, hard) in saved.items():
            # The soft limit alone: a lowered hard limit could never be raised again for the next job.
            resource.setrlimit(r, (soft[r] if hard == resource.RLIM_INFINITY else min(soft[r], hard), hard))
        module, _, name = function.rpartition(".")
        fn: Callable[[Any, bytes], Any] = getattr(importlib.import_module(module), name)
        result = fn(request["args"], data)
    except BaseException as exc:
        error = exc
    finally:
        # Restored before anything else: formatting a MemoryError's traceback needs memory too.
        for r, limit in saved.items():
            resource.setrlimit(r, limit)
    job_s = time.monotonic() - started
    if error is not None:
        kind = "memory" if _is_memory_error(error) else "error"
        message = "".join(traceback.format_exception(error))
        del error  # its frames hold what the job allocated
        return {"ok": False, "kind": kind, "message": message, "job_s": job_s}, b""
    if not isinstance(result, JobResult) or not isinstance(result.data, bytes):
        why = f"{function} returned {type(result).__name__}, not a JobResult with bytes"
        return {"ok": False, "kind": "error", "message": why, "job_s": job_s}, b""
    try:
        json.dumps(result.value)
    except (TypeError, ValueError) as exc:
        why = f"{function} returned a value that is not JSON: {exc}"
        return {"ok": False, "kind": "error", "message": why, "job_s": job_s}, b""
    return {"ok": True, "value": result.value, "job_s": job_s}, result.data


def _die_with_caller(sock: socket.socket) -> None:
    """Kill this worker's process group once the caller's end of the channel closes (the caller died or closed):
    a job in flight, a hung g++ included, must not outlive it."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)  # the peer's hang-up only: job data never wakes this thread
    poller.poll()
    os.killpg(0, signal.SIGKILL)


def _worker_main() -> None:
    """Entry point of a worker: warm up, report ready, then serve jobs until the caller closes the socket."""
    config = json.loads(sys.argv[1])
    sys.path[:] = config["sys_path"]
    sock = socket.socket(fileno=config["fd"])
    os.set_inheritable(sock.fileno(), False)  # a g++ the job starts must not hold the channel open
    faulthandler.enable()  # a segfault leaves its Python traceback in the stderr the outcome quotes
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # crashes are expected here, core files are not wanted
    import torch
    import torch._dynamo
    import torch._inductor.config  # warm: the first compile does not pay for these imports

    if torch.cuda.is_available():
        # The driver's large address-space reservation then belongs to the baseline, not to a job's RLIMIT_AS.
        torch.cuda.init()
    threading.Thread(target=_die_with_caller, args=(sock,), name="die-with-caller", daemon=True).start()
    _send_frame(sock, {"ready_at": time.time()}, b"", None)
    while (frame := _recv_frame(sock, None, config["max_data"])) is not None:
        os.ftruncate(2, 0)  # the stderr a death quotes is this job's (the file is O_APPEND)
        header, data = _run_job(frame[0], frame[1], config["allowed_modules"])
        _send_frame(sock, header, data, None)


# ---------------------------------------------------------------- the caller's side


class _Worker:
    """One worker process, its channel and its stderr file."""

    def __init__(self, *, cpu_only: bool, allowed_modules: Sequence[str], max_data: int) -> None:
        self.cpu_only = cpu_only
        self.ready = False
        self.start_s: float | None = None
        self.sock, child = socket.socketpair()
        fd, path = tempfile.mkstemp(prefix="esper-sandbox-", suffix=".stderr")
        os.unlink(path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self.stderr_fd = fd
        env = dict(os.environ)
        if cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""  # set before the interpreter starts, so before torch is imported
        config = {"fd": child.fileno(), "sys_path": sys.path, "allowed_modules": list(allowed_modules)}
        config["max_data"] = max_data
        self.launched_at = time.time()
        self.launched = time.monotonic()
        try:
            # -I: no PYTHON* variables, no user site, no script directory on sys.path; the caller's path is sent.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _WORKER_MAIN, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                pass_fds=(child.fileno(),),
                start_new_session=True,  # its own process group: one killpg reaches every child it starts
                env=env,
            )
        finally:
            child.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.pid, self.cpu_only, self.ready, self.start_s)

    def await_ready(self, start_timeout_s: float, max_data: int) -> str | None:
        """None once the worker is warm, else why it is not (it is then killed)."""
        if self.ready:
            return None
        try:
            frame = _recv_frame(self.sock, self.launched + start_timeout_s, max_data)
        except (TimeoutError, OSError, _ProtocolError) as exc:
            frame, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "it exited"
        if frame is None or not isinstance(frame[0], dict) or not isinstance(frame[0].get("ready_at"), float):
            self.kill()
            return f"the worker did not start ({why})"
        self.ready = True
        self.start_s = frame[0]["ready_at"] - self.launched_at
        return None

    def kill(self) -> int:
        """SIGKILL the whole process group (orphaned g++ children too), reap the worker, return its status."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def stderr_tail(self) -> str:
        size = os.fstat(self.stderr_fd).st_size
        tail = os.pread(self.stderr_fd, _STDERR_TAIL, max(size - _STDERR_TAIL, 0))
        return tail.decode(errors="replace").strip()

    def close(self) -> None:
        self.sock.close()
        os.close(self.stderr_fd)


class SandboxExecutor:
    """A pool of `size` warm compile workers. `run` sends a job to an idle worker and returns its outcome; a
    worker's fault (exception, crash, limit, hang) is an outcome, never an exception in the caller. Thread-safe:
    concurrent `run` calls share the workers. Only functions under `allowed_modules` may be run."""

    def __init__(
        self,
        size: int = 2,
        *,
        allowed_modules: Sequence[str] = ("esper.compiler",),
        limits: JobLimits | None = None,
        cpu_only: bool = False,
        start_timeout_s: float = 120.0,
        max_data_bytes: int = 256 << 20,
    ) -> None:
        if size < 1:
            raise ValueError("a sandbox needs at least one worker")
        self._allowed = tuple(allowed_modules)
        self._limits = limits or JobLimits()
        self._start_timeout_s = start_timeout_s
        self._max_data = max_data_bytes
        self._cond = threading.Condition()
        self._closed = False
        self._workers = {self._spawn(cpu_only) for _ in range(size)}
        self._idle = deque(self._workers)

    def _spawn(self, cpu_only: bool) -> _Worker:
        return _Worker(cpu_only=cpu_only, allowed_modules=self._allowed, max_data=self._max_data)

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def workers(self) -> list[WorkerInfo]:
        with self._cond:
            return [w.info() for w in self._workers]

    def wait_ready(self) -> list[WorkerInfo]:
        """Wait until every idle worker is warm (or has failed to start and been replaced once)."""
        with self._cond:
            idle = len(self._idle)
        taken = [self._acquire() for _ in range(idle)]
        try:
            for i, worker in enumerate(taken):
                if worker.await_ready(self._start_timeout_s, self._max_data) is not None:
                    taken[i] = self._replace(worker, worker.cpu_only)
        finally:
            for worker in taken:
                self._release(worker)
        return self.workers()

    def run(
        self, function: str, args: Any = None, data: bytes = b"", *, limits: JobLimits | None = None
    ) -> SandboxOutcome:
        """Run `function(args, data)` (a module-level function returning a JobResult) in a worker."""
        if not _allowed(function, self._allowed):
            raise SandboxJobRejectedError(f"{function} is not under an allowed module {self._allowed}")
        if len(data) > self._max_data:
            raise SandboxJobRejectedError(f"{len(data)} bytes of job data are over the {self._max_data} limit")
        lim = limits or self._limits
        try:
            request = {"function": function, "args": args, "cpu_s": lim.cpu_s, "memory_bytes": lim.memory_bytes}
            json.dumps(request)
        except (TypeError, ValueError) as exc:
            raise SandboxJobRejectedError(f"job arguments are not JSON: {exc}") from None
        queued = time.monotonic()
        worker = self._acquire()
        try:
            why = worker.await_ready(self._start_timeout_s, self._max_data)
            wait_s = time.monotonic() - queued
            if why is not None:
                outcome = self._death(worker, FailureReason.SANDBOX_CRASH, why, PhaseTimings(wait_s, 0.0, None))
                worker = self._replace(worker, worker.cpu_only)
                return outcome
            outcome, dead = self._execute(worker, request, data, lim, wait_s)
            if dead:
                crashed = outcome.signal in _COMPILER_CRASH_SIGNALS
                worker = self._replace(worker, worker.cpu_only or crashed)
            return outcome
        finally:
            self._release(worker)

    def _execute(
        self, worker: _Worker, request: Any, data: bytes, lim: JobLimits, wait_s: float
    ) -> tuple[SandboxOutcome, bool]:
        """The outcome and whether the worker is dead (killed here if it must be)."""
        sent = time.monotonic()
        deadline = sent + lim.timeout_s
        try:
            _send_frame(worker.sock, request, data, deadline)
            frame = _recv_frame(worker.sock, deadline, self._max_data)
        except TimeoutError:
            worker.kill()
            timings = PhaseTimings(wait_s, time.monotonic() - sent, None)
            why = f"no answer within {lim.timeout_s} s: the worker's process group was killed"
            return self._death(worker, FailureReason.TIMEOUT, why, timings), True
        except _ProtocolError as exc:
            worker.kill()  # a frame we do not accept is a worker misbehaving
            frame, why = None, f"protocol violation: {exc}"
        except OSError as exc:
            frame, why = None, f"the channel broke: {exc}"  # a dying worker: its status says how
        else:
            why = "the worker died during the job"
        timings = PhaseTimings(wait_s, time.monotonic() - sent, None)
        if frame is None:
            return self._death(worker, None, why, timings), True
        header = frame[0]
        ok = isinstance(header, dict) and isinstance(header.get("ok"), bool)
        job_s = header.get("job_s") if ok else None
        timings = PhaseTimings(wait_s, timings.run_s, job_s if isinstance(job_s, float) else None)
        if ok and header["ok"]:
            value = header.get("value")
            return self._outcome(worker, timings, None, "", value=value, data=frame[1]), False
        if ok and header.get("kind") in ("error", "memory") and isinstance(header.get("message"), str):
            failure = FailureReason.RESOURCE_LIMIT if header["kind"] == "memory" else FailureReason.COMPILER_ERROR
            return self._outcome(worker, timings, failure, header["message"]), False
        worker.kill()
        return self._death(worker, None, f"protocol violation: unexpected answer {str(header)[:200]}", timings), True

    def _death(self, worker: _Worker, failure: FailureReason | None, why: str, timings: PhaseTimings) -> SandboxOutcome:
        """The outcome of a job whose worker is gone (it is killed and reaped here if it is not)."""
        try:
            status = worker.proc.wait(timeout=5.0)  # the channel closed: it is exiting
        except subprocess.TimeoutExpired:
            status = worker.kill()
        worker.kill()  # its orphans, whatever the status
        sig = -status if status < 0 else None
        if failure is None:
            if self._closed:
                failure = FailureReason.CANCELLED
            elif sig == signal.SIGXCPU:
                failure = FailureReason.RESOURCE_LIMIT
            else:
                failure = FailureReason.SANDBOX_CRASH
        how = f"killed by {_signal_name(sig)}" if sig else f"exit status {status}"
        message = f"{why} (worker {worker.pid} {how})\n{worker.stderr_tail()}".rstrip()
        return self._outcome(worker, timings, failure, message, exit_code=None if sig else status, sig=sig)

    @staticmethod
    def _outcome(
        worker: _Worker,
        timings: PhaseTimings,
        failure: FailureReason | None,
        message: str,
        *,
        value: Any = None,
        data: bytes = b"",
        exit_code: int | None = None,
        sig: int | None = None,
    ) -> SandboxOutcome:
        return SandboxOutcome(
            ok=failure is None,
            failure=failure,
            message=message,
            timings=timings,
            worker_pid=worker.pid,
            cpu_only=worker.cpu_only,
            value=value,
            data=data,
            exit_code=exit_code,
            signal=sig,
        )

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and not self._closed:
                self._cond.wait()
            if self._closed:
                raise SandboxClosedError("the sandbox is closed")
            return self._idle.popleft()

    def _replace(self, dead: _Worker, cpu_only: bool) -> _Worker:
        dead.close()
        with self._cond:
            self._workers.discard(dead)
            if self._closed:
                return dead
            worker = self._spawn(cpu_only)  # it warms while the caller reads the outcome
            self._workers.add(worker)
            return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if worker not in self._workers:
                return
            if self._closed:
                self._workers.discard(worker)
                worker.kill()
                worker.close()
                return
            self._idle.append(worker)
            self._cond.notify()

    def close(self) -> None:
        """Kill every worker; jobs in flight end CANCELLED, later calls raise SandboxClosedError."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, busy = list(self._idle), [w for w in self._workers if w not in self._idle]
            self._idle.clear()
            self._workers.difference_update(idle)
            self._cond.notify_all()
        for worker in busy:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        for worker in idle:
            worker.kill()
            worker.close()
