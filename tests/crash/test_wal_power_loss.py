"""C2, C9, C10, C11: simulated power loss at every syscall index (also after a kill -9 and a reopen), and the broken
WALs the simulator must catch."""

from __future__ import annotations

import contextlib
import random
import threading

import pytest
from wal_crash_harness import (
    CTX,
    LONG,
    PLAN,
    WAL_DIR,
    Ack,
    Result,
    WriteOneBehindWal,
    acked_at,
    check,
    publish,
    recover_image,
    run_matrix_point,
    workload,
)

from esper.compiler.wal.cli import stress_payload
from esper.compiler.wal.format import Manifest, segment_name
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig, recover, write_manifest
from tests.wal_simfs import CrashImage, SimCrash, SimFs

SAMPLES = 64 if LONG else 16
REOPEN_EVERY = 1 if LONG else 5
AFTER_KILL = [(2, 300), (1, 700), (3, 1500)]  # the batches of the writer after a kill -9: the last one rolls a segment
SAMPLES_AFTER_KILL = 16 if LONG else 4
POWER_LOSS = "C2/C9/C10/C11: simulated power loss (SimFs), every syscall index"


class AckBeforeSyncWal(Wal):
    """Broken on purpose: acknowledges after the write, without fdatasync."""

    def _sync_segment(self, fd: int) -> None:
        pass


class NoDirSyncWal(Wal):
    """Broken on purpose: never fsyncs the directory after creating a segment."""

    def _sync_dir(self) -> None:
        pass


class UnlinkBeforeManifestWal(Wal):
    """Broken on purpose: retirement unlinks the segments before the manifest says where the log now starts."""

    def _retire_files(self, segment_ids: list[int], start: Manifest) -> None:
        for sid in segment_ids:
            self.fs.unlink(f"{self.path}/{segment_name(sid)}")
        self.fs.fsync_dir(self.path)
        write_manifest(self.fs, self.path, start)


def _plans(seed: int) -> list[list[tuple[int, int]]]:
    """The fixed plan, then random ones: batch sizes 1-6, payloads from 48 bytes to several sectors and pages."""
    rng = random.Random(seed)
    extra = [[(rng.randint(1, 6), rng.choice([48, 200, 511, 513, 1500, 4200])) for _ in range(8)] for _ in range(8)]
    return [PLAN, *extra[: 8 if LONG else 2]]


def _power_loss_matrix(
    cls: type[Wal], name: str, seed: int, *, first_only: bool = False
) -> tuple[Result, SimFs, list[Ack]]:
    res = Result(name, power_loss=True)
    for plan in _plans(seed)[: 1 if first_only else None]:
        fs, acks = _one_plan(cls, res, seed, plan)
    return res, fs, acks


def _one_plan(cls: type[Wal], res: Result, seed: int, plan: list[tuple[int, int]]) -> tuple[SimFs, list[Ack]]:
    acks: list[Ack] = []
    known: set[bytes] = set()
    rng = random.Random(seed)

    def before_op(fs: SimFs, kind: str) -> None:
        run_matrix_point(fs, acks, known, res, rng, SAMPLES, REOPEN_EVERY)

    fs = SimFs(on_op=before_op)
    workload(fs, acks, known, cls=cls, plan=plan)
    fs.on_op = None
    run_matrix_point(fs, acks, known, res, rng, SAMPLES, REOPEN_EVERY)  # after the last call too
    return fs, acks


def test_c2_power_loss_at_every_syscall_loses_no_acked_record() -> None:
    res, _fs, _acks = _power_loss_matrix(Wal, "C2 power loss, every syscall index", seed=2)
    publish(POWER_LOSS, [res])
    assert res.runs > 2000 and res.acked > 0
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0
    assert res.unacked_recovered > 0  # the simulator does persist unsynced writes sometimes
    assert res.classes["torn_tail"] > 0  # and tears them


def _kill_then_power_loss(res: Result, seed: int, plan: list[tuple[int, int]]) -> None:
    """kill -9 before each syscall of the workload; a new writer opens the page cache it left (unsynced writes still
    pending), appends and acknowledges; then a power cut at every syscall of that writer must keep every ack."""
    acks: list[Ack] = []
    known: set[bytes] = set()
    rng = random.Random(seed)

    def kill_here(fs: SimFs, kind: str) -> None:
        k = len(fs.trace)
        after = [Ack(lsn, p, 0, -1) for lsn, p in acked_at(fs, acks).items()]  # acked before the kill: kept too

        def power_cut_here(fs2: SimFs, kind2: str) -> None:
            run_matrix_point(fs2, after, known, res, rng, SAMPLES_AFTER_KILL, 0)

        fs2 = fs.process_crash(on_op=power_cut_here)
        wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=8192, checkpoint_every=5), fs=fs2)
        for i, (n, size) in enumerate(AFTER_KILL):
            ps = [stress_payload(8, k * 100 + i * 10 + j, size) for j in range(n)]
            known.update(ps)
            lsns = wal.append_batch([Entry(RecordType.DATA, bytes(16), p) for p in ps])
            after.extend(Ack(lsn, p, len(fs2.trace), wal._seg_id) for lsn, p in zip(lsns, ps, strict=True))
        wal.close()
        fs2.on_op = None
        run_matrix_point(fs2, after, known, res, rng, SAMPLES_AFTER_KILL, 0)

    workload(SimFs(on_op=kill_here), acks, known, plan=plan)


def test_c2_kill9_then_reopen_and_append_then_power_loss_loses_no_acked_record() -> None:
    res = Result("C2 kill -9 at every syscall, reopen + append, power loss", power_loss=True)
    for plan in _plans(4)[: None if LONG else 1]:
        _kill_then_power_loss(res, 4, plan)
    publish(POWER_LOSS, [res])
    assert res.runs > 1000 and res.acked > 0
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0


def test_c9_directory_fsync_precedes_first_ack_in_every_new_segment() -> None:
    acks: list[Ack] = []
    fs = SimFs()
    workload(fs, acks, set())
    renames = [i for i, (k, w) in enumerate(fs.trace) if k == "rename" and w.endswith(".seg")]
    assert len(renames) >= 3  # the workload rolls segments
    res = Result("C9 dir fsync before first ack", power_loss=True)
    for r in renames:
        seg = int(fs.trace[r][1].rsplit("wal-", 1)[1][:16], 16)
        dsync = next(i for i in range(r, len(fs.trace)) if fs.trace[i][0] == "fsync_dir")
        first = [a for a in acks if a.segment == seg]
        res.runs += 1
        res.acked += len(first)
        if first and first[0].trace_len <= dsync:
            res.lost += 1
    publish(POWER_LOSS, [res])
    assert res.lost == 0


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (AckBeforeSyncWal, "ack before fdatasync"),
        (NoDirSyncWal, "no dir fsync"),
        (UnlinkBeforeManifestWal, "retire unlinks before the manifest"),
        (WriteOneBehindWal, "acks a batch before writing it"),
    ],
)
def test_power_loss_simulator_catches_a_broken_wal(cls: type[Wal], name: str) -> None:
    res, _, _ = _power_loss_matrix(cls, f"C2 broken WAL: {name} (must lose)", seed=3, first_only=True)
    publish(POWER_LOSS, [res])
    assert res.lost > 0, "the simulator failed to detect a WAL that breaks a durability rule"


def test_c2_restart_loop_power_loss_at_every_syscall_keeps_acks_and_bounds_segments() -> None:
    """Open then close or kill -9, again and again (a crash-looping service), appending in some rounds only; power
    loss before every syscall. Each open replaces a head-only tail instead of adding a segment."""
    res = Result("C2 restart loop: open, close or kill -9, x12; power loss at every syscall", power_loss=True)
    rng = random.Random(12)
    acks: list[Ack] = []
    known: set[bytes] = set()

    def before_op(fs: SimFs, kind: str) -> None:
        run_matrix_point(fs, acks, known, res, rng, SAMPLES_AFTER_KILL, REOPEN_EVERY)

    fs = SimFs(on_op=before_op)
    cfg = WalConfig(segment_size=8192, checkpoint_every=5)
    for i in range(12):
        wal = Wal.open(WAL_DIR, CTX, config=cfg, fs=fs)
        if i % 4 == 1:
            p = stress_payload(12, i, 300)
            known.add(p)
            acks.append(Ack(wal.data(bytes(16), p), p, len(fs.trace), wal._seg_id))
        if i % 3:
            wal.close()
        else:  # kill -9: the next process sees the page cache; acks so far stand for every later crash point
            acks[:] = [Ack(a.lsn, a.payload, 0, a.segment) for a in acks]
            fs = fs.process_crash(on_op=before_op)
    fs.on_op = None
    run_matrix_point(fs, acks, known, res, rng, SAMPLES_AFTER_KILL, REOPEN_EVERY)
    publish(POWER_LOSS, [res])
    segments = [n for n in fs.listdir(WAL_DIR) if n.endswith(".seg")]
    assert len(segments) <= 4, segments  # three opens appended (a segment each), plus the head-only tail
    assert res.runs > 500 and res.acked > 0
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0


def test_c10_crash_during_recovery_then_recover_twice_gives_the_same_state() -> None:
    """Images with torn tails and tmp files; crash recovery at each of its syscalls; recover twice; compare."""
    res = Result("C10 crash during recovery", power_loss=True)
    rng = random.Random(10)
    acks: list[Ack] = []
    known: set[bytes] = set()
    images: list[tuple[CrashImage, dict[int, bytes]]] = []

    def grab(fs: SimFs, kind: str) -> None:
        if kind in ("fdatasync", "fsync", "rename", "fsync_dir") and rng.random() < (1.0 if LONG else 0.35):
            acked = acked_at(fs, acks)
            images.extend((img, acked) for img in fs.crash_images(rng, samples=2))

    workload(SimFs(on_op=grab), acks, known, reopen=False)
    for img, acked in images:
        clean, _ = recover_image(img)
        if clean.corruption is not None:
            res.false_corruption += 1
            continue
        ref = [(r.lsn, r.payload) for r in clean.records]
        probe = SimFs(img)
        recover(WAL_DIR, probe)
        n_ops = len(probe.trace)
        for k in range(n_ops + 1):

            def crash_at(fs: SimFs, kind: str, k: int = k) -> None:
                if len(fs.trace) == k:
                    raise SimCrash(kind)

            victim = SimFs(img, on_op=crash_at)
            with contextlib.suppress(SimCrash):
                recover(WAL_DIR, victim)
            victim.on_op = None
            for mid in victim.crash_images(rng, samples=2):
                first, fs2 = recover_image(mid)
                second = recover(WAL_DIR, fs2, keep_payloads=True)
                check(second, acked, known, res)
                same = [(r.lsn, r.payload) for r in first.records] == [(r.lsn, r.payload) for r in second.records]
                if not same or [(r.lsn, r.payload) for r in second.records] != ref or second.truncated:
                    res.corrupted_accepted += 1  # a second recovery changed something: not idempotent
    publish(POWER_LOSS, [res])
    assert res.runs > 50
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0


def test_c11_concurrent_appenders_batches_all_or_nothing_under_power_loss() -> None:
    res = Result("C11 8 threads, group commit", power_loss=True)
    rng = random.Random(11)
    known: set[bytes] = set()
    acked: dict[int, bytes] = {}
    requests: list[list[bytes]] = []
    lock = threading.Lock()
    points = {"n": 0}
    syncs = {"n": 0}

    def before_op(fs: SimFs, kind: str) -> None:
        if kind == "fdatasync":
            syncs["n"] += 1
        points["n"] += 1
        if points["n"] % (1 if LONG else 3):
            return
        with lock:
            snapshot = dict(acked)
        for img in fs.crash_images(rng, samples=2):
            report, _ = recover_image(img)
            check(report, snapshot, known, res)
            got = {r.payload for r in report.records}
            for req in requests:  # a request is one append_batch call: all of it or none of it
                if 0 < sum(p in got for p in req) < len(req):
                    res.corrupted_accepted += 1

    fs = SimFs(on_op=before_op)
    wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=16384, checkpoint_every=16), fs=fs)

    def worker(t: int) -> None:
        r = random.Random(t)
        for i in range(6 if not LONG else 20):
            payloads = [stress_payload(t, i * 100 + j, r.choice([48, 300, 900])) for j in range(r.randint(1, 5))]
            with lock:
                known.update(payloads)
                requests.append(payloads)
            lsns = wal.append_batch([Entry(RecordType.DATA, bytes(16), p) for p in payloads])
            with lock:
                acked.update(zip(lsns, payloads, strict=True))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal.close()
    n_requests = len(requests)
    publish(POWER_LOSS, [res])
    assert res.runs > 100 and len(acked) > 0
    assert syncs["n"] < n_requests, "group commit should share fdatasyncs between appenders"
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0
