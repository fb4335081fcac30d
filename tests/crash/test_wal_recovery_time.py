"""C12: recovery time of the largest retained log (128 MiB; 1 GiB when ESPER_CRASH_LONG=1). Printed, not asserted."""

from __future__ import annotations

import os
from pathlib import Path

from wal_crash_harness import CTX, LONG, Result, publish

from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig, recover

SIZE = (1 << 30) if LONG else (128 << 20)


def test_c12_recovery_time_of_the_largest_retained_log(tmp_path: Path) -> None:
    path = str(tmp_path / "big")
    payload = os.urandom(4096 - 256)  # records of exactly 4 KiB on disk
    wal = Wal.open(path, CTX, config=WalConfig(segment_size=64 << 20))
    n = SIZE // 4096
    for _ in range(n // 256):
        wal.append_batch([Entry(RecordType.DATA, bytes(16), payload)] * 256)
    wal.close()
    res = Result(f"C12 recover {SIZE >> 20} MiB ({n} records)", power_loss=False)
    for _ in range(3):
        report = recover(path)
        res.runs += 1
        res.times_ms.append(report.duration_s * 1e3)
        res.classes[report.findings[-1].kind] += 1
        res.recovered += sum(1 for r in report.records if r.type == RecordType.DATA)
        res.acked += n // 256 * 256
    publish("C12: recovery time of the largest retained log (page cache warm)", [res])
    assert res.recovered == res.acked and report.corruption is None
