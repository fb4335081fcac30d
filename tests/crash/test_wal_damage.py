"""C4 truncation at every byte, C5 bit flips, C6 zeroed sectors / duplicated / swapped / foreign / stale records."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from wal_crash_harness import CTX, LONG, USER_TYPES, WAL_DIR, Ack, Result, check, publish, recover_image, workload

from esper.compiler.wal.cli import stress_payload
from esper.compiler.wal.format import HEADER_SIZE, Manifest, padded, segment_name
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig
from esper.compiler.wal.scan import Finding, ScannedRecord
from tests.wal_simfs import CrashImage, SimFs

DAMAGE = "C4/C5/C6: damaged bytes (recovery read-only on the damaged image)"


def _base(
    tail_batches: list[int], size: int = 300
) -> tuple[CrashImage, dict[int, bytes], set[bytes], list[ScannedRecord]]:
    """A synced WAL (rolled segments) ending with the given batch sizes of `size`-byte records."""
    acks: list[Ack] = []
    known: set[bytes] = set()
    fs = SimFs()
    workload(fs, acks, known, reopen=False)
    wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=16384, checkpoint_every=10**6), fs=fs)
    for i, n in enumerate(tail_batches):
        ps = [stress_payload(5, i * 10 + j, size) for j in range(n)]
        known.update(ps)
        lsns = wal.append_batch([Entry(RecordType.DATA, bytes(16), p) for p in ps])
        acks.extend(Ack(lsn, p, 0, 0) for lsn, p in zip(lsns, ps, strict=True))
    wal.close()
    img = fs.durable_image()
    report, _ = recover_image(img, repair=False)
    assert report.corruption is None and report.torn_tail is None
    data = [r for r in report.records if r.type in USER_TYPES]
    kept = {a.lsn: a.payload for a in acks}  # less the records of retired segments (settled jobs)
    return img, {r.lsn: kept[r.lsn] for r in data}, known, data


def _with(img: CrashImage, path: str, data: bytes) -> CrashImage:
    return CrashImage({**img.files, path: data}, img.dirs)


def _seg(img: CrashImage, r: ScannedRecord) -> str:
    return f"{WAL_DIR}/wal-{r.segment_id:016x}.seg"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _slot_of(img: CrashImage) -> Callable[[str, int], tuple[str, int]]:
    """(path, byte offset) -> (segment, offset of the record slot holding that byte) in the undamaged `img`: where
    recovery must report damage to that byte. A byte past a segment's last record is in the slot after it; the
    MANIFEST is one slot."""
    report, _ = recover_image(img, repair=False)
    slots: dict[str, list[int]] = {}
    for r in report.records:  # every record but the SEGMENT one, which starts its file at 0
        slots.setdefault(segment_name(r.segment_id), [0]).extend(
            (r.offset, r.offset + HEADER_SIZE + padded(r.payload_len))
        )

    def slot(path: str, pos: int) -> tuple[str, int]:
        return _name(path), max(o for o in slots.get(_name(path), [0]) if o <= pos)

    return slot


def test_the_checker_excuses_acks_only_behind_a_corruption_reported_at_the_damaged_record() -> None:
    """A recovery that reports the damage earlier than where it is hides the acks in between: they count as lost."""
    img, acked, known, recs = _base([1, 1, 1, 1])
    path, damaged, early = _seg(img, recs[-1]), recs[-1], recs[-3]
    name = path.rsplit("/", 1)[1]
    report, _ = recover_image(_with(img, path, _flip(img.files[path], damaged.offset * 8 + 3)), repair=False)
    assert report.corruption is not None and (report.corruption.segment, report.corruption.offset) == (
        name,
        damaged.offset,
    )
    right = Result("found at the damage", power_loss=False)
    check(report, acked, known, right, damage_at=(name, damaged.offset))
    assert right.lost == right.false_corruption == 0
    misplaced = dataclasses.replace(
        report,
        records=[r for r in report.records if r.lsn < early.lsn],
        findings=[*report.findings[:-1], Finding(name, early.offset, "corruption", "reported too early")],
    )
    wrong = Result("found before the damage", power_loss=False)
    check(misplaced, acked, known, wrong, damage_at=(name, damaged.offset))
    assert wrong.false_corruption == 1 and wrong.lost == 3  # recs[-3:]: none is excused


def test_c4_truncation_at_every_byte_of_the_last_records() -> None:
    res = Result("C4 truncate at every byte, last 6 records", power_loss=False)
    img, acked, known, recs = _base([1, 1, 4, 1])
    last = recs[-7:]  # the tail batches (1, 1, 4, 1) and the record before them
    path = _seg(img, last[-1])
    data = img.files[path]
    end = last[-1].offset + HEADER_SIZE + padded(last[-1].payload_len)
    batch_end: dict[int, int] = {}
    for r in recs:
        batch_end[r.batch_id] = max(batch_end.get(r.batch_id, 0), r.offset + HEADER_SIZE + r.payload_len)
    for cut in range(last[0].offset, end + 1):
        # Records whose whole batch lies before the cut were durable; the cut batch is the unsynced tail.
        durable = {
            r.lsn: acked[r.lsn] for r in recs if r.segment_id != last[-1].segment_id or batch_end[r.batch_id] <= cut
        }
        report, _ = recover_image(_with(img, path, data[:cut]))
        check(report, durable, known, res)
    publish(DAMAGE, [res])
    assert res.runs > 3000
    assert res.lost == 0 and res.corrupted_accepted == 0 and res.false_corruption == 0
    assert res.classes["torn_tail"] > 0


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_c5_every_header_bit_of_first_middle_last_record_and_payload_flips() -> None:
    res = Result("C5 header bit flips (segment head, first, middle, last)", power_loss=False)
    img, acked, known, recs = _base([1, 2])
    targets = [(_seg(img, recs[0]), 0)] + [(_seg(img, r), r.offset) for r in (recs[0], recs[len(recs) // 2], recs[-1])]
    for path, off in targets:
        data = img.files[path]
        for bit in range(HEADER_SIZE * 8):
            report, _ = recover_image(_with(img, path, _flip(data, off * 8 + bit)), repair=False)
            check(report, acked, known, res, damage_at=(_name(path), off))
    publish(DAMAGE, [res])
    pres = Result("C5 random payload bit flips", power_loss=False)
    rng = random.Random(5)
    for _ in range(2000 if LONG else 300):
        r = rng.choice(recs)
        path = _seg(img, r)
        bit = (r.offset + HEADER_SIZE) * 8 + rng.randrange(r.payload_len * 8)
        report, _ = recover_image(_with(img, path, _flip(img.files[path], bit)), repair=False)
        check(report, acked, known, pres, damage_at=(_name(path), r.offset))
    publish(DAMAGE, [pres])
    for x in (res, pres):
        assert x.lost == x.corrupted_accepted == x.false_corruption == 0
        assert x.classes["corruption"] == x.runs, "a flipped bit must be reported as corruption, never cut as a tail"


# Tail layouts (records per batch) and payload sizes: a zeroed sector then hits a header, the end of a payload and the
# next header, a batch's last record, a middle one; 48 bytes is a record of exactly one sector.
LAYOUTS = [[1] * 8, [1, 3], [2, 1, 4, 1], [3, 1, 2]]
SIZES = [48, 200, 300, 511, 700, 1500, *([100, 1000, 2000] if LONG else [])]


def test_c6_zeroed_sectors() -> None:
    res = Result(f"C6 zeroed 512-byte sector, {len(LAYOUTS)} layouts x {len(SIZES)} sizes (last batch excl.*)", False)
    for layout in LAYOUTS:
        for size in SIZES:
            img, acked, known, recs = _base(layout, size)
            slot = _slot_of(img)
            last_batch = recs[-1].batch_id
            # *Zeroing a sector of the last batch is exactly what a torn unsynced write leaves: no log can tell them
            # apart. Any other batch was provably synced: a later batch's header, or its own last header and bytes
            # after its end, survive one zeroed sector (a record of a >= 48-byte payload spans a whole sector).
            kept = {r.lsn: acked[r.lsn] for r in recs if r.batch_id != last_batch}
            for path, data in sorted(img.files.items()):
                used = max((r.offset + HEADER_SIZE + r.payload_len for r in recs if _seg(img, r) == path), default=1024)
                for s in range(0, used, 512):
                    z = data[:s] + bytes(512) + data[s + 512 :]
                    if z == data:
                        continue
                    report, _ = recover_image(_with(img, path, z), repair=False)
                    first = s + 512 - len(data[s : s + 512].lstrip(b"\0"))  # the first byte the zeroing changed
                    check(report, kept, known, res, damage_at=slot(path, first))
    publish(DAMAGE, [res])
    assert res.lost == res.corrupted_accepted == res.false_corruption == 0 and res.classes["corruption"] > 0


def test_c6_duplicated_swapped_foreign_and_stale_records_are_refused() -> None:
    res = Result("C6 duplicated/swapped/foreign/stale records", power_loss=False)
    img, acked, known, recs = _base([1, 1, 1, 1])
    other, _, _, other_recs = _base([1])  # another WAL: another uuid
    rng = random.Random(6)
    tail = recs[-4:]
    path = _seg(img, tail[0])
    data = img.files[path]
    span = HEADER_SIZE + padded(tail[0].payload_len)

    def rec_bytes(d: bytes, r: ScannedRecord) -> bytes:
        return d[r.offset : r.offset + HEADER_SIZE + padded(r.payload_len)]

    end = tail[-1].offset + span
    foreign = rec_bytes(other.files[_seg(other, other_recs[-1])], other_recs[-1])
    at_end, at_1, at_0 = (_name(path), end), (_name(path), tail[1].offset), (_name(path), tail[0].offset)
    cases = {
        "dup after tail": data[:end] + rec_bytes(data, tail[-1]) + data[end + span :],
        "dup in middle": data[: tail[1].offset] + rec_bytes(data, tail[0]) + data[tail[1].offset + span :],
        "swap": data[: tail[0].offset]
        + rec_bytes(data, tail[1])
        + rec_bytes(data, tail[0])
        + data[tail[1].offset + span :],
        "foreign after tail": data[:end] + foreign + data[end + len(foreign) :],
        "foreign in middle": data[: tail[1].offset] + foreign + data[tail[1].offset + len(foreign) :],
        "stale old record after tail": data[:end] + rec_bytes(data, tail[0]) + data[end + span :],
    }
    for _ in range(20 if not LONG else 200):
        junk = rng.randbytes(rng.randint(1, 2000))
        cases[f"stale junk {len(cases)}"] = data[:end] + junk + data[end + len(junk) :]
    where = {"dup in middle": at_1, "swap": at_0, "foreign in middle": at_1}  # the rest start at the tail's end
    for name, d in cases.items():
        assert len(d) == len(data), name
        report, _ = recover_image(_with(img, path, d), repair=False)
        check(report, acked, known, res, damage_at=where.get(name, at_end))
        # Junk that looks like an interrupted write may be cut as a torn tail; records out of place never.
        assert report.corruption is not None or name.startswith("stale junk"), f"{name} was not refused"
    publish(DAMAGE, [res])
    assert res.lost == res.corrupted_accepted == res.false_corruption == 0


def _never_retired() -> tuple[CrashImage, dict[int, bytes], set[bytes]]:
    """A synced WAL of several segments that never retired one (so it has no manifest)."""
    fs = SimFs()
    wal = Wal.open(WAL_DIR, CTX, config=WalConfig(segment_size=8192, checkpoint_every=5), fs=fs)
    known = {stress_payload(6, i, 3000) for i in range(8)}
    acked = {wal.data(bytes(16), p): p for p in sorted(known)}
    wal.close()
    return fs.durable_image(), acked, known


def _without(img: CrashImage, *paths: str) -> CrashImage:
    return CrashImage({p: b for p, b in img.files.items() if p not in paths}, img.dirs)


def test_c6_lost_oldest_segments_and_a_lost_or_damaged_manifest_are_corruption() -> None:
    res = Result("C6 oldest segment(s) deleted, manifest deleted/damaged/stale", power_loss=False)
    manifest = f"{WAL_DIR}/MANIFEST"
    retired, r_acked, r_known, _ = _base([1] * 6, 3000)
    never, n_acked, n_known = _never_retired()
    r_segs = sorted(p for p in retired.files if p.endswith(".seg"))
    n_segs = sorted(p for p in never.files if p.endswith(".seg"))
    assert manifest in retired.files and manifest not in never.files and len(r_segs) >= 3 and len(n_segs) >= 3
    good = retired.files[manifest]
    old = Manifest.decode(good)
    assert isinstance(old, Manifest)
    stale = dataclasses.replace(old, segment_id=old.segment_id - 1).encode()  # an older manifest: names a gone file
    # Each case with where its damage must be reported: the oldest segment left (it does not start the log), the
    # first segment the manifest names (missing), or the manifest itself.
    first, damaged_manifest = (_name(r_segs[0]), 0), ("MANIFEST", 0)
    cases: list[tuple[CrashImage, dict[int, bytes], set[bytes], tuple[str, int]]] = [
        (_without(never, n_segs[0]), n_acked, n_known, (_name(n_segs[1]), 0)),
        (_without(never, *n_segs[:2]), n_acked, n_known, (_name(n_segs[2]), 0)),
        (_without(retired, r_segs[0]), r_acked, r_known, first),
        (_without(retired, *r_segs[:2]), r_acked, r_known, first),
        (_without(retired, *r_segs), r_acked, r_known, first),
        (_without(retired, manifest), r_acked, r_known, first),
        (_without(retired, manifest, r_segs[0]), r_acked, r_known, (_name(r_segs[1]), 0)),
        (_with(retired, manifest, stale), r_acked, r_known, (segment_name(old.segment_id - 1), 0)),
        *((_with(retired, manifest, good[:n]), r_acked, r_known, damaged_manifest) for n in range(len(good))),
        *(
            (_with(retired, manifest, _flip(good, bit)), r_acked, r_known, damaged_manifest)
            for bit in range(len(good) * 8)
        ),
    ]
    for img, acked, known, at in cases:
        report, _ = recover_image(img, repair=False)
        check(report, acked, known, res, damage_at=at)
    publish(DAMAGE, [res])
    assert res.lost == res.corrupted_accepted == res.false_corruption == 0
    assert res.classes["corruption"] == res.runs, "a lost start of the log must be reported, never skipped"
