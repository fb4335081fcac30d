"""The WAL's behaviour on a simulated disk: recovery report, transactions, retirement, policy, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from esper.compiler.exceptions import WalCorruptionError, WalFatalError, WalIOError
from esper.compiler.wal.cli import app, stress_payload, stress_payload_ok
from esper.compiler.wal.format import (
    CHAINED,
    HEADER_SIZE,
    Header,
    Manifest,
    SegmentBody,
    chain_next,
    decode_header,
    encode_header,
    genesis_chain,
    header_slot_unwritten,
    leaf_hash,
    merkle_root,
    padded,
)
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig, read_manifest, recover, unsettled_in
from tests.wal_simfs import FaultFs, SimCrash, SimFs

CTX = {"compiler": "0.1", "torch": "2.8.0", "flags": "", "device": "cpu"}
D = "/w/log"
CFG = WalConfig(segment_size=8192, checkpoint_every=4)


def written_log(n: int, size: int = 100) -> SimFs:
    """A closed log on a new simulated disk: `n` DATA records of `size`-byte stress payloads."""
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    for i in range(n):
        wal.data(bytes(16), stress_payload(0, i, size))
    wal.close()
    return fs


def test_appends_survive_reopen_with_checkpoints_and_a_new_epoch() -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    lsns = [wal.data(b"j" * 16, b"x" * n) for n in (1, 300, 5000, 0)]
    root = wal.merkle_root()
    wal.close()
    again = Wal.open(D, CTX, config=CFG, fs=fs)
    assert again.epoch == wal.epoch + 1
    got = [r.lsn for r in again.recovery.records if r.type == RecordType.DATA]
    assert got == lsns
    assert again.recovery.merkle_root() is not None and again.recovery.checkpoints
    assert len(again.recovery.segments) >= 2  # the 5000-byte record rolled a segment
    assert root != again.merkle_root()  # the new segment's records are leaves too


def test_unsettled_jobs_and_retirement_of_settled_segments() -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    a, b = b"a" * 16, b"b" * 16
    wal.begin(a)
    wal.data(a, b"x" * 3000)
    wal.begin(b)
    wal.data(b, b"y" * 6000)  # rolls
    wal.commit(a)
    assert set(wal.unsettled_jobs()) == {b}
    wal.close()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    assert set(wal.unsettled_jobs()) == {b}  # found again after a restart
    assert wal.retire_settled() == []  # the first segment holds b's BEGIN
    wal.abort(b)
    retired = wal.retire_settled()
    assert retired and wal.unsettled_jobs() == {}
    wal.close()
    report = recover(D, fs)
    assert report.corruption is None and unsettled_in(report.records) == {}


def test_corruption_in_the_middle_is_reported_and_refused_not_skipped() -> None:
    fs = written_log(6)
    path = f"{D}/wal-0000000000000000.seg"
    ino = fs.inodes[fs.names[path]]
    ino.data[1024 + 40] ^= 1  # a header byte of the third record
    report = recover(D, fs, repair=False)
    assert report.corruption is not None and report.corruption.offset == 1024
    assert report.last_lsn is not None and report.last_lsn < 8
    with pytest.raises(WalCorruptionError):
        Wal.open(D, CTX, config=CFG, fs=fs)


def test_torn_tail_is_cut_and_synced_and_recovery_is_idempotent() -> None:
    fs = written_log(3)
    path = f"{D}/wal-0000000000000000.seg"
    ino = fs.inodes[fs.names[path]]
    end = recover(D, fs, repair=False).findings[-1].offset
    ino.data[end : end + 200] = b"\x01" * 200  # a torn header prefix: its sentinel and CRC are still zero
    first = recover(D, fs)
    kinds = [k for k, _ in fs.trace]
    assert first.torn_tail is not None and first.truncated and kinds[-3:] == ["ftruncate", "fsync", "fsync_dir"]
    second = recover(D, fs)
    assert second.torn_tail is None and not second.truncated
    assert [r.lsn for r in first.records] == [r.lsn for r in second.records]


def test_damage_to_a_synced_batch_is_corruption_when_a_later_batch_left_bytes_after_it() -> None:
    """The audit's case: the sector at 6144 holds the end of LSN 9's payload and LSN 10's header; LSN 10's payload
    survives, so LSN 9's batch was synced: not a torn tail to cut."""
    fs = SimFs()
    wal = Wal.open(D, CTX, config=WalConfig(segment_size=16384, checkpoint_every=10**6), fs=fs)
    lsns = [wal.data(bytes(16), stress_payload(0, i, 300)) for i in range(8)]
    wal.close()
    ino = fs.inodes[fs.names[f"{D}/wal-0000000000000000.seg"]]
    offsets = {r.lsn: r.offset for r in recover(D, fs, repair=False).records}
    assert lsns[-2:] == [9, 10] and offsets[9] < 6144 < offsets[10] < 6144 + 512
    ino.data[6144 : 6144 + 512] = bytes(512)
    report = recover(D, fs)
    assert report.corruption is not None and report.corruption.offset == offsets[9]
    assert not report.truncated and report.last_lsn == 8


def test_recovery_makes_a_killed_writers_unsynced_batch_durable_before_building_on_it() -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    wal.data(b"j" * 16, b"synced")

    def kill_before_sync(fs: SimFs, kind: str) -> None:
        if kind == "fdatasync":
            raise SimCrash(kind)

    fs.on_op = kill_before_sync
    with pytest.raises(SimCrash):  # written, in the page cache, never synced
        wal.data(b"j" * 16, b"written")
    after_kill = fs.process_crash()
    wal = Wal.open(D, CTX, config=CFG, fs=after_kill)
    assert [r.payload_len for r in wal.recovery.records if r.type == RecordType.DATA] == [6, 7]  # it reads both
    acked = wal.data(b"j" * 16, b"acked after the reopen")
    wal.close()
    power_cut = SimFs(after_kill.durable_image())
    report = recover(D, power_cut)
    assert report.corruption is None and acked in [r.lsn for r in report.records]


def test_recovery_syncs_a_cut_whose_fsync_failed() -> None:
    """The cut reached the page cache but its fsync failed (EIO): the next open sees nothing to cut, yet the disk
    still holds the torn tail; syncing only when it cuts would chain a new segment to a tail a power cut revives."""
    fs = written_log(3)
    path = f"{D}/wal-0000000000000000.seg"
    end = recover(D, fs, repair=False).findings[-1].offset
    fd = fs.open_rw(path)
    fs.pwrite(fd, b"\x01" * 200, end)  # a torn header prefix, on the disk (as a power cut left it)
    fs.fsync(fd)
    fs.ftruncate(fd, end)  # recovery's cut, then EIO from its fsync: in the page cache only
    fs.close(fd)
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    assert not wal.recovery.truncated  # nothing left to cut, as far as reads can tell
    acked = wal.data(bytes(16), stress_payload(0, 3, 100))
    wal.close()
    report = recover(D, SimFs(fs.durable_image()))
    assert report.corruption is None and acked in [r.lsn for r in report.records]


def _after_a_failed_sync() -> tuple[SimFs, str, int]:
    """A WAL whose second append's fdatasync failed (EIO), then a restart: the page cache still holds that batch,
    marked clean (fsyncgate), the disk does not. Returns the restarted process's fs, the segment and the acked LSN."""
    fs = FaultFs("eio_sync", at=5)  # dir, tmp, dir syncs in open; the first append; then this
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    acked = wal.data(bytes(16), b"synced")
    with pytest.raises(WalIOError):
        wal.data(bytes(16), b"only in the page cache")
    path = f"{D}/wal-0000000000000000.seg"
    after = fs.process_crash()
    with after.mapped(path) as cached:
        assert b"only in the page cache" in bytes(cached)
    return after, path, acked


def test_recovery_after_a_failed_sync_accepts_only_what_the_disk_holds() -> None:
    fs, _, acked = _after_a_failed_sync()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    assert [r.lsn for r in wal.recovery.records if r.type == RecordType.DATA] == [acked]
    assert wal.recovery.tail_read == "simulated disk"
    again = wal.data(bytes(16), stress_payload(0, 1, 100))
    wal.close()
    report = recover(D, SimFs(fs.durable_image()))  # a power cut: the cached batch is gone
    assert report.corruption is None and [acked, again] == [r.lsn for r in report.records if r.type == RecordType.DATA]


def test_recovery_after_a_failed_sync_cuts_what_only_the_page_cache_holds() -> None:
    """Once a new segment follows, the old one is read through the cache: the batch the disk lacks must be gone from
    the cache too, or the next open accepts it there and finds the new segment's chain broken."""
    fs, path, acked = _after_a_failed_sync()
    Wal.open(D, CTX, config=CFG, fs=fs)  # then killed
    with fs.mapped(path) as cached:
        assert b"only in the page cache" not in bytes(cached)
    wal = Wal.open(D, CTX, config=CFG, fs=fs.process_crash())
    assert [r.lsn for r in wal.recovery.records if r.type == RecordType.DATA] == [acked]


def test_recovery_syncs_only_the_last_segment_and_not_a_head_only_tail_it_replaces() -> None:
    """Earlier segments were synced before the next one existed; a head-only tail's head before its rename."""
    fs = written_log(8, size=1500)  # rolls
    segments = recover(D, fs).segments
    assert len(segments) >= 3
    n = len(fs.trace)
    recover(D, fs)
    syncs = [k for k, _ in fs.trace[n:] if k in ("fdatasync", "fsync", "ftruncate")]
    assert syncs == ["fdatasync"]
    Wal.open(D, CTX, config=CFG, fs=fs).close()  # leaves a head-only tail
    n = len(fs.trace)
    wal = Wal.open(D, CTX, config=CFG, fs=fs)  # replaces it
    wal.close()
    parent_and_recovery = ["fsync_dir", "fsync_dir"]
    new_head = ["create", "fallocate", "pwrite", "fsync", "rename", "fsync_dir"]
    assert [k for k, _ in fs.trace[n:]] == parent_and_recovery + new_head


def test_an_io_error_is_fatal_and_never_retried() -> None:
    fs = FaultFs("eio_sync", at=5)  # dir, tmp, dir syncs in open; the first append; then this
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    wal.data(bytes(16), b"ok")
    with pytest.raises(WalIOError):
        wal.data(bytes(16), b"lost")
    n = len(fs.trace)
    with pytest.raises(WalFatalError):
        wal.data(bytes(16), b"refused")
    assert len(fs.trace) == n


@pytest.mark.parametrize(
    ("rtype", "txn", "payload"),
    [
        (RecordType.CHECKPOINT, bytes(16), b""),
        (RecordType.SEGMENT, bytes(16), b""),
        (7, bytes(16), b""),  # acked, then recovery called it corruption
        (300, bytes(16), b""),  # struct.error half-way through encoding
        (True, bytes(16), b""),
        (RecordType.DATA, b"short", b""),
        (RecordType.DATA, "sixteen-chars-id", b""),
        (RecordType.DATA, bytearray(16), b""),  # unhashable: failed after the batch was durable
        (RecordType.DATA, bytes(16), "text"),
    ],
)
def test_entry_rejects_what_the_format_cannot_hold_before_anything_is_written(
    rtype: int, txn: bytes, payload: bytes
) -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    first = wal.data(b"j" * 16, b"ok")
    n = len(fs.trace)
    with pytest.raises(ValueError):
        wal.append_batch([Entry(RecordType.DATA, b"j" * 16, b"x"), Entry(rtype, txn, payload)])  # type: ignore[arg-type]
    assert len(fs.trace) == n
    after = wal.data(b"j" * 16, b"still fine")
    wal.close()
    report = recover(D, fs=fs)
    assert report.corruption is None
    assert [r.lsn for r in report.records if r.type == RecordType.DATA] == [first, after]


def test_an_error_in_the_group_commit_leader_answers_every_request_of_its_batch() -> None:
    """A non-I/O error while the leader writes a merged batch: each appender gets it, none waits forever."""
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    first_sync = threading.Event()
    followers = 5

    def hook(fs: SimFs, kind: str) -> None:
        if kind == "fdatasync" and not first_sync.is_set():  # the first batch: hold it until the others queue up
            first_sync.set()
            deadline = time.monotonic() + 10
            while len(wal._queue) < followers and time.monotonic() < deadline:
                time.sleep(0.001)
        elif kind == "pwrite" and first_sync.is_set():  # the merged second batch
            raise RuntimeError("injected leader failure")

    fs.on_op = hook
    results: dict[int, object] = {}

    def append(i: int) -> None:
        try:
            results[i] = wal.append_batch([Entry(RecordType.DATA, b"j" * 16, bytes([i]) * 10)])
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=append, args=(0,), daemon=True)]
    threads[0].start()
    assert first_sync.wait(10)
    threads += [threading.Thread(target=append, args=(i,), daemon=True) for i in range(1, followers + 1)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "an appender was never answered"
    fs.on_op = None
    assert isinstance(results[0], list)  # its batch was durable before the failure
    assert all(isinstance(results[i], RuntimeError) for i in range(1, followers + 1)), results
    n = len(fs.trace)
    with pytest.raises(WalFatalError):  # the state may have moved and bytes been written: dead, no retry
        wal.data(b"j" * 16, b"refused")
    assert len(fs.trace) == n
    report = recover(D, fs=fs)
    assert report.corruption is None
    assert [r.lsn for r in report.records if r.type == RecordType.DATA] == results[0]


def test_stress_payload_checks_itself() -> None:
    p = stress_payload(1, 2, 300)
    assert len(p) == 300 and stress_payload_ok(p)
    assert not stress_payload_ok(p[:-1] + bytes([p[-1] ^ 1]))


def test_cli_stress_inspect_verify(tmp_path: Path) -> None:
    path = str(tmp_path / "w")
    runner = CliRunner()
    out = runner.invoke(app, ["stress", path, "--records", "50", "--batch", "4", "--threads", "3"])
    assert out.exit_code == 0
    ins = runner.invoke(app, ["inspect", path])
    doc = json.loads(ins.stdout)
    assert doc["record_count"] >= 50 and doc["merkle_root"] and doc["corruption"] is None
    assert runner.invoke(app, ["verify", path]).exit_code == 0
    seg = tmp_path / "w" / "wal-0000000000000000.seg"
    data = bytearray(seg.read_bytes())
    data[512 + 3] ^= 0x10
    seg.write_bytes(bytes(data))
    bad = runner.invoke(app, ["verify", path])
    assert bad.exit_code == 1 and json.loads(bad.stdout)["corruption"]


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_cli_refuses_a_missing_wal_directory(tmp_path: Path, command: str) -> None:
    out = CliRunner().invoke(app, [command, str(tmp_path / "nonexistent")])
    assert out.exit_code == 2 and "does not exist" in out.output and '"ok": true' not in out.output


def test_checkpoint_returns_its_own_lsn_when_another_batch_follows_at_once() -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    wal.data(b"j" * 16, b"before")
    follower: list[int] = []

    class AppendOnRelease(threading.Condition):
        """The moment checkpoint() releases the lock, another appender takes it and writes its batch."""

        armed = False

        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            if self.armed:
                self.armed = False
                t = threading.Thread(target=lambda: follower.append(wal.data(b"j" * 16, b"after")))
                t.start()
                t.join()

    cv = wal._cv = AppendOnRelease(wal._lock)
    cv.armed = True
    lsn = wal.checkpoint()
    wal.close()
    assert follower and follower[0] == lsn + 1
    types = {r.lsn: r.type for r in recover(D, fs).records}
    assert types[lsn] == RecordType.CHECKPOINT


def test_writer_and_scan_match_the_reference_codec_field_by_field() -> None:
    """The writer's and the scan's inlined per-record code agree with the reference functions of FORMAT.md."""
    fs = SimFs()
    wal = Wal.open(D, CTX, config=WalConfig(segment_size=16384, checkpoint_every=5), fs=fs)
    for i in range(30):
        job = bytes([i]) * 16
        wal.append_batch([Entry(RecordType.DATA, job, bytes([j]) * (i * 37 % 700)) for j in range(i % 4 + 1)])
        wal.begin(job, b"b" * (i % 3))
    root = wal.merkle_root()
    wal.close()
    chain, leaves, count = genesis_chain(bytes.fromhex(wal.wal_uuid)), [], 0
    for name in sorted(fs.listdir(D)):
        with fs.mapped(f"{D}/{name}") as data:
            off = 0
            while not header_slot_unwritten(data, off):
                h = decode_header(data, off)
                assert isinstance(h, Header) and h.offset == off
                assert encode_header(h) == data[off : off + HEADER_SIZE]
                assert h.chain == chain_next(chain, data[off : off + CHAINED])
                payload = data[off + HEADER_SIZE : off + HEADER_SIZE + h.payload_len]
                assert h.payload_sha == hashlib.sha256(payload).digest() and h.payload_crc == crc32c.crc32c(payload)
                pad = data[off + HEADER_SIZE + h.payload_len : h.next_offset]
                assert pad == bytes(padded(h.payload_len) - h.payload_len)
                leaves.append(leaf_hash(data[off : off + CHAINED]))
                chain, off, count = h.chain, h.next_offset, count + 1
    assert merkle_root(leaves) == root
    report = recover(D, fs)
    assert report.merkle_root() == root.hex() and report.state is not None and report.state.prev_chain == chain
    assert len(report.records) == count - len(report.segments)  # every record but the SEGMENT ones


def test_an_oversized_payload_is_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    import esper.compiler.wal.log as wal_module

    monkeypatch.setattr(wal_module, "MAX_PAYLOAD", 1000)  # the real bound (u32) needs a 4 GiB payload
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    first = wal.data(b"j" * 16, b"ok")
    with pytest.raises(ValueError, match="exceeds"):
        wal.append_batch([Entry(RecordType.DATA, b"j" * 16, b"small"), Entry(RecordType.DATA, b"j" * 16, b"x" * 1001)])
    after = wal.data(b"j" * 16, b"still fine")
    wal.close()
    report = recover(D, fs=fs)
    assert report.corruption is None
    assert [r.lsn for r in report.records if r.type == RecordType.DATA] == [first, after]


_batches = st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=5), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(batches=_batches, checkpoint_every=st.integers(1, 8), checkpoint_after=st.sets(st.integers(0, 29)))
def test_a_segment_never_grows_past_its_preallocated_size(
    batches: list[list[int]], checkpoint_every: int, checkpoint_after: set[int]
) -> None:
    fs = SimFs()
    wal = Wal.open(D, CTX, config=WalConfig(segment_size=8192, checkpoint_every=checkpoint_every), fs=fs)
    for i, sizes in enumerate(batches):
        wal.append_batch([Entry(RecordType.DATA, b"j" * 16, b"p" * n) for n in sizes])
        if i in checkpoint_after:
            wal.checkpoint()
    wal.close()
    for name in fs.listdir(D):
        with fs.mapped(f"{D}/{name}") as data:
            h = decode_header(data, 0)
            assert isinstance(h, Header)
            body = SegmentBody.decode(bytes(data[HEADER_SIZE : HEADER_SIZE + h.payload_len]))
            assert body is not None and len(data) == body.segment_size, name
    assert recover(D, fs).corruption is None


def _seg_path(sid: int) -> str:
    return f"{D}/wal-{sid:016x}.seg"


def _retired_log(fs: SimFs) -> list[int]:
    """A WAL whose settled first segments were retired; returns the LSNs of its retained DATA records."""
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    a, b = b"a" * 16, b"b" * 16
    wal.data(a, b"x" * 3000)
    wal.data(a, b"x" * 6000)  # rolls
    wal.commit(a)
    kept = [wal.data(b, b"y" * 6000)]  # rolls: the segments before hold only settled records
    assert wal.retire_settled()
    kept.append(wal.data(b, b"z" * 100))
    wal.close()
    return kept


def test_retirement_moves_the_manifest_durably_before_it_unlinks_a_segment() -> None:
    fs = SimFs()
    kept = _retired_log(fs)
    rename = next(i for i, (k, w) in enumerate(fs.trace) if k == "rename" and w.endswith("/MANIFEST"))
    first_unlink = next(i for i, (k, _) in enumerate(fs.trace) if k == "unlink")
    ops = [k for k, _ in fs.trace]
    assert ops[rename - 3 : rename] == ["create", "pwrite", "fsync"] and fs.trace[rename - 3][1].endswith(".tmp")
    assert first_unlink == rename + 2 and fs.trace[rename + 1] == ("fsync_dir", D)
    manifest = read_manifest(fs, D)
    report = recover(D, fs, repair=False)
    assert isinstance(manifest, Manifest) and report.corruption is None
    assert report.segments[0] == f"wal-{manifest.segment_id:016x}.seg"
    assert report.starts[manifest.segment_id] == manifest and manifest.first_lsn > 1
    assert [r.lsn for r in report.records if r.type == RecordType.DATA] == kept


@pytest.mark.parametrize("retired", [False, True])
def test_losing_the_oldest_segment_is_reported_as_corruption(retired: bool) -> None:
    fs = SimFs()
    if retired:
        _retired_log(fs)
    else:
        wal = Wal.open(D, CTX, config=CFG, fs=fs)
        wal.data(b"j" * 16, b"x" * 6000)
        wal.data(b"j" * 16, b"x" * 6000)  # rolls
        wal.close()
    oldest = recover(D, fs).segments[0]
    fs.unlink(f"{D}/{oldest}")
    report = recover(D, fs)
    assert report.corruption is not None and report.corruption.offset == 0, report.findings
    assert not report.records and not report.truncated
    with pytest.raises(WalCorruptionError):
        Wal.open(D, CTX, config=CFG, fs=fs)


def test_a_lost_damaged_or_foreign_manifest_is_reported_as_corruption() -> None:
    fs = SimFs()
    _retired_log(fs)
    path = f"{D}/MANIFEST"
    good = bytes(fs.inodes[fs.names[path]].data)
    manifest = Manifest.decode(good)
    assert isinstance(manifest, Manifest)
    foreign = dataclasses.replace(manifest, wal_uuid=bytes(16)).encode()
    behind = dataclasses.replace(manifest, segment_id=manifest.segment_id - 1).encode()  # a segment that is gone
    for damaged in (None, good[:-1], bytes([good[0] ^ 1]) + good[1:], foreign, behind):
        if damaged is None:
            fs.unlink(path)
        else:
            fd = fs.open_create(path) if not fs.exists(path) else fs.open_rw(path)
            fs.ftruncate(fd, 0)
            fs.pwrite(fd, damaged, 0)
            fs.close(fd)
        report = recover(D, fs)
        assert report.corruption is not None and not report.records, damaged
    fd = fs.open_rw(path)
    fs.ftruncate(fd, 0)
    fs.pwrite(fd, good, 0)
    fs.close(fd)
    assert recover(D, fs).corruption is None


def test_segments_a_cut_short_retirement_left_are_ignored_then_deleted() -> None:
    fs = SimFs()

    def die_at_first_unlink(fs: SimFs, kind: str) -> None:
        if kind == "unlink":
            raise SimCrash(kind)

    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    wal.data(b"a" * 16, b"x" * 6000)
    wal.commit(b"a" * 16)
    kept = wal.data(b"b" * 16, b"y" * 6000)  # rolls
    fs.on_op = die_at_first_unlink
    with pytest.raises(SimCrash):
        wal.retire_settled()
    fs = fs.process_crash()
    names = fs.listdir(D)
    assert "MANIFEST" in names and "wal-0000000000000000.seg" in names
    read_only = recover(D, fs, repair=False)
    assert read_only.corruption is None and read_only.retired == ["wal-0000000000000000.seg"]
    assert [r.lsn for r in read_only.records if r.type == RecordType.DATA] == [kept]
    assert "wal-0000000000000000.seg" in fs.listdir(D)
    first = recover(D, fs)
    assert "wal-0000000000000000.seg" not in fs.listdir(D)
    second = recover(D, SimFs(fs.durable_image()))  # the deletion was made durable
    assert not second.retired and [r.lsn for r in second.records] == [r.lsn for r in first.records]


def _segment_files(fs: SimFs) -> dict[str, int]:
    return {n: fs.size(f"{D}/{n}") for n in fs.listdir(D) if n.endswith(".seg")}


def test_a_restart_loop_leaves_a_bounded_number_of_segments_and_bytes() -> None:
    """Open/close and open/kill -9 (at every syscall of an open) in a loop: each open replaces the head-only tail."""
    fs = SimFs()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    lsn = wal.data(b"j" * 16, b"kept")
    wal.close()
    epochs = [wal.epoch]
    for i in range(40):
        wal = Wal.open(D, CTX, config=CFG, fs=fs)
        epochs.append(wal.epoch)
        if i % 2:
            wal.close()
        else:
            fs = fs.process_crash()  # kill -9 after the open
    n_ops, killed = len(fs.trace), 0  # fs.trace: the ops of the last open
    for k in range(n_ops):  # kill -9 at every syscall of an open

        def kill_at(fs: SimFs, kind: str, k: int = k) -> None:
            if len(fs.trace) == k:
                raise SimCrash(kind)

        fs = fs.process_crash(on_op=kill_at)
        try:
            Wal.open(D, CTX, config=CFG, fs=fs).close()
        except SimCrash:
            killed += 1
        fs.on_op = None
    assert killed == n_ops > 5
    files = _segment_files(fs)
    assert len(files) == 2, files
    first, tail = sorted(files)  # the one with a record, cut where it ends, and one preallocated head
    assert files[first] < CFG.segment_size == files[tail], files
    assert epochs == sorted(set(epochs))  # every open a new, higher epoch
    report = recover(D, fs)
    assert report.corruption is None and [r.lsn for r in report.records if r.type == RecordType.DATA] == [lsn]
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    after = wal.data(b"j" * 16, b"after")
    wal.close()
    assert [r.lsn for r in recover(D, fs).records if r.type == RecordType.DATA] == [lsn, after]


def test_a_head_only_tail_after_a_retirement_is_followed_once_then_replaced() -> None:
    """The oldest retained segment's predecessor state is gone (retired): it cannot be rewritten, only followed."""
    fs = SimFs()
    _retired_log(fs)
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    wal.commit(b"b" * 16)
    wal.close()
    wal = Wal.open(D, CTX, config=CFG, fs=fs)
    assert wal.retire_settled()  # everything before the (empty) active segment: it alone is retained
    wal.close()
    assert len(_segment_files(fs)) == 1
    for _ in range(5):
        Wal.open(D, CTX, config=CFG, fs=fs).close()
    assert len(_segment_files(fs)) == 2
    assert recover(D, fs).corruption is None


def test_restarts_on_a_real_disk_keep_disk_use_bounded(tmp_path: Path) -> None:
    path = str(tmp_path / "w")
    cfg = WalConfig(segment_size=1 << 20)
    with Wal.open(path, CTX, config=cfg) as wal:
        wal.data(b"j" * 16, b"kept")
    for _ in range(30):
        Wal.open(path, CTX, config=cfg).close()
    segs = list(Path(path).glob("*.seg"))
    used = sum(p.stat().st_blocks * 512 for p in Path(path).iterdir())
    assert len(segs) == 2 and used <= 2 * cfg.segment_size + 8192, (len(segs), used)
    assert recover(path).corruption is None
