"""Recovery's functional core: scan segment bytes, accept sound records, classify the first damage.

Pure: takes bytes (or a read-only mmap) and returns what it found; the shell (`log.py`) reads files, applies the
truncation this decides, and the caller sets the policy. See FORMAT.md, "Recovery classification".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import crc32c

from esper.compiler.fsio import ReadBuffer
from esper.compiler.wal.format import (
    ALIGN,
    CHAIN_TAG,
    CHAINED,
    F_HCRC,
    F_SENTINEL,
    HEADER_FMT,
    HEADER_SIZE,
    LEAF_TAG,
    MAGIC,
    ZERO_PADS,
    CheckpointBody,
    Manifest,
    MerkleFrontier,
    RecordType,
    SegmentBody,
    context_root,
    context_sha,
    decode_header,
    genesis_chain,
    header_problem,
    segment_name,
)

__all__ = [
    "CheckpointInfo",
    "Finding",
    "RecoveryReport",
    "ScanState",
    "ScannedRecord",
    "SegmentScan",
    "retained_segments",
    "scan_segment",
]

SECTOR = 512
FindingKind = Literal["clean_end", "torn_tail", "corruption"]


@dataclass(slots=True)
class ScannedRecord:
    lsn: int
    type: int
    txn: bytes
    segment_id: int
    offset: int
    payload_len: int
    batch_id: int
    epoch: int
    payload: bytes | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    lsn: int
    segment_id: int
    tree_size: int
    root: str
    context_root: str
    context: dict[str, str]


@dataclass(frozen=True)
class Finding:
    """Where a segment stopped and why. `truncate_to` is set for a torn tail (the start of its unsynced batch)."""

    segment: str
    offset: int
    kind: FindingKind
    reason: str
    truncate_to: int | None = None
    dropped_records: int = 0


@dataclass
class ScanState:
    """What a scan carries from one segment to the next, and what a writer continues from."""

    wal_uuid: bytes
    next_lsn: int
    prev_chain: bytes
    next_batch_id: int
    epoch: int
    frontier: MerkleFrontier | None  # None until the oldest retained segment's first checkpoint anchors it


@dataclass
class SegmentScan:
    segment: str
    segment_id: int
    records: list[ScannedRecord]
    checkpoints: list[CheckpointInfo]
    end: int  # offset just past the last accepted record
    finding: Finding
    state: ScanState | None  # None when the segment header itself was unusable
    start: Manifest | None = None  # where this segment starts, from its SEGMENT record (None when unusable)
    before: ScanState | None = None  # the state before its SEGMENT record, when known (not after a retirement)

    @property
    def head_only(self) -> bool:
        """It holds nothing but its head (SEGMENT, CHECKPOINT): no record was ever acknowledged in it."""
        return self.finding.kind != "corruption" and len(self.records) == 1


@dataclass
class RecoveryReport:
    """What recovery found: accepted records, where each segment ended, the torn tail it cut and any corruption."""

    path: str
    wal_uuid: str | None = None
    segments: list[str] = field(default_factory=list)
    records: list[ScannedRecord] = field(default_factory=list)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    truncated: list[tuple[str, int, int]] = field(default_factory=list)  # (segment, old size, new size)
    deleted_tmp: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    retired: list[str] = field(default_factory=list)  # present, yet retired by the manifest (a cut-short retirement)
    starts: dict[int, Manifest] = field(default_factory=dict)  # where each retained segment starts
    reusable_tail: ScanState | None = None  # the state before the last segment when it holds only its head
    state: ScanState | None = None
    last_segment_id: int = -1
    tail_read: str | None = None  # how the last segment was read past the page cache (O_DIRECT, ...)
    bytes_scanned: int = 0
    duration_s: float = 0.0

    @property
    def corruption(self) -> Finding | None:
        return next((f for f in self.findings if f.kind == "corruption"), None)

    @property
    def torn_tail(self) -> Finding | None:
        return next((f for f in self.findings if f.kind == "torn_tail"), None)

    @property
    def first_lsn(self) -> int | None:
        return self.records[0].lsn if self.records else None

    @property
    def last_lsn(self) -> int | None:
        return self.records[-1].lsn if self.records else None

    def merkle_root(self) -> str | None:
        st = self.state
        return st.frontier.root().hex() if st is not None and st.frontier is not None else None

    def to_json(self, with_records: bool = True) -> dict[str, object]:
        tree = self.state.frontier.size if self.state and self.state.frontier else None
        out: dict[str, object] = {
            "path": self.path,
            "wal_uuid": self.wal_uuid,
            "segments": self.segments,
            "record_count": len(self.records),
            "lsn_range": [self.first_lsn, self.last_lsn],
            "merkle_root": self.merkle_root(),
            "merkle_tree_size": tree,
            "checkpoints": [c.__dict__ for c in self.checkpoints],
            "findings": [f.__dict__ for f in self.findings],
            "torn_tail": self.torn_tail is not None,
            "corruption": self.corruption.__dict__ if self.corruption else None,
            "truncated": self.truncated,
            "deleted_tmp": self.deleted_tmp,
            "manifest": _manifest_json(self.manifest),
            "retired": self.retired,
            "tail_read": self.tail_read,
            "bytes_scanned": self.bytes_scanned,
            "duration_s": round(self.duration_s, 6),
        }
        if with_records:
            out["records"] = [
                {
                    "lsn": r.lsn,
                    "type": RecordType(r.type).name,
                    "txn": r.txn.hex(),
                    "segment": r.segment_id,
                    "offset": r.offset,
                    "payload_len": r.payload_len,
                    "batch": r.batch_id,
                    "epoch": r.epoch,
                }
                for r in self.records
            ]
        return out


def _manifest_json(m: Manifest | None) -> dict[str, object] | None:
    if m is None:
        return None
    return {
        "wal_uuid": m.wal_uuid.hex(),
        "first_segment": segment_name(m.segment_id),
        "first_lsn": m.first_lsn,
        "prev_chain": m.prev_chain.hex(),
    }


def retained_segments(
    segs: list[tuple[int, str]], manifest: Manifest | None
) -> tuple[list[tuple[int, str]], list[str], Finding | None]:
    """Split the segment files (id, name; oldest first) at the manifest: (retained, retired, corruption finding).

    Files older than the manifest's first segment were retired (a retirement cut short before its unlinks); a missing
    first retained segment is corruption, never skipped. Without a manifest nothing was ever retired: all are retained.
    """
    if manifest is None:
        return segs, [], None
    retired = [n for sid, n in segs if sid < manifest.segment_id]
    kept = [(sid, n) for sid, n in segs if sid >= manifest.segment_id]
    if not kept or kept[0][0] != manifest.segment_id:
        name = segment_name(manifest.segment_id)
        reason = f"first retained segment missing: the manifest says the log starts in it at LSN {manifest.first_lsn}"
        return [], retired, Finding(name, 0, "corruption", reason)
    return kept, retired, None


_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_SEGMENT, _CHECKPOINT = int(RecordType.SEGMENT), int(RecordType.CHECKPOINT)  # plain ints: no enum lookups per record


def _all_zero(buf: ReadBuffer, start: int, end: int) -> bool:
    for a in range(start, end, _CHUNK):
        b = min(end, a + _CHUNK)
        if buf[a:b] != _ZEROS[: b - a]:
            return False
    return True


def _payload_torn(buf: ReadBuffer, start: int, end: int) -> bool:
    """A payload failing its CRC is torn only if a whole 512-byte sector of it is unwritten (zero) or past EOF."""
    if end > len(buf):
        return True
    zero = bytes(SECTOR)
    s = start // SECTOR * SECTOR
    while s < end:
        if buf[s : s + SECTOR] == zero[: min(SECTOR, len(buf) - s)]:
            return True
        s += SECTOR
    return False


def _checkpoint(payload: bytes, lsn: int, ctx_sha: bytes, prev_chain: bytes, st: ScanState) -> CheckpointBody | str:
    """Check a CHECKPOINT record's body against the log so far; anchors `st.frontier` if this is the first one."""
    body = CheckpointBody.decode(payload)
    if body is None or body.tree_size != lsn - 1 or body.chain != prev_chain:
        return "checkpoint does not match the log"
    if st.frontier is None:  # the oldest retained segment: its first checkpoint anchors the tree
        st.frontier = MerkleFrontier(body.tree_size, list(body.frontier))
    if body.root != st.frontier.root() or body.tree_size != st.frontier.size:
        return "merkle root mismatch"
    if body.ctx_root != context_root(body.tree_size, body.root, ctx_sha):
        return "checkpoint context root mismatch"
    if context_sha(body.context_json) != ctx_sha:
        return "checkpoint context does not match its hash"
    return body


@dataclass
class _Bad:
    kind: Literal["unwritten", "torn_payload", "bad"]
    reason: str


def scan_segment(
    buf: ReadBuffer,
    name: str,
    segment_id: int,
    state: ScanState | None,
    *,
    is_last: bool,
    manifest: Manifest | None = None,
    verify_payload_sha: bool = False,
    keep_payloads: bool = False,
) -> SegmentScan:
    """Accept the sound records of one segment in order and classify where (and why) they stop.

    `state` is None for the oldest retained segment: it must start where `manifest` says, or, with no manifest,
    at the start of the log (LSN 1, the genesis chain).
    """
    mv = memoryview(buf)
    try:
        return _scan(buf, mv, name, segment_id, state, manifest, is_last, verify_payload_sha, keep_payloads)
    finally:
        mv.release()


def _scan(
    buf: ReadBuffer,
    mv: memoryview,
    name: str,
    segment_id: int,
    anchor: ScanState | None,
    manifest: Manifest | None,
    is_last: bool,
    verify_sha: bool,
    keep: bool,
) -> SegmentScan:
    records: list[ScannedRecord] = []
    checkpoints: list[CheckpointInfo] = []
    n = len(buf)
    start: Manifest | None = None
    before: ScanState | None = None

    def stop(off: int, kind: FindingKind, reason: str, st: ScanState | None, end: int, **kw: int) -> SegmentScan:
        finding = Finding(name, off, kind, reason, **kw)
        return SegmentScan(name, segment_id, records, checkpoints, end, finding, st, start, before)

    # The SEGMENT record anchors this segment: synced before the rename, so any damage to it is corruption.
    h0 = decode_header(mv, 0)
    if isinstance(h0, str):
        return stop(0, "corruption", f"segment header: {h0}", anchor, 0)
    if h0.type != RecordType.SEGMENT or h0.segment_id != segment_id or h0.offset != 0 or h0.next_offset > n:
        return stop(0, "corruption", "segment header inconsistent with its file", anchor, 0)
    body0 = bytes(mv[HEADER_SIZE : HEADER_SIZE + h0.payload_len])
    sb = SegmentBody.decode(body0)
    if sb is None or crc32c.crc32c(body0) != h0.payload_crc or sb.first_lsn != h0.lsn:
        return stop(0, "corruption", "segment header payload", anchor, 0)
    start = Manifest(h0.wal_uuid, segment_id, h0.lsn, sb.prev_chain)
    if anchor is None:
        # The oldest file is the log's start only if the manifest says so (or, with none, it is LSN 1): otherwise
        # older segments were lost, not retired.
        genesis = Manifest(h0.wal_uuid, segment_id, 1, genesis_chain(h0.wal_uuid))
        if manifest is not None and start != manifest:
            return stop(0, "corruption", "oldest segment does not start where the manifest says the log does", None, 0)
        if manifest is None and (start != genesis or h0.batch_id != 0):
            reason = f"oldest segment starts at LSN {h0.lsn}, not at the log's start, and no manifest retired the rest"
            return stop(0, "corruption", reason, None, 0)
        if start == genesis:
            before = ScanState(h0.wal_uuid, 1, start.prev_chain, 0, 0, MerkleFrontier())
        st = ScanState(h0.wal_uuid, h0.lsn, sb.prev_chain, h0.batch_id, h0.epoch, None)
    else:
        st = ScanState(anchor.wal_uuid, anchor.next_lsn, anchor.prev_chain, anchor.next_batch_id, anchor.epoch, None)
        st.frontier = anchor.frontier.copy() if anchor.frontier is not None else None
        if h0.wal_uuid != st.wal_uuid:
            return stop(0, "corruption", "foreign segment (another WAL's uuid)", anchor, 0)
        if h0.lsn != st.next_lsn or sb.prev_chain != st.prev_chain or h0.batch_id != st.next_batch_id:
            return stop(0, "corruption", f"gap before segment: expected LSN {st.next_lsn}, found {h0.lsn}", anchor, 0)
        if h0.epoch < st.epoch:
            return stop(0, "corruption", "writer epoch went backwards", anchor, 0)
        before = anchor
    st.epoch = h0.epoch
    seg_epoch, seg_ctx = h0.epoch, h0.ctx_sha

    off, prev_off = 0, 0
    batch_open = False  # inside a batch whose last record has not been seen yet
    batch_id, batch_count, batch_start_off, batch_start_idx, batch_first_lsn = -1, 0, 0, 0, 0
    # The running state lives in locals while scanning (written back to `st` below): this loop runs once per record,
    # so it works on the raw unpacked header tuple and bound C functions rather than `Header` objects and helpers.
    wal_uuid, next_lsn, prev_chain, next_batch_id = st.wal_uuid, st.next_lsn, st.prev_chain, st.next_batch_id
    frontier = st.frontier
    unpack, crc, sha256, append = HEADER_FMT.unpack_from, crc32c.crc32c, hashlib.sha256, records.append
    bad: _Bad

    while True:
        # ---- check the record at `off`: every check of FORMAT.md "Recovery classification", in order
        if off + HEADER_SIZE > n:  # header_slot_unwritten: past EOF
            bad = _Bad("unwritten", "unwritten header slot" if off < n else "end of file")
            break
        f = unpack(buf, off)
        if f[F_SENTINEL] == 0 and f[F_HCRC] == 0:  # header_slot_unwritten: header[248:256] is all zero
            bad = _Bad("unwritten", "unwritten header slot")
            break
        problem = header_problem(buf, off, f)  # header CRC, constants, reserved bytes, type, batch index/count
        if problem:
            bad = _Bad("bad", problem)
            break
        (_, _, _, rtype, _, _, plen, _, lsn, prev, nxt, wuuid, sid, epoch, txn, bid, bidx, bcount, _, psha, csha, chain,
         _, pcrc, _, _) = f  # fmt: skip
        prefix = buf[off : off + CHAINED]  # bytes: hashed twice below (chain, Merkle leaf)
        if wuuid != wal_uuid:
            problem = "foreign record (another WAL's uuid)"
        elif sid != segment_id or epoch != seg_epoch or csha != seg_ctx:
            problem = "record of another segment, epoch or context"
        elif lsn != next_lsn:
            problem = f"LSN gap: expected {next_lsn}, found {lsn}"
        elif nxt != off + HEADER_SIZE + (plen + ALIGN - 1) // ALIGN * ALIGN or prev != prev_off:  # Header.offset
            problem = "record offsets do not match its position"
        elif (bidx == 0 and (batch_open or bid != next_batch_id)) or (
            bidx > 0 and (not batch_open or bid != batch_id or bcount != batch_count)
        ):
            problem = "batch sequence broken"
        elif chain != sha256(CHAIN_TAG + prev_chain + prefix).digest():  # chain_next, inlined
            problem = "hash chain broken"
        elif off == 0 and rtype != _SEGMENT:
            problem = "first record is not SEGMENT"
        elif off != 0 and rtype == _SEGMENT:
            problem = "SEGMENT record inside a segment"
        if problem:
            bad = _Bad("bad", problem)
            break
        pstart = off + HEADER_SIZE
        pend = pstart + plen
        if pend > n or crc(mv[pstart:pend]) != pcrc:
            bad = _Bad("torn_payload" if _payload_torn(buf, pstart, pend) else "bad", "payload crc mismatch")
            break
        pad_end = nxt if nxt <= n else n  # nxt is the padded end (checked above); padding is under ALIGN bytes
        if pad_end > pend and buf[pend:pad_end] != ZERO_PADS[pad_end - pend]:
            bad = _Bad("bad", "non-zero padding (stale bytes)")
            break
        if verify_sha and sha256(mv[pstart:pend]).digest() != psha:
            bad = _Bad("bad", "payload sha-256 mismatch")
            break

        # ---- accept it
        if bidx == 0:
            batch_open, batch_id, batch_count = True, bid, bcount
            batch_start_off, batch_start_idx, batch_first_lsn = off, len(records), lsn
        if rtype == _CHECKPOINT:
            body = _checkpoint(bytes(mv[pstart:pend]), lsn, csha, prev_chain, st)
            if isinstance(body, str):
                bad = _Bad("bad", body)
                break
            frontier = st.frontier  # anchored by the first checkpoint of the oldest retained segment
            checkpoints.append(
                CheckpointInfo(lsn, segment_id, body.tree_size, body.root.hex(), body.ctx_root.hex(), body.context())
            )
        elif off != 0 and not records:
            bad = _Bad("bad", "second record is not CHECKPOINT")
            break
        if frontier is not None:
            frontier.append(sha256(LEAF_TAG + prefix).digest())  # leaf_hash, inlined
        if off != 0:  # the SEGMENT record is bookkeeping, not a record a caller replays
            payload = bytes(mv[pstart:pend]) if keep else None
            append(ScannedRecord(lsn, rtype, txn, segment_id, off, plen, bid, epoch, payload))
        prev_chain = chain
        next_lsn = lsn + 1
        if bidx == bcount - 1:
            batch_open = False
            next_batch_id = bid + 1
        prev_off, off = off, nxt
    st.next_lsn, st.prev_chain, st.next_batch_id = next_lsn, prev_chain, next_batch_id

    # ---- classify the first damage at `off`
    end = off
    if not records:  # SEGMENT + CHECKPOINT were synced before the rename: damage there is never a torn write
        return stop(off, "corruption", f"segment head damaged: {bad.reason}", anchor, end)
    if bad.kind == "bad":
        return stop(off, "corruption", bad.reason, anchor if not records else st, end)
    if batch_open:
        pend_id, pend_first, pend_off, pend_idx = batch_id, batch_first_lsn, batch_start_off, batch_start_idx
    else:
        pend_id, pend_first, pend_off, pend_idx = st.next_batch_id, st.next_lsn, off, len(records)
    # A sound header after the damage proves the damage is not a torn tail, unless it is a member of the one
    # unsynced batch sitting at its own position (power loss persists a batch's sectors in any subset).
    # The damaged batch's end is known once the header of its last record is sound (the bad record's own, or a
    # member's found below): a non-zero byte past it proves a later batch was written, hence this one was synced.
    batch_end = nxt if bad.kind == "torn_payload" and bidx == bcount - 1 else None
    q = buf.find(MAGIC, off + 1 if bad.kind == "unwritten" else off + HEADER_SIZE)
    while q != -1:
        if q % HEADER_SIZE == 0:
            e = decode_header(mv, q)
            if not isinstance(e, str):
                member = (
                    is_last
                    and e.wal_uuid == st.wal_uuid
                    and e.segment_id == segment_id
                    and e.epoch == seg_epoch
                    and e.batch_id == pend_id
                    and e.lsn == pend_first + e.batch_index
                    and e.offset == q
                )
                if not member:
                    return stop(off, "corruption", f"{bad.reason}, yet a sound record follows at {q}", st, end)
                if e.batch_index == e.batch_count - 1:
                    batch_end = e.next_offset
        q = buf.find(MAGIC, q + 1)
    # Past the batch, an unsynced tail leaves only the preallocated zeros (or the end of the file).
    if batch_end is not None and not _all_zero(buf, batch_end, n):
        return stop(off, "corruption", f"{bad.reason}, yet bytes follow the end of its batch at {batch_end}", st, end)
    rest_zero = _all_zero(buf, off, n)
    if not is_last:
        if rest_zero and not batch_open:
            return stop(off, "clean_end", "end of sealed segment", st, end)
        return stop(off, "corruption", f"damaged end of a sealed segment: {bad.reason}", st, end)
    if rest_zero and not batch_open:
        return stop(off, "clean_end", "end of log", st, end)
    dropped = len(records) - pend_idx
    if dropped:
        del records[pend_idx:]
        # Roll the state back to the start of the dropped batch by rescanning (rare; keeps this function simple).
        return _rescan_to(
            buf, name, segment_id, anchor, manifest, is_last, verify_sha, keep, pend_off, bad.reason, dropped
        )
    return stop(off, "torn_tail", bad.reason, st, pend_off, truncate_to=pend_off, dropped_records=0)


def _rescan_to(
    buf: ReadBuffer,
    name: str,
    segment_id: int,
    anchor: ScanState | None,
    manifest: Manifest | None,
    is_last: bool,
    verify_sha: bool,
    keep: bool,
    cut: int,
    reason: str,
    dropped: int,
) -> SegmentScan:
    """Scan the segment again as if it ended at `cut` (the start of the incomplete batch)."""
    head = bytes(buf[:cut])
    with memoryview(head) as mv:
        again = _scan(head, mv, name, segment_id, anchor, manifest, is_last, verify_sha, keep)
    f = Finding(name, cut, "torn_tail", f"incomplete batch: {reason}", truncate_to=cut, dropped_records=dropped)
    again.finding = f
    return again
