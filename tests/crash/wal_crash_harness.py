"""Shared pieces of the WAL crash matrix: result tables, the checker, the simulated workload."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from esper.compiler.fsio import FileSystem
from esper.compiler.wal.cli import stress_payload, stress_payload_ok
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig, read_manifest, recover
from esper.compiler.wal.scan import RecoveryReport
from tests.wal_simfs import CrashImage, SimFs

LONG = os.environ.get("ESPER_CRASH_LONG") == "1"
CTX = {"compiler": "tezzeret-test", "torch": "2.8.0", "flags": "mode=max-autotune", "device": "cpu"}
WAL_DIR = "/sim/wal"
USER_TYPES = (RecordType.BEGIN, RecordType.DATA, RecordType.COMMIT, RecordType.ABORT)
# Result rows by table title, in the order tests publish them; conftest prints them in pytest's terminal summary, so
# no test has to run last to publish a table.
TABLES: dict[str, list[list[str]]] = {}


@dataclass
class Result:
    """One scenario's row of the crash-matrix table."""

    scenario: str
    power_loss: bool
    runs: int = 0
    acked: int = 0
    recovered: int = 0
    lost: int = 0  # acked but not recovered (and not behind a reported corruption)
    unacked_recovered: int = 0
    corrupted_accepted: int = 0
    false_corruption: int = 0  # corruption reported where only crashes happened, or not at the damage (a failure too)
    classes: Counter[str] = field(default_factory=Counter)
    times_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        s = sorted(self.times_ms)
        return s[min(len(s) - 1, int(q * len(s)))]

    def row(self) -> list[str]:
        cls = " ".join(f"{k}:{v}" for k, v in sorted(self.classes.items()))
        return [
            self.scenario,
            str(self.runs),
            str(self.acked),
            str(self.recovered),
            str(self.lost),
            str(self.unacked_recovered),
            str(self.corrupted_accepted),
            str(self.false_corruption),
            cls,
            f"{self.pct(0.5):.2f}/{self.pct(0.99):.2f}" if self.times_ms else "n/a (no recovery run)",
            "yes" if self.power_loss else "no",
        ]


HEAD = [
    "scenario",
    "runs",
    "acked",
    "recovered",
    "acked-lost",
    "unacked-recov",
    "corrupt-accepted",
    "false-corrupt",
    "classification (end of log)",
    "recovery ms p50/p99",
    "power-loss",
]


def publish(title: str, results: list[Result]) -> None:
    """Add the results' rows to the table `title` (created on first use)."""
    TABLES.setdefault(title, []).extend(r.row() for r in results)


def check(
    report: RecoveryReport,
    acked: dict[int, bytes],
    known: set[bytes],
    res: Result,
    *,
    damage_at: tuple[str, int] | None = None,
) -> None:
    """Score one recovery: acked ⊆ recovered, every recovered record is one that was written, unaltered.

    `damage_at` is where the test damaged the log (segment file or MANIFEST, offset of the record slot): a corruption
    reported there excuses the acks behind it. Reported anywhere else, or where only crashes happened, it is a false
    corruption (a failure too) and excuses nothing.
    """
    res.runs += 1
    res.times_ms.append(report.duration_s * 1e3)
    kinds = [f.kind for f in report.findings]
    res.classes[report.corruption.kind if report.corruption else (kinds[-1] if kinds else "empty")] += 1
    recovered = {r.lsn: r for r in report.records if r.type in USER_TYPES}
    res.acked += len(acked)
    res.recovered += len(recovered)
    for lsn, r in recovered.items():
        p = r.payload
        if p is None or p not in known or not stress_payload_ok(p) or (lsn in acked and acked[lsn] != p):
            res.corrupted_accepted += 1
        elif lsn not in acked:
            res.unacked_recovered += 1
    c = report.corruption
    stop: int | None = None
    if c is not None:
        if (c.segment, c.offset) == damage_at:
            stop = report.last_lsn or 0
        else:
            res.false_corruption += 1
    for lsn in acked:
        if lsn not in recovered and not (stop is not None and lsn > stop):
            res.lost += 1


class WriteOneBehindWal(Wal):
    """Broken on purpose: acknowledges each batch before writing it; its bytes are written with the next batch, after
    that batch's fdatasync (or before a roll). Every ack is one batch (at batch size 1, one LSN) ahead of the log, even
    in the page cache, so both a kill -9 and a power cut must catch it. The unwritten batch waits through the next
    fdatasync, the slow step of an append, so a kill at a random moment usually finds it missing, on a fast disk too.
    """

    _behind: tuple[int, bytes] | None = None  # (offset, bytes) of the acked batch not written yet

    def _durable_write(self, data: bytes) -> None:
        behind, self._behind = self._behind, (self._seg_off, data)
        self._seg_off += len(data)
        assert self._seg_fd is not None
        self._sync_segment(self._seg_fd)
        if behind is not None:
            self.fs.pwrite(self._seg_fd, behind[1], behind[0])

    def _roll(self, nbytes: int, count: int, *, cp: bool) -> None:
        if self._behind is not None and self._seg_fd is not None:  # into the segment it belongs to
            (off, data), self._behind = self._behind, None
            self.fs.pwrite(self._seg_fd, data, off)
            self._sync_segment(self._seg_fd)
        super()._roll(nbytes, count, cp=cp)


def recover_image(img: CrashImage, *, repair: bool = True) -> tuple[RecoveryReport, SimFs]:
    fs = SimFs(img)
    return recover(WAL_DIR, fs, repair=repair, keep_payloads=True), fs


@dataclass
class Ack:
    lsn: int
    payload: bytes
    trace_len: int  # fs.trace length when the append returned: acked for every crash point at or after it
    segment: int


# Batches of (records, payload size) crossing sectors, pages and segment boundaries (8 KiB segments).
PLAN: list[tuple[int, int]] = [(1, 100), (3, 60), (1, 700), (2, 1500), (1, 48), (4, 200), (1, 3000), (2, 100)]


def workload(
    fs: FileSystem,
    acks: list[Ack],
    known: set[bytes],
    *,
    cls: type[Wal] = Wal,
    plan: list[tuple[int, int]] = PLAN,
    reopen: bool = True,
) -> None:
    """Open, append batches (rolling segments), checkpoint, settle and retire, reopen, append again."""
    cfg = WalConfig(segment_size=8192, checkpoint_every=5)
    seq = 0
    trace = fs.trace if isinstance(fs, SimFs) else []
    for round_ in range(2 if reopen else 1):
        wal = cls.open(WAL_DIR, CTX, config=cfg, fs=fs)
        job = bytes([round_ + 1]) * 16
        for n, size in plan:
            entries = []
            for _ in range(n):
                p = stress_payload(round_, seq, size)
                seq += 1
                known.add(p)
                entries.append(Entry(RecordType.DATA, job, p))
            lsns = wal.append_batch(entries)
            acks.extend(Ack(lsn, e.payload, len(trace), wal._seg_id) for lsn, e in zip(lsns, entries, strict=True))
        p = stress_payload(round_, seq, 64)
        seq += 1
        known.add(p)
        acks.append(Ack(wal.commit(job, p), p, len(trace), wal._seg_id))
        wal.checkpoint()
        wal.retire_settled()
        wal.close()


def acked_at(fs: SimFs, acks: list[Ack]) -> dict[int, bytes]:
    """Records acknowledged by now, less those in segments retired by now (settled jobs: deleted by design).

    A segment is retired once the manifest renamed into place (what the process sees) starts the log after it.
    """
    manifest = read_manifest(fs, WAL_DIR)
    assert not isinstance(manifest, str), manifest
    first = manifest.segment_id if manifest is not None else 0
    return {a.lsn: a.payload for a in acks if a.trace_len <= len(fs.trace) and not 0 <= a.segment < first}


def run_matrix_point(
    fs: SimFs, acks: list[Ack], known: set[bytes], res: Result, rng: random.Random, samples: int, reopen_every: int
) -> None:
    """At the current syscall index: every crash image must recover every acked record and nothing corrupt."""
    acked = acked_at(fs, acks)
    for k, img in enumerate(fs.crash_images(rng, samples=samples)):
        report, sim = recover_image(img)
        check(report, acked, known, res)
        if reopen_every and k % reopen_every == 0 and report.corruption is None:
            # The recovered directory must be writable and recover again with everything kept.
            w = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=8192), fs=sim)
            p = stress_payload(9, len(known) + k, 80)
            known.add(p)
            extra = {w.data(bytes(16), p): p}
            w.close()
            check(recover(WAL_DIR, sim, keep_payloads=True), {**acked, **extra}, known, res)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0
