"""A LazyFS-style FUSE filesystem for the WAL crash matrix (test tooling, not product code).

Run as its own process: `python lazyfs.py BACKING MOUNT [--seed N] [--tear P]`. It loads BACKING as the durable
state, mounts MOUNT, prints `ready` and then reads commands from stdin:

- `crash`: simulated power cut. Everything not made durable is dropped; BACKING is rewritten to hold exactly the
  durable image (the post-crash disk), `crashed` is printed, and the process exits without unmounting (the caller
  runs `fusermount3 -u`). With `--tear P`, each 512-byte sector of a file's unsynced writes independently reaches
  the disk with probability P (torn, partial, reordered writes) instead of all being dropped.
- `sync`: a clean shutdown's sync of everything (all pending state becomes durable), prints `synced`.
- EOF on stdin: same as `crash` (the test process died).

The model (the page cache and the directory entries of a journaling fs, the strict POSIX reading):
- Every file has a volatile content (what reads see) and a durable content. pwrite, truncate and fallocate change
  the volatile one only. fsync/fdatasync of a file copies its volatile content to its durable content (its size
  included: fdatasync persists a size change, as Linux does for one needed to read the data).
- Directory entries likewise: create, mkdir, rename, unlink and rmdir change the volatile namespace only. fsyncdir of
  a directory makes its current entries (names -> inodes) durable. A file's fsync does NOT persist its own
  directory entry (ext4 does in practice; we model the stricter POSIX contract, so a missing directory fsync after
  a create or rename loses the file, which is what the WAL's C9 rule is about).
- After the cut, the disk image is the durable tree from the root: a durable entry names the inode's durable
  content (empty if it was never synced). Durable data of an inode without a durable name is lost (an orphan).
- Not modelled: metadata other than size (modes and times are not persisted), hard links, xattrs, mmap writes
  (shared writable mmaps see only the volatile content), a crash in the middle of one syscall (each operation is
  atomic under one lock), the ordering of metadata among themselves within one fsyncdir.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import mfusepy as fuse

SECTOR = 512
_LOCK = threading.RLock()


class Inode:
    def __init__(self, is_dir: bool, data: bytes = b"") -> None:
        self.is_dir = is_dir
        self.entries: dict[str, Inode] = {}  # volatile namespace (directories)
        self.durable_entries: dict[str, Inode] = {}  # what fsyncdir made durable
        self.data = bytearray(data)  # volatile content (files)
        self.disk = bytearray(data)  # durable content
        self.dirty: list[tuple[int, int]] = []  # unsynced write ranges, for --tear
        self.mtime = time.time()

    def sync(self) -> None:
        self.disk = bytearray(self.data)
        self.dirty.clear()


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return run


class LazyFs(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str, tear: float, seed: int) -> None:
        self.backing = backing
        self.tear = tear
        self.rng = random.Random(seed)
        self.root = self._load(backing)
        self.fhs: dict[int, Inode] = {}
        self.next_fh = 1
        self.syncs = 0

    # -- durable image -----------------------------------------------------------------------------------------------
    def _load(self, path: str) -> Inode:
        node = Inode(True)
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isdir(full):
                child = self._load(full)
            else:
                with open(full, "rb") as f:
                    child = Inode(False, f.read())
            node.entries[name] = node.durable_entries[name] = child
        return node

    def _write_image(self, node: Inode, path: str) -> None:
        for name, child in node.durable_entries.items():
            full = os.path.join(path, name)
            if child.is_dir:
                os.mkdir(full)
                self._write_image(child, full)
            else:
                with open(full, "wb") as f:
                    f.write(child.disk)

    def _tear(self, node: Inode, seen: set[int]) -> None:
        """Let a random subset of unsynced sectors reach the disk (files reachable through durable entries only)."""
        for child in node.durable_entries.values():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if child.is_dir:
                self._tear(child, seen)
                continue
            for off, length in child.dirty:
                for s in range(off // SECTOR * SECTOR, off + length, SECTOR):
                    if self.rng.random() >= self.tear:
                        continue
                    end = min(s + SECTOR, len(child.data))
                    if end <= s:
                        continue
                    if len(child.disk) < end:
                        child.disk.extend(bytes(end - len(child.disk)))
                    child.disk[s:end] = child.data[s:end]

    def power_cut(self) -> None:
        with _LOCK:
            if self.tear > 0:
                self._tear(self.root, set())
            for name in os.listdir(self.backing):
                full = os.path.join(self.backing, name)
                shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.unlink(full)
            self._write_image(self.root, self.backing)
            os.sync()

    def sync_all(self, node: Inode | None = None) -> None:
        with _LOCK:
            node = node or self.root
            node.durable_entries = dict(node.entries)
            for child in node.entries.values():
                child.sync() if not child.is_dir else self.sync_all(child)

    # -- namespace helpers -------------------------------------------------------------------------------------------
    def _lookup(self, path: str) -> Inode:
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir or part not in node.entries:
                raise fuse.FuseOSError(errno.ENOENT if node.is_dir else errno.ENOTDIR)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, name = os.path.split(path.rstrip("/"))
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Inode:
        if fh and fh in self.fhs:
            return self.fhs[fh]
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _new_fh(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.fhs[fh] = node
        return fh

    # -- FUSE operations ---------------------------------------------------------------------------------------------
    @_locked
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        ns = int(node.mtime * 1e9)
        mode = (stat.S_IFDIR | 0o755) if node.is_dir else (stat.S_IFREG | 0o644)
        size = 4096 if node.is_dir else len(node.data)
        return {
            "st_mode": mode,
            "st_nlink": 2 if node.is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": ns,
            "st_mtime": ns,
            "st_ctime": ns,
        }

    @_locked
    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._lookup(path)
        return [".", "..", *node.entries]

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        parent.entries[name] = Inode(True)
        parent.mtime = time.time()
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = self._lookup(path)
        if not node.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        if node.entries:
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    @_locked
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        node = Inode(False)
        parent.entries[name] = node
        parent.mtime = time.time()
        return self._new_fh(node)

    @_locked
    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if flags & os.O_TRUNC:
            self._resize(node, 0)
        return self._new_fh(node)

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        self.fhs.pop(fh, None)
        return 0

    @_locked
    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() is not a sync

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._node(path, fh).data[offset : offset + size])

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self._node(path, fh)
        if len(node.data) < offset:
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(data)] = data
        node.dirty.append((offset, len(data)))
        node.mtime = time.time()
        return len(data)

    def _resize(self, node: Inode, length: int) -> None:
        old = len(node.data)
        if length < old:
            del node.data[length:]
        else:
            node.data.extend(bytes(length - old))
            node.dirty.append((old, length - old))
        node.mtime = time.time()

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._resize(self._node(path, fh), length)
        return 0

    @_locked
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        node = self._node(path, fh)
        if offset + size > len(node.data):
            self._resize(node, offset + size)
        return 0

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._node(path, fh).sync()
        self.syncs += 1
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._lookup(path or "/")
        node.durable_entries = dict(node.entries)
        self.syncs += 1
        return 0

    @_locked
    def rename(self, old: str, new: str) -> int:
        op, on = self._parent(old)
        np_, nn = self._parent(new)
        if on not in op.entries:
            raise fuse.FuseOSError(errno.ENOENT)
        node = op.entries.pop(on)
        np_.entries[nn] = node
        op.mtime = np_.mtime = time.time()
        return 0

    @_locked
    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        if name not in parent.entries or parent.entries[name].is_dir:
            raise fuse.FuseOSError(errno.ENOENT if name not in parent.entries else errno.EISDIR)
        del parent.entries[name]
        parent.mtime = time.time()
        return 0

    @_locked
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        return 0

    @_locked
    def chmod(self, path: str, mode: int) -> int:
        return 0

    @_locked
    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    @_locked
    def access(self, path: str, amode: int) -> int:
        self._lookup(path)
        return 0

    @_locked
    def opendir(self, path: str) -> int:
        if not self._lookup(path).is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return 0

    @_locked
    def releasedir(self, path: str | None, fh: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 24, "f_bfree": 1 << 23, "f_bavail": 1 << 23}


def _control(fs: LazyFs) -> None:
    """Commands on stdin; the power cut exits the process at once (no unmount, no flush: the caller unmounts)."""
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "sync":
            fs.sync_all()
            print("synced", flush=True)
        elif cmd == "crash":
            break
    fs.power_cut()
    print("crashed", flush=True)
    os._exit(0)


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backing")
    ap.add_argument("mount")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tear", type=float, default=0.0, help="probability that an unsynced sector persists at the cut")
    a = ap.parse_args(argv)
    a.backing, a.mount = os.path.abspath(a.backing), os.path.abspath(a.mount)  # libfuse may chdir("/")
    fs = LazyFs(a.backing, a.tear, a.seed)

    def announce() -> None:  # `ready` once the mount answers (the kernel sends an init before any request)
        while not os.path.ismount(a.mount):
            time.sleep(0.01)
        print("ready", flush=True)
        _control(fs)

    threading.Thread(target=announce, daemon=True).start()
    # No writeback cache: every write(2) reaches this process at once (the kernel's cache above ours only serves
    # reads, mmap included). hard_remove: an unlinked open file is not renamed to .fuse_hidden*.
    fuse.FUSE(fs, a.mount, foreground=True, nothreads=True, hard_remove=True, fsname="lazyfs")
    os._exit(1)  # unmounted from outside before a cut: not a clean test


if __name__ == "__main__":
    main(sys.argv[1:])
