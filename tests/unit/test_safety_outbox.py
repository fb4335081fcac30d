"""The safety-event outbox on a real directory: what is appended stays until acknowledged, across reopen and a cut
record, one process at a time, and a refusing disk keeps events in memory instead of dropping them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from esper.safety.exceptions import OutboxLockedError
from esper.safety.outbox import SafetyOutbox


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"event-{i}".encode() * 3 for i in range(start, start + n)]


def test_appended_events_are_read_back_in_order_until_acknowledged(tmp_path: Path) -> None:
    box = SafetyOutbox(tmp_path)
    seqs = [box.append(p) for p in payloads(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert box.read(0, 10) == list(zip(seqs, payloads(5), strict=True))
    assert [s for s, _ in box.read(2, 2)] == [3, 4]
    box.ack(3)
    assert box.stats().undelivered == 2 and box.acked == 3
    box.close()


def test_a_new_process_finds_what_was_not_acknowledged(tmp_path: Path) -> None:
    box = SafetyOutbox(tmp_path)
    for p in payloads(10):
        box.append(p)
    box.ack(4)
    box.close()
    again = SafetyOutbox(tmp_path)
    stats = again.stats()
    assert stats.recovered == 6 and stats.undelivered == 6
    assert again.read(again.acked, 100) == list(zip(range(5, 11), payloads(6, 4), strict=True))
    assert again.append(b"next") == 11  # numbering goes on
    again.close()


def test_a_cut_last_record_is_removed_and_the_rest_kept(tmp_path: Path) -> None:
    box = SafetyOutbox(tmp_path)
    for p in payloads(3):
        box.append(p)
    box.close()
    (segment,) = tmp_path.glob("seg-*.log")
    os.truncate(segment, segment.stat().st_size - 4)  # a record cut short, as a crash in the middle of it would
    again = SafetyOutbox(tmp_path)
    assert [s for s, _ in again.read(0, 10)] == [1, 2] and again.stats().torn_bytes > 0
    assert again.append(b"after") == 3
    assert again.read(2, 10) == [(3, b"after")]
    again.close()


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    box = SafetyOutbox(tmp_path, segment_bytes=64)
    for p in payloads(20):
        box.append(p)
    before = len(list(tmp_path.glob("seg-*.log")))
    assert before > 3
    box.ack(20)
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # the one still written to
    box.close()
    assert SafetyOutbox(tmp_path).stats().undelivered == 0


def test_one_process_at_a_time(tmp_path: Path) -> None:
    box = SafetyOutbox(tmp_path)
    with pytest.raises(OutboxLockedError):
        SafetyOutbox(tmp_path)
    box.close()
    SafetyOutbox(tmp_path).close()


def test_a_refusing_disk_keeps_events_in_memory_and_writes_them_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = SafetyOutbox(tmp_path)
    box.append(b"first")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    box.append(b"second")
    box.append(b"third")
    assert box.stats().unwritten == 2 and box.stats().write_errors >= 1
    assert box.read(0, 10) == [(1, b"first")]  # only what is on disk is handed out
    monkeypatch.setattr(os, "write", real_write)
    box.sync()
    assert box.read(0, 10) == [(1, b"first"), (2, b"second"), (3, b"third")]
    box.close()
    assert SafetyOutbox(tmp_path).stats().undelivered == 3
