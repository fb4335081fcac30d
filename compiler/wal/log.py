"""Tezzeret's crash-safe write-ahead log: segments, group commit, recovery, retirement.

The imperative shell around `format` (codec, hashes) and `scan` (recovery classification). All I/O goes
through an injectable `FileSystem`, so tests can put a power-loss simulator or a fault injector under the same code.
Format and rules: FORMAT.md.

Usage::

    wal = Wal.open(path, {"compiler": "0.1", "torch": "2.8", "flags": "...", "device": "cuda:0"})
    wal.begin(job); wal.data(job, blob); wal.commit(job)   # each returns its LSN once durable
    wal.unsettled_jobs()                                  # after a crash: jobs with no durable COMMIT/ABORT
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import crc32c

from esper.compiler.exceptions import WalClosedError, WalCorruptionError, WalFatalError, WalIOError
from esper.compiler.fsio import FileSystem, OsFs
from esper.compiler.wal.format import (
    ALIGN,
    CHAIN_TAG,
    HEADER_SIZE,
    LEAF_TAG,
    MAX_PAYLOAD,
    SEGMENT_BODY_SIZE,
    SEGMENT_SUFFIX,
    ZERO_PADS,
    CheckpointBody,
    Manifest,
    MerkleFrontier,
    RecordType,
    SegmentBody,
    canonical_context,
    context_root,
    context_sha,
    encode_prefix,
    genesis_chain,
    padded,
    seal_header,
    segment_name,
)
from esper.compiler.wal.scan import Finding, RecoveryReport, ScannedRecord, ScanState, retained_segments, scan_segment

__all__ = [
    "ENTRY_TYPES",
    "MANIFEST_NAME",
    "Entry",
    "RecordType",
    "RecoveryReport",
    "Wal",
    "WalConfig",
    "read_manifest",
    "recover",
    "segment_name",
    "write_manifest",
]

TMP_SUFFIX = ".tmp"
MANIFEST_NAME = "MANIFEST"


def _segment_id(name: str) -> int | None:
    if name.startswith("wal-") and name.endswith(SEGMENT_SUFFIX) and len(name) == 4 + 16 + len(SEGMENT_SUFFIX):
        try:
            return int(name[4:20], 16)
        except ValueError:
            return None
    return None


def read_manifest(fs: FileSystem, path: str) -> Manifest | str | None:
    """The WAL's manifest, the reason it is unreadable, or None when there is none (nothing was ever retired)."""
    full = os.path.join(path, MANIFEST_NAME)
    if not fs.exists(full):
        return None
    with fs.mapped(full) as buf:
        return Manifest.decode(bytes(buf))


def _pwrite_all(fs: FileSystem, fd: int, data: bytes, offset: int) -> None:
    """One pwrite of all of `data`; a short write is an error (WAL-NOTES rule 3: never retried)."""
    n = fs.pwrite(fd, data, offset)
    if n != len(data):
        raise OSError(f"short write: {n} of {len(data)} bytes")


def _create_durably(
    fs: FileSystem,
    directory: str,
    name: str,
    data: bytes,
    *,
    prealloc: int | None = None,
    sync_dir: Callable[[], None] | None = None,
) -> int:
    """Create or replace `name` durably (WAL-NOTES rules 2 and 8): create its tmp, preallocate `prealloc` bytes, write
    `data` at 0, fsync, rename over `name`, fsync the directory (`sync_dir`, when given, does that last step).

    Returns the open descriptor, which the caller closes; on any error it is closed here and the error propagates.
    """
    final = os.path.join(directory, name)
    tmp = final + TMP_SUFFIX
    fd = fs.open_create(tmp)
    try:
        if prealloc is not None:
            fs.fallocate(fd, 0, prealloc)
        _pwrite_all(fs, fd, data, 0)
        fs.fsync(fd)
        fs.rename(tmp, final)
        if sync_dir is None:
            fs.fsync_dir(directory)
        else:
            sync_dir()
    except BaseException:
        fs.close(fd)
        raise
    return fd


def write_manifest(fs: FileSystem, path: str, manifest: Manifest) -> None:
    """Replace the manifest durably (WAL-NOTES rule 8): tmp, write, fsync, rename, fsync the directory."""
    fs.close(_create_durably(fs, path, MANIFEST_NAME, manifest.encode()))


@dataclass(frozen=True)
class WalConfig:
    """Sizes and cadences, validated once."""

    segment_size: int = 64 << 20
    checkpoint_every: int = 4096  # records between Merkle checkpoints
    max_batch_records: int = 4096
    max_batch_bytes: int = 32 << 20
    verify_payload_sha: bool = False  # recovery re-hashes payloads (CRC32C always checked)

    def __post_init__(self) -> None:
        if self.segment_size < 4096 or self.segment_size % 4096:
            raise ValueError("segment_size must be a positive multiple of 4096")
        if self.checkpoint_every < 1 or self.max_batch_records < 1 or self.max_batch_bytes < 1:
            raise ValueError("cadences must be positive")


ENTRY_TYPES = frozenset({RecordType.BEGIN, RecordType.DATA, RecordType.COMMIT, RecordType.ABORT})


@dataclass(frozen=True)
class Entry:
    """One record to append: a transaction-style entry of a compilation job."""

    type: RecordType
    txn: bytes  # 16-byte job id
    payload: bytes = b""

    def __post_init__(self) -> None:
        # Refused here, before a batch is built: encoding must never fail half-way through a batch, and a record
        # must never be acknowledged that recovery would refuse (an unknown type reads as corruption).
        if not isinstance(self.type, int) or self.type not in ENTRY_TYPES:
            raise ValueError(
                f"entry type {self.type!r} is not BEGIN, DATA, COMMIT or ABORT"
                " (SEGMENT and CHECKPOINT records are written by the WAL itself)"
            )
        if not isinstance(self.txn, bytes) or len(self.txn) != 16:
            raise ValueError("txn must be 16 bytes")
        if not isinstance(self.payload, bytes):
            raise ValueError(f"payload must be bytes, not {type(self.payload).__name__}")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds the format's {MAX_PAYLOAD}")


def recover(
    path: str,
    fs: FileSystem | None = None,
    *,
    repair: bool = True,
    verify_payload_sha: bool = False,
    keep_payloads: bool = False,
) -> RecoveryReport:
    """Scan every retained segment, oldest first (the last one as the disk holds it, past the page cache); with
    `repair`, delete stray tmp files and the segments the manifest retired, cut the last segment where what it
    accepted ends, sync what it accepted.

    Never raises on bad bytes: corruption is reported (scanning stops there) and the caller decides.
    Running it again after it (or a crash during it) yields the same records.
    """
    fs = fs or OsFs()
    t0 = time.perf_counter()
    report = RecoveryReport(path=path)
    if not fs.exists(path):
        return report
    names = sorted(fs.listdir(path))
    tmps = [n for n in names if n.endswith(TMP_SUFFIX)]
    if repair and tmps:
        for n in tmps:
            fs.unlink(os.path.join(path, n))
        report.deleted_tmp = tmps
    manifest = read_manifest(fs, path)
    segs = sorted((sid, n) for n in names if (sid := _segment_id(n)) is not None)
    if isinstance(manifest, str):
        segs, report.findings = [], [Finding(MANIFEST_NAME, 0, "corruption", f"manifest: {manifest}")]
    else:
        report.manifest = manifest
        segs, report.retired, missing = retained_segments(segs, manifest)
        if missing is not None:
            report.findings.append(missing)
    accepted: list[tuple[str, int, int]] = []  # (segment, size, end of what was accepted)
    state: ScanState | None = None
    for i, (sid, name) in enumerate(segs):
        full = os.path.join(path, name)
        is_last = i == len(segs) - 1
        with ExitStack() as stack:
            if is_last:
                # A batch whose fdatasync failed stays readable in the page cache, marked clean, but is not on the disk
                # (fsyncgate), and no later process can learn that the sync failed: read the disk. Only the last
                # segment can hold such bytes (see the sync below), and every open reads it so.
                buf, report.tail_read = stack.enter_context(fs.read_past_cache(full))
            else:
                buf = stack.enter_context(fs.mapped(full))
            scan = scan_segment(
                buf,
                name,
                sid,
                state,
                is_last=is_last,
                manifest=report.manifest if i == 0 else None,
                verify_payload_sha=verify_payload_sha,
                keep_payloads=keep_payloads,
            )
            size = len(buf)
        report.bytes_scanned += scan.end
        report.segments.append(name)
        report.records.extend(scan.records)
        report.checkpoints.extend(scan.checkpoints)
        report.findings.append(scan.finding)
        report.last_segment_id = sid
        if scan.start is not None:
            report.starts[sid] = scan.start
        report.reusable_tail = scan.before if scan.head_only else None
        state = scan.state
        if scan.finding.kind == "corruption":
            break
        accepted.append((name, size, scan.end))  # a torn tail's end is its cut
    if repair and report.corruption is None:
        for name in report.retired:  # finish a retirement cut short: the manifest already moved past them
            fs.unlink(os.path.join(path, name))
        # What was read may not be durable yet (a killed writer's unsynced batch, a cut whose fsync failed): make it
        # so before a writer chains a new segment to it, or a power cut leaves a gap behind acked records. Past the
        # end of what was accepted lie a torn tail, preallocated zeros, or a batch only the page cache holds (its
        # sync failed): cut it all, which drops those pages too (no writer appends to an old segment: the zeros are
        # of no use), or once a new segment follows, a read of this one through the cache would accept them.
        # Only the last segment can hold such bytes: the writer syncs every batch before it rolls (a failed sync or
        # write is fatal: nothing rolls after it), Wal.open rolls only after this cut and sync of the then-last
        # segment, and only the last one is ever cut. A head-only tail that Wal.open replaces is skipped unless it
        # is torn: its head was fsynced before its name existed, and a new head is renamed over it (its cache too).
        if accepted:
            name, size, end = accepted[-1]
            torn = report.torn_tail is not None
            cut = end if end < size and (torn or report.reusable_tail is None) else None
            if cut is not None or report.reusable_tail is None:
                fd = fs.open_rw(os.path.join(path, name))
                try:
                    if cut is not None:
                        fs.ftruncate(fd, cut)
                        report.truncated.append((name, size, cut))
                        fs.fsync(fd)
                    else:
                        fs.fdatasync(fd)  # a no-op on the disk when already synced
                finally:
                    fs.close(fd)
    if repair and (tmps or accepted or report.retired):
        # the tmp and retired deletions, and the names of the manifest and accepted segments (a rename not yet synced)
        fs.fsync_dir(path)
    if state is not None:
        report.wal_uuid = uuid.UUID(bytes=state.wal_uuid).hex
    report.state = state
    report.duration_s = time.perf_counter() - t0
    return report


@dataclass
class _Request:
    entries: Sequence[Entry]
    nbytes: int = 0  # on-disk size of the entries, computed by the appender before it queues (not by the leader)
    lsns: list[int] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class Wal:
    """The write-ahead log of one Tezzeret instance. Thread-safe; appends return only after their bytes are durable."""

    def __init__(
        self,
        path: str,
        fs: FileSystem,
        config: WalConfig,
        context: Mapping[str, str],
        report: RecoveryReport,
        state: ScanState,
        epoch: int,
        last_segment_id: int,
    ) -> None:
        self.path = path
        self.fs = fs
        self.config = config
        self.context = dict(context)
        self.recovery = report
        self._ctx_json = canonical_context(context)
        self._ctx_sha = context_sha(self._ctx_json)
        self._uuid = state.wal_uuid
        self._next_lsn = state.next_lsn
        self._chain = state.prev_chain
        self._batch_id = state.next_batch_id
        self._frontier = state.frontier or MerkleFrontier()
        self._epoch = epoch
        self._seg_fd: int | None = None
        self._seg_id = last_segment_id  # the next segment gets the id after it
        self._seg_off = 0
        self._seg_size = 0
        self._prev_off = 0
        self._since_checkpoint = 0
        self._segments: list[int] = sorted(s for s in report.starts if s <= last_segment_id)
        self._starts = {s: report.starts[s] for s in self._segments}
        self._seg_txns: dict[int, set[bytes]] = {s: set() for s in self._segments}
        self._unsettled: dict[bytes, int] = {}  # job -> LSN of its first record
        self._settled: set[bytes] = set()
        for r in report.records:
            self._track(r.type, r.txn, r.segment_id, r.lsn)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queue: list[_Request] = []
        self._leader = False
        self._fatal: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str,
        context: Mapping[str, str],
        *,
        config: WalConfig | None = None,
        fs: FileSystem | None = None,
        keep_payloads: bool = False,
    ) -> Wal:
        """Recover the directory (creating it if needed), refuse on corruption, start a new segment, new epoch.
        `keep_payloads`: the recovery report's records carry their payloads (what a caller rebuilds its state from).

        A last segment holding only its head (an earlier open that appended nothing) is replaced, not followed: its
        id is reused and the new head renamed over it, so restarts in a loop leave no trail of preallocated segments.
        """
        fs = fs or OsFs()
        config = config or WalConfig()
        try:
            if not fs.exists(path):
                fs.mkdir(path)
            fs.fsync_dir(os.path.dirname(os.path.abspath(path)))  # every time: an earlier open may have died before it
            report = recover(
                path, fs, repair=True, verify_payload_sha=config.verify_payload_sha, keep_payloads=keep_payloads
            )
        except OSError as e:  # a failed cut or directory sync: nothing to trust yet, the caller reopens later
            raise WalIOError(f"recovering {path} failed: {e}") from e
        if report.corruption is not None:
            raise WalCorruptionError(report)
        state, last = report.state, report.last_segment_id
        if state is None:  # a new WAL
            wal_uuid = uuid.uuid4().bytes
            state = ScanState(wal_uuid, 1, genesis_chain(wal_uuid), 0, 0, MerkleFrontier())
        epoch = state.epoch + 1  # above every epoch on the disk, the replaced segment's included
        if report.reusable_tail is not None:
            state, last = report.reusable_tail, last - 1
        wal = cls(path, fs, config, context, report, state, epoch, last)
        try:
            wal._roll(0, 0, cp=False)
        except OSError as e:
            wal._fatal = WalIOError(f"creating a segment failed: {e}")
            raise wal._fatal from e
        return wal

    # ------------------------------------------------------------------ public API

    def append(self, type: RecordType, txn: bytes, payload: bytes = b"") -> int:
        """Append one entry; returns its LSN once durable."""
        return self.append_batch([Entry(type, txn, payload)])[0]

    def append_batch(self, entries: Sequence[Entry]) -> list[int]:
        """Append entries atomically (same group-commit batch: all or none survive a crash); LSNs once durable."""
        if not entries:
            return []
        req = _Request(entries, sum(HEADER_SIZE + padded(len(e.payload)) for e in entries))
        with self._cv:
            self._check_usable()
            self._queue.append(req)
            while not req.done:
                if self._leader:
                    self._cv.wait()
                    continue
                self._leader = True
                try:
                    self._lead()
                finally:
                    self._leader = False
                    self._cv.notify_all()
        if req.error is not None:
            raise req.error
        return req.lsns

    def begin(self, txn: bytes, payload: bytes = b"") -> int:
        return self.append(RecordType.BEGIN, txn, payload)

    def data(self, txn: bytes, payload: bytes) -> int:
        return self.append(RecordType.DATA, txn, payload)

    def commit(self, txn: bytes, payload: bytes = b"") -> int:
        return self.append(RecordType.COMMIT, txn, payload)

    def abort(self, txn: bytes, payload: bytes = b"") -> int:
        return self.append(RecordType.ABORT, txn, payload)

    def unsettled_jobs(self) -> dict[bytes, int]:
        """Jobs with a durable record but no durable COMMIT or ABORT: job id -> LSN of its first retained record."""
        with self._lock:
            return dict(self._unsettled)

    def checkpoint(self) -> int:
        """Write a Merkle checkpoint now (its own batch); returns its LSN once durable."""
        req = _Request([], lsns=[])
        with self._cv:
            self._check_usable()
            while self._leader:
                self._cv.wait()
            self._leader = True
            try:
                self._write_batch([], with_checkpoint=True, reqs=[req])
                lsn = self._next_lsn - 1  # read while still the leader: once released, the next batch moves it
            finally:
                self._leader = False
                self._cv.notify_all()
        if req.error is not None:
            raise req.error
        return lsn

    def merkle_root(self) -> bytes:
        with self._lock:
            return self._frontier.root()

    def retire_settled(self) -> list[str]:
        """Delete the oldest segments whose every job is settled (never the active one); returns their names.

        The manifest moves to the first segment kept, durably, before any file goes: a crash in between leaves
        files the manifest already retired (recovery ignores and deletes them), never a log start nobody recorded.
        """
        with self._cv:
            self._check_usable()
            while self._leader:
                self._cv.wait()
            retire: list[int] = []
            for sid in self._segments:
                if sid == self._seg_id or any(t not in self._settled for t in self._seg_txns.get(sid, ())):
                    break
                retire.append(sid)
            if not retire:
                return []
            try:
                self._retire_files(retire, self._starts[self._segments[len(retire)]])
            except OSError as e:
                self._fatal = WalIOError(f"retiring segments failed: {e}")
                raise self._fatal from e
            for sid in retire:
                self._segments.remove(sid)
                self._seg_txns.pop(sid, None)
                del self._starts[sid]
            return [segment_name(sid) for sid in retire]

    @property
    def segments(self) -> list[str]:
        with self._lock:
            return [segment_name(s) for s in self._segments]

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def wal_uuid(self) -> str:
        return uuid.UUID(bytes=self._uuid).hex

    def close(self) -> None:
        with self._cv:
            while self._leader:
                self._cv.wait()
            self._closed = True
            if self._seg_fd is not None:
                fd, self._seg_fd = self._seg_fd, None
                self.fs.close(fd)

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ group commit (leader holds _leader)

    def _check_usable(self) -> None:
        if self._closed:
            raise WalClosedError("WAL closed")
        if self._fatal is not None:
            raise WalFatalError(f"WAL failed earlier ({self._fatal}); reopen it through recovery")

    def _lead(self) -> None:
        """Take queued requests (whole ones, in order), write them as one batch, sync once, wake their owners."""
        while self._queue:
            if self._fatal is not None:
                for r in self._queue:
                    r.error, r.done = WalFatalError(f"WAL failed earlier ({self._fatal})"), True
                self._queue.clear()
                return
            reqs: list[_Request] = []
            count = nbytes = 0
            while self._queue:
                r = self._queue[0]
                size = r.nbytes
                if reqs and (
                    count + len(r.entries) > self.config.max_batch_records
                    or nbytes + size > self.config.max_batch_bytes
                ):
                    break
                reqs.append(self._queue.pop(0))
                count += len(r.entries)
                nbytes += size
            entries = [e for r in reqs for e in r.entries]
            self._cv.release()  # appenders keep queueing while this batch is written and synced
            try:
                self._write_batch(entries, with_checkpoint=False, reqs=reqs)
            finally:
                self._cv.acquire()
                # Even if an interrupt escapes: every request taken from the queue is answered, none waits forever.
                for r in reqs:
                    for entry, lsn in zip(r.entries, r.lsns, strict=False):  # no lsns when the batch failed
                        self._track(entry.type, entry.txn, self._seg_id, lsn)
                    r.done = True
                self._cv.notify_all()

    def _write_batch(self, entries: list[Entry], *, with_checkpoint: bool, reqs: list[_Request]) -> None:
        """Build, write (one pwrite), sync (one fdatasync); on any error the WAL is dead and nothing is acked.

        Every request of the batch leaves with its LSNs or the error; an interrupt (not an Exception) also propagates.
        """
        if self._fatal is not None:
            for r in reqs:
                r.error = WalFatalError(f"WAL failed earlier ({self._fatal})")
            return
        error: BaseException
        try:
            cp = with_checkpoint or self._since_checkpoint + len(entries) >= self.config.checkpoint_every
            nbytes = sum(r.nbytes for r in reqs)  # the entries are exactly those of `reqs`
            if self._seg_off + self._batch_bytes(nbytes, len(entries), cp, self._next_lsn) > self._seg_size:
                self._roll(nbytes, len(entries), cp=cp)
            data, lsns = self._encode_batch(entries, cp)
            self._durable_write(data)
        except OSError as e:
            self._fatal = error = WalIOError(f"segment {segment_name(self._seg_id)}: {e}")
        except BaseException as e:
            # Anything else (a bug, MemoryError, an interrupt) may strike after the LSN, chain and Merkle state moved
            # or bytes were written: as fatal as an I/O error.
            self._fatal = error = e
        else:
            pos = 0
            for r in reqs:
                r.lsns = lsns[pos : pos + len(r.entries)]
                pos += len(r.entries)
            return
        for r in reqs:
            r.error = error
        if not isinstance(error, Exception):
            raise error

    def _durable_write(self, data: bytes) -> None:
        """The only place batch bytes reach the segment: pwrite them, then fdatasync; never retried."""
        assert self._seg_fd is not None
        _pwrite_all(self.fs, self._seg_fd, data, self._seg_off)
        self._seg_off += len(data)
        self._sync_segment(self._seg_fd)

    def _sync_segment(self, fd: int) -> None:
        self.fs.fdatasync(fd)

    def _sync_dir(self) -> None:
        self.fs.fsync_dir(self.path)

    def _retire_files(self, segment_ids: list[int], start: Manifest) -> None:
        """The manifest naming the new start, durable first; only then the files it retires go."""
        write_manifest(self.fs, self.path, start)
        for sid in segment_ids:
            self.fs.unlink(os.path.join(self.path, segment_name(sid)))
        self.fs.fsync_dir(self.path)

    # ------------------------------------------------------------------ records

    def _encode_records(
        self, items: Sequence[tuple[int, bytes, bytes]], first_index: int, count: int, ts: int, out: list[bytes]
    ) -> list[int]:
        """Encode (type, txn, payload) records as batch members `first_index`.. of `count` at the current position.

        Appends header, payload and zero padding of each to `out`; advances LSN, chain, Merkle frontier and offsets;
        returns the LSNs. The state lives in locals through the loop (written back below): this is the writer's
        per-record cost, so each header is packed once and the hashes are inlined (`chain_next`, `leaf_hash`).
        """
        lsn, chain, prev_off, off = self._next_lsn, self._chain, self._prev_off, self._seg_off
        wal_uuid, seg_id, epoch, batch_id, ctx_sha = (
            self._uuid,
            self._seg_id,
            self._epoch,
            self._batch_id,
            self._ctx_sha,
        )
        sha256, crc, add_leaf = hashlib.sha256, crc32c.crc32c, self._frontier.append
        lsns: list[int] = []
        for bidx, (rtype, txn, payload) in enumerate(items, first_index):
            plen = len(payload)
            pad = -plen % ALIGN
            nxt = off + HEADER_SIZE + plen + pad
            psha = sha256(payload).digest()
            prefix = encode_prefix(
                rtype, plen, lsn, prev_off, nxt, wal_uuid, seg_id, epoch, txn, batch_id, bidx, count, ts, psha, ctx_sha
            )
            chain = sha256(CHAIN_TAG + chain + prefix).digest()
            out += (seal_header(prefix, chain, crc(payload)), payload, ZERO_PADS[pad])
            add_leaf(sha256(LEAF_TAG + prefix).digest())
            lsns.append(lsn)
            lsn += 1
            prev_off, off = off, nxt
        self._next_lsn, self._chain, self._prev_off, self._seg_off = lsn, chain, prev_off, off
        self._since_checkpoint += len(lsns)
        return lsns

    def _checkpoint_bytes(self, tree_size: int) -> int:
        """On-disk size of a CHECKPOINT record over `tree_size` leaves (its frontier: popcount(tree_size) roots)."""
        return HEADER_SIZE + padded(104 + 32 * tree_size.bit_count() + 4 + len(self._ctx_json))

    def _batch_bytes(self, nbytes: int, count: int, cp: bool, first_lsn: int) -> int:
        """On-disk size of a batch of `count` entries (`nbytes`) from `first_lsn`, and of its checkpoint if `cp`.

        The checkpoint follows the entries, so its tree counts them: sized from the tree before the batch, a
        checkpoint whose popcount grows would overrun the preallocated segment.
        """
        return nbytes + (self._checkpoint_bytes(first_lsn - 1 + count) if cp else 0)

    def _checkpoint_payload(self) -> bytes:
        size = self._frontier.size
        assert size == self._next_lsn - 1 and self._frontier.roots is not None
        root = self._frontier.root()
        body = CheckpointBody(
            size,
            root,
            self._chain,
            context_root(size, root, self._ctx_sha),
            tuple(self._frontier.roots),
            self._ctx_json,
        )
        return body.encode()

    def _encode_batch(self, entries: list[Entry], with_checkpoint: bool) -> tuple[bytes, list[int]]:
        """Encode a batch at the current offset (state advances as if written; any later error is fatal)."""
        count = len(entries) + (1 if with_checkpoint else 0)
        ts = time.time_ns()
        start = self._seg_off
        parts: list[bytes] = []
        lsns = self._encode_records([(e.type, e.txn, e.payload) for e in entries], 0, count, ts, parts)
        if with_checkpoint:
            self._encode_records(
                [(RecordType.CHECKPOINT, bytes(16), self._checkpoint_payload())], count - 1, count, ts, parts
            )
            self._since_checkpoint = 0
        self._batch_id += 1
        self._seg_off = start  # _durable_write advances it once the bytes are written
        return b"".join(parts), lsns

    def _roll(self, nbytes: int, count: int, *, cp: bool) -> None:
        """Start a new segment: tmp, preallocate, SEGMENT + CHECKPOINT, fsync, rename, fsync the directory.

        Sized to hold at least its head and the batch that asked for it (`nbytes`, `count` entries, checkpoint `cp`).
        The rename replaces a head-only segment of the same id at open (atomic: the old head or the new one).
        """
        old_fd = self._seg_fd
        sid = self._seg_id + 1
        lsn = self._next_lsn  # the SEGMENT record's; its CHECKPOINT (LSN + 1) covers LSN 1 .. LSN
        head_size = HEADER_SIZE + padded(SEGMENT_BODY_SIZE) + self._checkpoint_bytes(lsn)
        need = head_size + self._batch_bytes(nbytes, count, cp, lsn + 2)
        size = max(self.config.segment_size, (need + 4095) // 4096 * 4096)
        self._seg_id, self._seg_off, self._seg_size, self._prev_off = sid, 0, size, 0
        ts = time.time_ns()
        start = Manifest(self._uuid, sid, self._next_lsn, self._chain)
        seg_body = SegmentBody(self._chain, self._next_lsn, size).encode()
        parts: list[bytes] = []
        self._encode_records([(RecordType.SEGMENT, bytes(16), seg_body)], 0, 2, ts, parts)
        self._encode_records([(RecordType.CHECKPOINT, bytes(16), self._checkpoint_payload())], 1, 2, ts, parts)
        self._since_checkpoint = 0
        self._batch_id += 1
        # the new name must be durable before any record in it is acknowledged
        self._seg_fd = _create_durably(
            self.fs, self.path, segment_name(sid), b"".join(parts), prealloc=size, sync_dir=self._sync_dir
        )
        self._segments.append(sid)
        self._starts[sid] = start
        self._seg_txns[sid] = set()
        if old_fd is not None:
            self.fs.close(old_fd)

    def _track(self, rtype: int, txn: bytes, segment_id: int, lsn: int) -> None:
        if rtype in (RecordType.SEGMENT, RecordType.CHECKPOINT):
            return
        self._seg_txns.setdefault(segment_id, set()).add(txn)
        if rtype in (RecordType.COMMIT, RecordType.ABORT):
            self._settled.add(txn)
            self._unsettled.pop(txn, None)
        elif txn not in self._settled:
            self._unsettled.setdefault(txn, lsn)


def unsettled_in(records: Sequence[ScannedRecord]) -> dict[bytes, int]:
    """Pure: jobs with records but no COMMIT/ABORT among `records` (job -> first LSN)."""
    settled: set[bytes] = set()
    out: dict[bytes, int] = {}
    for r in records:
        if r.type in (RecordType.COMMIT, RecordType.ABORT):
            settled.add(r.txn)
            out.pop(r.txn, None)
        elif r.type not in (RecordType.SEGMENT, RecordType.CHECKPOINT) and r.txn not in settled:
            out.setdefault(r.txn, r.lsn)
    return out
