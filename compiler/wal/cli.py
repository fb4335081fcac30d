"""`esper wal ...`: inspect, verify and stress a Tezzeret write-ahead log.

Kept light to import (no torch, no Kafka): `esper wal stress` is started and killed thousands of times by the crash
matrix, so start-up cost is test time.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "stress_payload", "stress_payload_ok"]

app = typer.Typer(help="Tezzeret's write-ahead log: inspect, verify, stress.", no_args_is_help=True)

STRESS_CONTEXT = {"compiler": "esper-wal-stress", "torch": "n/a", "flags": "", "device": "cpu"}


def stress_payload(thread: int, seq: int, size: int) -> bytes:
    """A self-checking payload: (thread, seq, size) + a SHA-256-derived filler, so a recovered record proves itself."""
    head = struct.pack("<IQI", thread, seq, size)
    seed = hashlib.sha256(head).digest()
    filler = (seed * (size // 32 + 1))[: max(0, size - len(head) - 32)]
    return head + filler + hashlib.sha256(head + filler).digest()


def stress_payload_ok(payload: bytes) -> bool:
    if len(payload) < 48:
        return False
    thread, seq, size = struct.unpack_from("<IQI", payload)
    return payload == stress_payload(thread, seq, size)


# inspect and verify read an existing WAL: a missing directory is a usage error (exit 2), never an empty, sound log.
ExistingWal = Annotated[Path, typer.Argument(help="The WAL directory.", exists=True, file_okay=False)]


@app.command("inspect")
def inspect(
    path: ExistingWal,
    records: Annotated[bool, typer.Option("--records/--no-records", help="List every record.")] = True,
) -> None:
    """Print the WAL as JSON (read-only): records, LSN range, checkpoints, Merkle root, torn tail or corruption."""
    from esper.compiler.wal.log import recover

    report = recover(str(path), repair=False, verify_payload_sha=True)
    out = report.to_json(with_records=records)
    sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")


@app.command("verify")
def verify(path: ExistingWal) -> None:
    """Check every record (CRC32C, chain, Merkle checkpoints, payload SHA-256) read-only; exit 1 on corruption.

    A torn tail is not corruption (recovery will cut it): it is reported and exits 0.
    """
    from esper.compiler.wal.log import recover

    report = recover(str(path), repair=False, verify_payload_sha=True)
    c = report.corruption
    summary = {
        "ok": c is None,
        "records": len(report.records),
        "lsn_range": [report.first_lsn, report.last_lsn],
        "merkle_root": report.merkle_root(),
        "torn_tail": report.torn_tail.__dict__ if report.torn_tail else None,
        "corruption": c.__dict__ if c else None,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if c is not None:
        raise typer.Exit(1)


@app.command("stress")
def stress(
    path: Annotated[str, typer.Argument(help="The WAL directory (created or recovered).")],
    records: Annotated[int, typer.Option("--records", help="How many records to append.")] = 10_000,
    batch: Annotated[int, typer.Option("--batch", help="Records per append_batch call.")] = 1,
    threads: Annotated[int, typer.Option("--threads", help="Concurrent appending threads.")] = 1,
    payload_size: Annotated[int, typer.Option("--payload-size", help="Bytes per record (min 48).")] = 200,
    segment_size: Annotated[int, typer.Option("--segment-size", help="Segment bytes (multiple of 4096).")] = 1 << 20,
) -> None:
    """Append records and print `acked <lsn>` per record, flushed, only after that record is durable.

    Safe to `kill -9` at any moment: every printed LSN must survive recovery.
    """
    from esper.compiler.wal.log import Entry, RecordType, Wal, WalConfig

    wal = Wal.open(path, STRESS_CONTEXT, config=WalConfig(segment_size=segment_size, checkpoint_every=64))
    job = os.urandom(16)
    out_lock = threading.Lock()
    counter = iter(range(10**18))
    counter_lock = threading.Lock()
    size = max(48, payload_size)
    reader_gone = threading.Event()  # stdout closed (e.g. `| head`): stop appending, quietly

    def worker(tid: int, n: int) -> None:
        done = 0
        while done < n and not reader_gone.is_set():
            k = min(batch, n - done)
            with counter_lock:
                seqs = [next(counter) for _ in range(k)]
            lsns = wal.append_batch([Entry(RecordType.DATA, job, stress_payload(tid, s, size)) for s in seqs])
            line = "".join(f"acked {lsn}\n" for lsn in lsns).encode()
            with out_lock:  # one write(2) per batch, after the batch's fdatasync returned
                view = memoryview(line)
                try:
                    while view:
                        view = view[os.write(1, view) :]
                except BrokenPipeError:
                    reader_gone.set()
                    return
            done += k

    per = [records // threads + (1 if i < records % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=worker, args=(i, per[i])) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    wal.close()
