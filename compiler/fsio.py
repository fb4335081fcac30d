"""The small filesystem interface every WAL I/O goes through, and its real implementation.

Tests stand in for the OS here: a power-loss simulator (`wal_simfs.SimFs`) and fault injectors (EIO, ENOSPC, short
writes) implement the same protocol, so the WAL code under test is the code that runs in production.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

__all__ = ["FileSystem", "OsFs", "ReadBuffer"]

# What recovery scans: bytes (simulator) or a read-only mmap (real files). Both slice, find and unpack.
ReadBuffer = bytes | mmap.mmap


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
    def mapped(self, path: str) -> AbstractContextManager[ReadBuffer]: ...


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
