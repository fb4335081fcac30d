"""Tezzeret's WAL: durable append throughput and latency against a bare write + fdatasync loop, and recovery speed.

Every ratio is taken against a baseline run side by side (same bytes per fdatasync, same disk, same run, rounds
alternating, medians): the bare loop, writing into preallocated files as the WAL does, is the floor this disk allows.
Spec: recover a 1 GiB log in under 12 s (aim: under 2 s). Recovery reads the last segment past the page cache
(fsyncgate): a row prices that against scanning the same segment through the cache. Figures only, never asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time

from common import Row, print_table, ratio_row

from esper.compiler.fsio import OsFs
from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig, recover
from esper.compiler.wal.scan import scan_segment

CTX = {"compiler": "bench", "torch": "n/a", "flags": "", "device": "cpu"}
PAYLOAD = os.urandom(200)  # a 200-byte record is 512 bytes on disk (256 header + 256 padded payload)
RECORD_BYTES = 512
SEGMENT = 256 << 20  # the WAL's segment size here, and the bare loop's preallocated file
SECONDS = 0.25  # one round
ROUNDS = 5  # per cell, alternating WAL and bare loop; the median of each is reported


class _CountingFs(OsFs):
    """The real OS, counting fdatasyncs: how many records the WAL's group commit put behind each."""

    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1  # only the group-commit leader syncs: no race
        super().fdatasync(fd)


class _Preallocated:
    """The bare floor: pwrite + fdatasync in order into files preallocated like WAL segments (a new one when full)."""

    def __init__(self, path: str) -> None:
        self.path, self.files, self.fd, self.off = path, 0, -1, 0
        self._next_file()  # before any timing, as Wal.open creates the WAL's first segment

    def _next_file(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(f"{self.path}.{self.files}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        self.files += 1
        os.posix_fallocate(self.fd, 0, SEGMENT)
        os.fsync(self.fd)  # the allocation made durable up front, as the WAL does for a segment
        dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.off = 0

    def append(self, buf: bytes) -> None:
        if self.off + len(buf) > SEGMENT:
            self._next_file()
        os.pwrite(self.fd, buf, self.off)
        self.off += len(buf)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        for i in range(self.files):
            os.unlink(f"{self.path}.{i}")


def _bare_loop(path: str, batch: int, seconds: float) -> float:
    """Records/s of one pwrite of `batch` records' bytes + one fdatasync, in a loop."""
    buf = os.urandom(RECORD_BYTES * batch)
    log = _Preallocated(path)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            log.append(buf)
            n += batch
        return n / (time.perf_counter() - t0)
    finally:
        log.close()


def _wal_throughput(path: str, batch: int, threads: int, seconds: float) -> tuple[float, float]:
    """Durable records/s of `threads` appenders of `batch`-record requests, and the mean records per fdatasync."""
    fs = _CountingFs()
    wal = Wal.open(path, CTX, config=WalConfig(segment_size=SEGMENT), fs=fs)
    entries = [Entry(RecordType.DATA, bytes(16), PAYLOAD)] * batch
    counts = [0] * threads
    synced_before = fs.syncs
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            wal.append_batch(entries)
            counts[i] += batch

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = sum(counts) / (time.perf_counter() - t0)
    per_sync = sum(counts) / max(1, fs.syncs - synced_before)
    wal.close()
    shutil.rmtree(path)
    return rate, per_sync


def _throughput_row(tmp: str, batch: int, threads: int) -> Row:
    """One cell: WAL against a bare loop syncing as many bytes per fdatasync (medians of alternating rounds).

    With several threads, group commit merges requests: the WAL's records per fdatasync, not `batch`, is the work
    each sync does, so a warm-up round measures it and the bare loop syncs that many records each time.
    """
    _, per_sync = _wal_throughput(os.path.join(tmp, "wal"), batch, threads, SECONDS)
    bare_batch = max(1, round(per_sync))
    ours: list[float] = []
    bare: list[float] = []
    syncs: list[float] = []

    def bare_round() -> None:
        bare.append(_bare_loop(os.path.join(tmp, "bare"), bare_batch, SECONDS))

    def wal_round() -> None:
        rate, per_sync = _wal_throughput(os.path.join(tmp, "wal"), batch, threads, SECONDS)
        ours.append(rate)
        syncs.append(per_sync)

    for k in range(ROUNDS):  # alternating, the order too, so a drift of the disk hits both alike
        for one_round in (bare_round, wal_round) if k % 2 == 0 else (wal_round, bare_round):
            one_round()
    return ratio_row(
        f"WAL durable append, batch {batch}, {threads} thread(s) ({statistics.median(syncs):.1f} rec/fdatasync)",
        statistics.median(ours),
        "rec/s",
        f"bare pwrite+fdatasync, {bare_batch}×512 B per sync",
        statistics.median(bare),
    )


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _latency(tmp: str, n: int = 2000) -> tuple[list[float], list[float]]:
    """Single-record durable append latencies (µs), WAL and bare loop, in alternating rounds."""
    wal = Wal.open(os.path.join(tmp, "lat"), CTX, config=WalConfig(segment_size=SEGMENT))
    log = _Preallocated(os.path.join(tmp, "bare"))
    buf = os.urandom(RECORD_BYTES)
    ours: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(ROUNDS):
            for _ in range(n // ROUNDS):
                t = time.perf_counter()
                wal.append(RecordType.DATA, bytes(16), PAYLOAD)
                ours.append((time.perf_counter() - t) * 1e6)
            for _ in range(n // ROUNDS):
                t = time.perf_counter()
                log.append(buf)
                bare.append((time.perf_counter() - t) * 1e6)
    finally:
        wal.close()
        log.close()
    return ours, bare


def _recovery(tmp: str, size: int = 1 << 30) -> tuple[float, int, int]:
    """Build a `size` log of 4 KiB records, recover it (page cache warm); best of 2."""
    path = os.path.join(tmp, "big")
    payload = os.urandom(4096 - 256)
    wal = Wal.open(path, CTX, config=WalConfig(segment_size=128 << 20))
    for _ in range(size // 4096 // 256):
        wal.append_batch([Entry(RecordType.DATA, bytes(16), payload)] * 256)
    wal.close()
    times, records, scanned = [], 0, 0
    for _ in range(2):
        report = recover(path)
        times.append(report.duration_s)
        records, scanned = len(report.records), report.bytes_scanned
    shutil.rmtree(path)
    return min(times), records, scanned


def _tail_read(tmp: str, size: int = 64 << 20) -> tuple[float, float, str]:
    """A log of one full segment (the default size): read-only recovery, which reads it past the page cache, against
    a scan of it through the cache (mmap, warm), as recovery read it before; best of 3 each. Also how it was read."""
    path = os.path.join(tmp, "tail")
    payload = os.urandom(4096 - 256)
    wal = Wal.open(path, CTX, config=WalConfig(segment_size=size))
    for _ in range(size // 4096 // 256 - 1):  # room for the segment's head
        wal.append_batch([Entry(RecordType.DATA, bytes(16), payload)] * 256)
    wal.close()
    (name,) = os.listdir(path)
    fs = OsFs()
    past, cached, how = [], [], ""
    for _ in range(3):
        report = recover(path, repair=False)
        past.append(report.duration_s)
        how = report.tail_read or ""
        t = time.perf_counter()
        with fs.mapped(os.path.join(path, name)) as buf:
            scan_segment(buf, name, 0, None, is_last=True)
        cached.append(time.perf_counter() - t)
    shutil.rmtree(path)
    return min(past), min(cached), how


def run() -> list[Row]:
    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="bench-wal-", dir=os.environ.get("ESPER_BENCH_DIR"))
    try:
        rows += [_throughput_row(tmp, batch, threads) for threads in (1, 8) for batch in (1, 8, 64, 256)]
        ours_lat, bare_lat = _latency(tmp)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                ratio_row(
                    f"WAL single-record durable append {name}",
                    _pct(ours_lat, q),
                    "µs",
                    f"bare pwrite+fdatasync {name}",
                    _pct(bare_lat, q),
                )
            )
        secs, records, scanned = _recovery(tmp)
        rows += [
            Row("WAL recovery rate (4 KiB records)", records / secs, "rec/s"),
            Row("WAL recovery rate", scanned / secs / 1e9, "GB/s"),
            ratio_row("WAL recover a 1 GiB log", secs, "s", "spec 12 s", 12.0),
            ratio_row("WAL recover a 1 GiB log", secs, "s", "aim 2 s", 2.0),
        ]
        past, cached, how = _tail_read(tmp)
        figure = f"WAL recover a full 64 MiB last segment ({how})"
        rows.append(ratio_row(figure, past, "s", "scan via the page cache", cached))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    print_table(run(), "WAL (Tezzeret)")
