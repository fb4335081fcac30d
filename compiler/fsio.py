"""The small filesystem interface every WAL I/O goes through, and its real implementation.

Tests stand in for the OS here: a power-loss simulator and fault injectors (EIO, ENOSPC, short writes; `SimFs` and
`FaultFs` in tests/wal_simfs.py, kept out of the package) implement the same protocol, so the WAL code under test is
the code that runs in production.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

__all__ = ["DIRECT", "DONTNEED", "FileSystem", "OsFs", "ReadBuffer"]

# What recovery scans: bytes (simulator) or an mmap (real files). Both slice, find and unpack.
ReadBuffer = bytes | mmap.mmap

# How `OsFs.read_past_cache` got past the page cache.
DIRECT = "O_DIRECT"
DONTNEED = "POSIX_FADV_DONTNEED"
_ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the logical block size: a page covers them all
_CHUNK = 16 << 20


class FileSystem(Protocol):
    """Files by path and descriptor; the calls a crash-safe log needs and nothing more."""

    def mkdir(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def open_create(self, path: str) -> int: ...  # O_CREAT | O_EXCL | O_RDWR
    def open_rw(self, path: str) -> int: ...
    def close(self, fd: int) -> None: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def fallocate(self, fd: int, offset: int, length: int) -> None: ...
    def fdatasync(self, fd: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fsync_dir(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def size(self, path: str) -> int: ...
    def mapped(self, path: str) -> AbstractContextManager[ReadBuffer]: ...  # through the page cache
    # What the disk holds, not the page cache (see OsFs), and how it was read.
    def read_past_cache(self, path: str) -> AbstractContextManager[tuple[ReadBuffer, str]]: ...


class OsFs:
    """The real OS."""

    def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open_create(self, path: str) -> int:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)

    def open_rw(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    @contextmanager
    def mapped(self, path: str) -> Iterator[ReadBuffer]:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                yield b""
                return
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                yield mm
            finally:
                mm.close()

    @contextmanager
    def read_past_cache(self, path: str) -> Iterator[tuple[ReadBuffer, str]]:
        """The file as the disk holds it: after a failed writeback Linux marks the pages clean and keeps them, so a
        read through the cache returns bytes the disk never got (fsyncgate).

        O_DIRECT where the filesystem takes it (a direct read writes dirty pages back first, then reads the device).
        Elsewhere (EINVAL: some FUSE filesystems, older tmpfs) POSIX_FADV_DONTNEED first drops the clean pages, those
        a failed writeback left among them, and the reads fetch them again from the disk; dirty pages stay, still to
        be written, and a sync after this read reports their failure. On tmpfs the cache is the file: there is no
        disk to differ from it.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
            how = DIRECT
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            how = DONTNEED
        try:
            if how == DONTNEED:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            if size == 0:
                yield b"", how
                return
            buf = mmap.mmap(-1, -(-size // _ALIGN) * _ALIGN)  # anonymous, so page-aligned
            try:
                done = 0
                with memoryview(buf) as mv:
                    while done < size:
                        n = os.preadv(fd, [mv[done : done + _CHUNK]], done)  # aligned until the short read at EOF
                        if n == 0:
                            break
                        done += n
                if done != size:
                    raise OSError(errno.EIO, f"read {done} of {size} bytes (the file changed size)", path)
                buf.resize(size)
                yield buf, how
            finally:
                buf.close()
        finally:
            os.close(fd)
