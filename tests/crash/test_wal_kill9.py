"""C1: `kill -9` of `esper wal stress` at random moments; every printed `acked <lsn>` must survive recovery.

Most runs fork this (already imported) test process into the same typer command `esper wal stress` runs, so a run
costs milliseconds instead of an interpreter start; some runs exec the real `esper` executable. Two at a time.
A negative control runs the same campaign on a WAL that acknowledges each batch before writing it: the checker must
see it lose records. (A WAL that only skips fdatasync cannot be caught here: the page cache survives a kill -9; the
power-loss matrix catches that one.)
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wal_crash_harness import LONG, Result, WriteOneBehindWal, publish

from esper.compiler.wal import cli as wal_cli
from esper.compiler.wal import log as wal_module
from esper.compiler.wal.cli import stress_payload_ok
from esper.compiler.wal.log import RecordType, Wal, recover

FORKED_RUNS = 10_000 if LONG else 1_000
EXEC_RUNS = 300 if LONG else 12
RESTART_RUNS = 2_000 if LONG else 200
CONTROL_RUNS = 40  # the broken writer loses a record in about every other run killed while appending
C1 = "C1: kill -9 (process crash: the page cache survives)"
SEGMENT = 1 << 20  # the restart loop's segments (preallocated)
ESPER = str(Path(sys.executable).with_name("esper"))


def _args(path: str, rng: random.Random) -> list[str]:
    return [
        "stress",
        path,
        "--records",
        "1000000",
        "--batch",
        str(rng.choice([1, 1, 4, 16])),
        "--threads",
        str(rng.choice([1, 1, 4])),
        "--payload-size",
        str(rng.choice([64, 300, 1500, 5000])),
        "--segment-size",
        str(rng.choice([65536, 262144])),
    ]


def _fork_stress(args: list[str], wal_cls: type[Wal] = Wal) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become `esper wal stress ...`, stdout = the pipe
        try:
            os.close(r)
            os.dup2(w, 1)
            wal_module.Wal = wal_cls  # type: ignore[misc]  # in this child only: the WAL class `stress` opens
            wal_cli.app(args=args, standalone_mode=False)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _exec_stress(args: list[str]) -> tuple[int, int]:
    r, w = os.pipe()
    p = subprocess.Popen([ESPER, "wal", *args], stdout=w, stderr=subprocess.DEVNULL, close_fds=True)
    os.close(w)
    return p.pid, r


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _campaign(
    res: Result,
    runs: int,
    spawn: str,
    delay_s: tuple[float, float],
    tmp: Path,
    seed: int,
    wal_cls: type[Wal] = Wal,
) -> None:
    rng = random.Random(seed)
    acked: dict[str, set[int]] = {}
    done = 0
    while done < runs:
        slots = []
        for slot in range(min(2, runs - done)):
            path = str(tmp / f"{spawn}-{slot}")
            if done % 40 < 2:  # a fresh log now and then, so recovery stays small
                shutil.rmtree(path, ignore_errors=True)
                acked[path] = set()
            acked.setdefault(path, set())
            pid, fd = _fork_stress(_args(path, rng), wal_cls) if spawn == "fork" else _exec_stress(_args(path, rng))
            slots.append((time.monotonic() + rng.uniform(*delay_s), pid, fd, path))
        heads: dict[int, bytes] = {}
        for deadline, pid, fd, _path in sorted(slots):
            if rng.random() < 0.8:  # mostly kill while appending: wait for the first ack, then a random delay
                if select.select([fd], [], [], 5.0)[0]:
                    heads[fd] = os.read(fd, 1 << 16)
                deadline = time.monotonic() + rng.uniform(0.0, delay_s[1])
            # else: at a random time from start, which also hits start-up and recovery
            time.sleep(max(0.0, deadline - time.monotonic()))
            os.kill(pid, signal.SIGKILL)
        for _deadline, pid, fd, path in slots:
            out = heads.get(fd, b"") + _read_all(fd)
            os.waitpid(pid, 0)
            lines = out.split(b"\n")[:-1]  # a line without its newline was not complete
            acked[path].update(int(x.split()[1]) for x in lines if x.startswith(b"acked "))
            report = recover(path, keep_payloads=True)
            res.runs += 1
            res.times_ms.append(report.duration_s * 1e3)
            res.classes[report.findings[-1].kind if report.findings else "empty"] += 1
            if report.corruption is not None:
                res.false_corruption += 1
            got = {r.lsn: r for r in report.records if r.type == RecordType.DATA}
            res.acked += len(acked[path])
            res.recovered += len(got)
            res.lost += len(acked[path] - got.keys())
            res.unacked_recovered += len(got.keys() - acked[path])
            res.corrupted_accepted += sum(1 for r in got.values() if not stress_payload_ok(r.payload or b""))
        done += len(slots)


def _restart_loop(res: Result, runs: int, tmp: Path, seed: int) -> tuple[int, int]:
    """`esper wal stress --records 0` (open, close) killed at random moments, on one WAL: a crash-looping service.
    Returns the segment files and the bytes allocated afterwards."""
    rng = random.Random(seed)
    path = str(tmp / "restart-loop")
    args = ["stress", path, "--records", "0", "--segment-size", str(SEGMENT)]
    for _ in range(runs):
        pid, fd = _fork_stress(args)
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)  # or it already exited: an open/close cycle
        _read_all(fd)
        os.waitpid(pid, 0)
        report = recover(path)
        res.runs += 1
        res.times_ms.append(report.duration_s * 1e3)
        res.classes[report.findings[-1].kind if report.findings else "empty"] += 1
        res.false_corruption += report.corruption is not None
    files = [p for p in Path(path).iterdir() if p.suffix == ".seg"]
    return len(files), sum(p.stat().st_blocks * 512 for p in Path(path).iterdir())


# The long campaign is ~10,300 kill/recover rounds at ~0.1 s each on a 2-core VM: past the suite's 600 s default.
@pytest.mark.timeout(2400 if LONG else 600)
def test_c1_kill9_stress_never_loses_an_acked_record(tmp_path: Path) -> None:
    forked = Result(f"C1 kill -9, forked `esper wal stress` x{FORKED_RUNS}", power_loss=False)
    _campaign(forked, FORKED_RUNS, "fork", (0.0, 0.03), tmp_path, seed=1)
    execd = Result(f"C1 kill -9, exec'd `esper wal stress` x{EXEC_RUNS}", power_loss=False)
    _campaign(execd, EXEC_RUNS, "exec", (0.15, 0.6), tmp_path, seed=2)
    loop = Result("", power_loss=False)
    segments, allocated = _restart_loop(loop, RESTART_RUNS, tmp_path, seed=3)
    loop.scenario = f"C1 restart loop: kill -9 of open/close x{RESTART_RUNS} -> {segments} seg, {allocated >> 10} KiB"
    publish(C1, [forked, execd, loop])
    for r in (forked, execd):
        assert r.runs >= 10 and r.acked > 0
        assert r.lost == 0 and r.corrupted_accepted == 0 and r.false_corruption == 0
    assert loop.false_corruption == 0
    assert segments == 1 and allocated <= SEGMENT + 8192, "every open replaces the head-only tail"


def test_c1_kill9_catches_a_wal_that_acks_a_batch_before_writing_it(tmp_path: Path) -> None:
    res = Result(f"C1 broken WAL: acks a batch before writing it, forked x{CONTROL_RUNS} (must lose)", power_loss=False)
    _campaign(res, CONTROL_RUNS, "fork", (0.0, 0.03), tmp_path, seed=5, wal_cls=WriteOneBehindWal)
    publish(C1, [res])
    assert res.lost > 0, "the kill -9 matrix failed to detect a WAL that acknowledges records it has not written"
