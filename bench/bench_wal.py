"""Tezzeret's WAL: durable append throughput and latency against a bare write + fdatasync loop, and recovery speed.

Every ratio is taken against a baseline run side by side (same bytes, same disk, same run): the bare loop is the
floor this disk allows. Spec: recover a 1 GiB log in under 12 s (aim: under 2 s). Figures only, never asserted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

from common import Row, print_table, ratio_row

from esper.compiler.wal import Entry, RecordType, Wal, WalConfig, recover

CTX = {"compiler": "bench", "torch": "n/a", "flags": "", "device": "cpu"}
PAYLOAD = os.urandom(200)  # a 200-byte record is 512 bytes on disk (256 header + 256 padded payload)
RECORD_BYTES = 512
SECONDS = 0.8


def _bare_loop(path: str, batch: int, seconds: float) -> float:
    """Records/s of os.write of `batch` records' bytes + one os.fdatasync, in a loop."""
    buf = os.urandom(RECORD_BYTES * batch)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            os.write(fd, buf)
            os.fdatasync(fd)
            n += batch
    finally:
        os.close(fd)
        os.unlink(path)
    return n / (time.perf_counter() - t0)


def _wal_throughput(path: str, batch: int, threads: int, seconds: float) -> float:
    wal = Wal.open(path, CTX, config=WalConfig(segment_size=256 << 20))
    entries = [Entry(RecordType.DATA, bytes(16), PAYLOAD)] * batch
    counts = [0] * threads
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
    wal.close()
    shutil.rmtree(path)
    return rate


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _latency(tmp: str, n: int = 2000) -> tuple[list[float], list[float]]:
    wal = Wal.open(os.path.join(tmp, "lat"), CTX, config=WalConfig(segment_size=64 << 20))
    ours = []
    for _ in range(n):
        t = time.perf_counter()
        wal.append(RecordType.DATA, bytes(16), PAYLOAD)
        ours.append((time.perf_counter() - t) * 1e6)
    wal.close()
    fd = os.open(os.path.join(tmp, "bare"), os.O_CREAT | os.O_WRONLY, 0o644)
    buf = os.urandom(RECORD_BYTES)
    bare = []
    for _ in range(n):
        t = time.perf_counter()
        os.write(fd, buf)
        os.fdatasync(fd)
        bare.append((time.perf_counter() - t) * 1e6)
    os.close(fd)
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


def run() -> list[Row]:
    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="bench-wal-", dir=os.environ.get("ESPER_BENCH_DIR"))
    try:
        for threads in (1, 8):
            for batch in (1, 8, 64, 256):
                bare = _bare_loop(os.path.join(tmp, "bare.log"), batch, SECONDS)
                ours = _wal_throughput(os.path.join(tmp, "wal"), batch, threads, SECONDS)
                rows.append(
                    ratio_row(
                        f"WAL durable append, batch {batch}, {threads} thread(s)",
                        ours,
                        "rec/s",
                        f"bare write+fdatasync, {batch}×512 B",
                        bare,
                    )
                )
        ours_lat, bare_lat = _latency(tmp)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                ratio_row(
                    f"WAL single-record durable append {name}",
                    _pct(ours_lat, q),
                    "µs",
                    f"bare write+fdatasync {name}",
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    print_table(run(), "WAL (Tezzeret)")
