"""The simulated disk under the WAL's tests: what a failed sync leaves in the page cache and on the disk (fsyncgate)."""

from __future__ import annotations

import random

import pytest

from tests.wal_simfs import PAGE, FaultFs

F = "/d/f"


def _failed_sync(data: bytes, offset: int) -> FaultFs:
    """A file of two synced pages of b"a", then `data` written at `offset` and a failed fdatasync."""
    fs = FaultFs("eio_sync", at=3)
    fs.mkdir("/d")
    fd = fs.open_create(F)
    fs.pwrite(fd, b"a" * 2 * PAGE, 0)
    fs.fdatasync(fd)
    fs.fsync_dir("/d")
    fs.pwrite(fd, data, offset)
    with pytest.raises(OSError):
        fs.fdatasync(fd)
    fs.close(fd)
    return fs


def _cached(fs: FaultFs) -> bytes:
    with fs.mapped(F) as b:
        return bytes(b)


def _disk(fs: FaultFs) -> bytes:
    with fs.read_past_cache(F) as (b, _):
        return bytes(b)


def test_a_failed_sync_leaves_its_writes_readable_in_the_cache_and_off_the_disk() -> None:
    fs = _failed_sync(b"b" * 100, PAGE + 10)
    written = b"a" * (PAGE + 10) + b"b" * 100 + b"a" * (PAGE - 110)
    assert _cached(fs) == written
    assert _disk(fs) == b"a" * 2 * PAGE
    fd = fs.open_rw(F)
    fs.fdatasync(fd)  # succeeds (the error was reported once) and writes nothing: the pages are clean
    assert fs.durable_image().files[F] == _disk(fs) == b"a" * 2 * PAGE
    assert all(img.files[F] == b"a" * 2 * PAGE for img in fs.crash_images(random.Random(0)))
    assert _cached(fs) == written


def test_a_failed_sync_past_the_end_leaves_zeros_on_the_disk() -> None:
    fs = _failed_sync(b"b" * 300, 2 * PAGE)
    assert _cached(fs).endswith(b"b" * 300)
    assert _disk(fs) == b"a" * 2 * PAGE + bytes(300)  # the size is metadata: still dirty, persisted by the next sync


def test_a_page_written_again_reaches_the_disk_whole_and_a_cut_drops_lost_pages() -> None:
    fs = _failed_sync(b"b" * 2 * PAGE, 0)
    fd = fs.open_rw(F)
    fs.pwrite(fd, b"c", 5)  # dirties page 0 again: its lost bytes go to the disk with it
    fs.ftruncate(fd, PAGE + 7)  # page 1 is split by the cut: zeroed past it and dirtied
    fs.fdatasync(fd)
    assert _disk(fs) == _cached(fs) == b"b" * 5 + b"c" + b"b" * (PAGE + 1)
    assert fs.durable_image().files[F] == _cached(fs)
