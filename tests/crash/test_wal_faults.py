"""C7 / C8: EIO from a sync, ENOSPC or a short write, at every call index: no ack, no retry, recovery keeps acks.

After each fault the service also restarts twice on the same page cache, appending and acknowledging each time, then
loses power: after a failed sync that cache holds writes the disk never got (fsyncgate), which recovery must not
build on, nor leave in the cache for a later open.
"""

from __future__ import annotations

import random

from wal_crash_harness import CTX, LONG, PLAN, WAL_DIR, Ack, Result, acked_at, check, publish, recover_image

from esper.compiler.exceptions import WalFatalError, WalIOError
from esper.compiler.wal.cli import stress_payload
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig
from tests.wal_simfs import FaultFs, FaultKind, SimFs

MUTATING = {"pwrite", "fallocate", "fdatasync", "fsync", "fsync_dir", "rename", "ftruncate", "create", "unlink"}


def _dead_for_good(wal: Wal, fs: FaultFs) -> bool:
    """After a WalIOError the next append must refuse without touching the disk (no retry)."""
    before = len(fs.trace)
    try:
        wal.append(RecordType.DATA, bytes(16), stress_payload(7, 0, 64))
    except WalFatalError:
        pass
    else:
        raise AssertionError("append succeeded after a fatal I/O error") from None
    assert not [k for k, _ in fs.trace[before:] if k in MUTATING], "the WAL retried after an error"
    return True


def _faulty_workload(fs: FaultFs, acks: list[Ack], known: set[bytes]) -> bool:
    """Run the plan twice (with a reopen), settling and retiring each round, until the first error; True if the WAL
    raised a typed I/O error."""
    seq = 0
    try:
        for round_ in range(2):
            wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=8192, checkpoint_every=5), fs=fs)
            job = bytes([round_ + 1]) * 16
            for n, size in PLAN:
                entries = []
                for _ in range(n):
                    p = stress_payload(round_, seq, size)
                    seq += 1
                    known.add(p)
                    entries.append(Entry(RecordType.DATA, job, p))
                try:
                    lsns = wal.append_batch(entries)
                except WalIOError:
                    return _dead_for_good(wal, fs)
                acks.extend(
                    Ack(lsn, e.payload, len(fs.trace), wal._seg_id) for lsn, e in zip(lsns, entries, strict=True)
                )
            p = stress_payload(round_, seq, 64)
            seq += 1
            known.add(p)
            try:
                acks.append(Ack(wal.commit(job, p), p, len(fs.trace), wal._seg_id))
                wal.retire_settled()  # faults in the manifest's write, sync, rename, dir sync and the unlinks too
            except WalIOError:
                return _dead_for_good(wal, fs)
            wal.close()
    except WalIOError:  # the fault hit Wal.open (creating a segment)
        return True
    return False


def _scenario(kind: FaultKind, name: str) -> Result:
    res = Result(name, power_loss=True)
    rng = random.Random(7)
    k = 1
    while True:
        fs = FaultFs(kind, k)
        acks: list[Ack] = []
        known: set[bytes] = set()
        raised = _faulty_workload(fs, acks, known)
        if fs.fired_at_trace is None:
            assert not raised
            break
        assert raised, f"{kind} at call {k} was not reported as a WalIOError"
        # No record acknowledged after the fault fired.
        assert all(a.trace_len < fs.fired_at_trace for a in acks)
        acked = acked_at(fs, acks)  # less the retired records
        images = [fs.volatile_image(), fs.durable_image(), *fs.crash_images(rng, samples=4 if not LONG else 16)]
        for img in images:
            report, _ = recover_image(img)
            check(report, acked, known, res)
        _restart_then_power_loss(fs, acked, known, res, rng, k)
        k += 1
    return res


def _restart_then_power_loss(
    fs: FaultFs, acked: dict[int, bytes], known: set[bytes], res: Result, rng: random.Random, k: int
) -> None:
    """The failed process is gone, its page cache is not: a new one opens, appends a batch and is killed, then another
    (the failed one's segment is no longer the last); then power is cut."""
    after: SimFs = fs
    for restart in range(2):
        after = after.process_crash()
        wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=8192, checkpoint_every=5), fs=after)
        ps = [stress_payload(8, k * 10 + restart * 2 + j, 300) for j in range(2)]
        known.update(ps)
        lsns = wal.append_batch([Entry(RecordType.DATA, bytes(16), p) for p in ps])
        acked = {**acked, **dict(zip(lsns, ps, strict=True))}
    for img in [after.durable_image(), *after.crash_images(rng, samples=4 if not LONG else 16)]:
        report, _ = recover_image(img)
        check(report, acked, known, res)


def test_c7_c8_every_call_index_fails_cleanly() -> None:
    results = [
        _scenario("eio_sync", "C7 EIO from fdatasync/fsync/dir fsync at call k"),
        _scenario("enospc_write", "C8 ENOSPC from pwrite/fallocate at call k"),
        _scenario("short_write", "C8 short pwrite at call k"),
    ]
    publish("C7/C8: injected I/O errors at every call index (then power loss)", results)
    for r in results:
        assert r.runs > 50
        assert r.lost == 0 and r.corrupted_accepted == 0 and r.false_corruption == 0, r
