"""The real OS under the WAL: reading a file past the page cache (O_DIRECT, or POSIX_FADV_DONTNEED where refused)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from esper.compiler.fsio import DIRECT, DONTNEED, OsFs
from esper.compiler.wal.log import Wal, recover

SIZES = [0, 1, 255, 4095, 4096, 4097, (16 << 20) + 4096 + 3]  # the last spans two read chunks, then a short read


def _files(tmp_path: Path) -> dict[int, Path]:
    out = {}
    for n in SIZES:
        p = tmp_path / f"f{n}"
        p.write_bytes(os.urandom(n))
        out[n] = p
    return out


def test_read_past_cache_returns_the_whole_file(tmp_path: Path) -> None:
    for n, p in _files(tmp_path).items():
        with OsFs().read_past_cache(str(p)) as (buf, how):
            assert len(buf) == n and bytes(buf) == p.read_bytes()
            assert how in (DIRECT, DONTNEED)


def test_where_o_direct_is_refused_it_drops_the_cached_pages_and_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open, real_fadvise = os.open, os.posix_fadvise
    advice: list[int] = []

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused", path)
        return real_open(path, flags, *args)

    def fadvise(fd: int, offset: int, length: int, advice_: int) -> None:
        advice.append(advice_)
        real_fadvise(fd, offset, length, advice_)

    files = _files(tmp_path)
    monkeypatch.setattr(os, "open", no_direct)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    for n, p in files.items():
        with OsFs().read_past_cache(str(p)) as (buf, how):
            assert how == DONTNEED and bytes(buf) == p.read_bytes() and len(buf) == n
    assert advice == [os.POSIX_FADV_DONTNEED] * len(SIZES)
    with pytest.raises(FileNotFoundError):  # other errors are not a reason to fall back
        OsFs().read_past_cache(str(tmp_path / "missing")).__enter__()


def test_recovery_reads_the_last_segment_past_the_cache_and_says_how(tmp_path: Path) -> None:
    path = str(tmp_path / "wal")
    with Wal.open(path, {"compiler": "0.1"}) as wal:
        lsn = wal.data(bytes(16), b"x" * 5000)
    report = recover(path, keep_payloads=True)
    assert report.tail_read in (DIRECT, DONTNEED) and report.to_json()["tail_read"] == report.tail_read
    assert [r.payload for r in report.records if r.lsn == lsn] == [b"x" * 5000]
