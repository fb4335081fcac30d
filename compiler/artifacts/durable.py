"""Durable file writes over esper.compiler.fsio's FileSystem (the WAL's interface: OsFs in production).

fsio has the syscalls but no whole-file helper (the WAL writes records into preallocated segments), so the two
patterns artifacts and keys need live here: a new file written whole and synced, and a file published under its
final name by a rename and a directory sync.
"""

from __future__ import annotations

import errno
import os
import uuid

from esper.compiler.fsio import FileSystem

__all__ = ["publish_file", "write_new_file"]


def write_new_file(fs: FileSystem, path: str, data: bytes, mode: int | None = None) -> None:
    """Create `path` (it must not exist), write `data` whole and fsync it. `mode` is applied before any byte is
    written (a private key is never readable by others, not even empty); it needs a real descriptor (OsFs)."""
    fd = fs.open_create(path)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        done = 0
        while done < len(data):
            n = fs.pwrite(fd, data[done:], done)
            if n <= 0:
                raise OSError(errno.EIO, f"write returned {n}", path)
            done += n
        fs.fsync(fd)
    finally:
        fs.close(fd)


def publish_file(fs: FileSystem, directory: str, name: str, data: bytes, mode: int | None = None) -> None:
    """Atomically make `directory/name` hold `data`, durably: tmp, fsync, rename, fsync the directory. A crash
    leaves the old content or the new, and at worst a stray `.tmp-*` file."""
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
    write_new_file(fs, tmp, data, mode)
    try:
        fs.rename(tmp, os.path.join(directory, name))
    except OSError:
        fs.unlink(tmp)
        raise
    fs.fsync_dir(directory)
