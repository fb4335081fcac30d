"""A power-loss simulator and fault injectors that stand in for the OS under the WAL (tests and crash matrix).

`SimFs` keeps, per file, the last synced image and the writes since; per directory, the names as of its last fsync
and the namespace operations since. `crash_images()` returns what a disk could hold after a power cut right now:
prefixes, subsets and reorderings of the unsynced writes, torn at 512-byte sectors, with the unsynced namespace
operations applied as a prefix (ordered metadata journal). Synced data always survives; unsynced data may not.
`process_crash()` is a kill -9 instead: a new SimFs over the same page cache, the unsynced writes still pending, so
a later power cut can still drop what the killed process wrote but never synced.

Reads see the page cache (`mapped`) or the disk (`read_past_cache`, O_DIRECT's view: dirty pages are written back
first, so the two differ only in pages a failed sync left clean but unwritten; see `FaultFs`).

`FaultFs` wraps a `SimFs` and makes call k of a kind fail (EIO from a sync, ENOSPC or a short write from a write;
a short write stops at a 512-byte boundary of the file, as block allocation does).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from esper.compiler.fsio import ReadBuffer

__all__ = ["CrashImage", "FaultFs", "SimCrash", "SimFs"]

SECTOR = 512
PAGE = 4096  # the page cache's unit: a page dirtied again is written back whole


class SimCrash(Exception):
    """Raised by a SimFs told to crash at a given operation index."""


@dataclass(frozen=True)
class CrashImage:
    """What survives a power cut: regular files by path, and the directories."""

    files: dict[str, bytes]
    dirs: frozenset[str]
    how: str = ""

    def key(self) -> bytes:
        h = hashlib.sha256()
        for p in sorted(self.files):
            h.update(p.encode() + b"\0" + hashlib.sha256(self.files[p]).digest())
        h.update("\0".join(sorted(self.dirs)).encode())
        return h.digest()


@dataclass
class _Inode:
    data: bytearray  # what reads return now
    durable: bytes  # as of the last fsync/fdatasync
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)  # ("write", off, data) | ("size", n, b"")
    lost: set[int] = field(default_factory=set)  # pages a failed sync marked clean: in `data`, never on the disk

    def disk_view(self) -> bytes:
        """What a read past the cache returns: the cache (dirty pages are written back first), but the disk's bytes
        (zeros where it has none) in the lost pages."""
        if not self.lost:
            return bytes(self.data)
        out = bytearray(self.data)
        for p in self.lost:
            a, b = p * PAGE, min((p + 1) * PAGE, len(out))
            disk = self.durable[a:b]
            out[a:b] = disk + bytes(b - a - len(disk))
        return bytes(out)


NsOp = tuple[Literal["link", "unlink", "rename", "mkdir"], str, str, int]  # kind, path, path2, inode


class SimFs:
    """In-memory files with power-loss semantics. Every call is logged in `trace` (kind, path or inode)."""

    def __init__(self, image: CrashImage | None = None, on_op: Callable[[SimFs, str], None] | None = None) -> None:
        self._lock = threading.RLock()
        self.inodes: dict[int, _Inode] = {}
        self.names: dict[str, int] = {}  # volatile namespace
        self.durable_names: dict[str, int] = {}
        self.dirs: set[str] = set()
        self.durable_dirs: set[str] = set()
        self.ns_pending: list[NsOp] = []
        self.fds: dict[int, int] = {}
        self.trace: list[tuple[str, str]] = []
        self.on_op = on_op
        self._next_ino = itertools.count(1)
        self._next_fd = itertools.count(100)
        if image is not None:
            self.dirs = set(image.dirs)
            self.durable_dirs = set(image.dirs)
            for p, b in image.files.items():
                ino = next(self._next_ino)
                self.inodes[ino] = _Inode(bytearray(b), bytes(b))
                self.names[p] = self.durable_names[p] = ino

    # ------------------------------------------------------------ bookkeeping

    def _op(self, kind: str, what: str) -> None:
        if self.on_op is not None:
            self.on_op(self, kind)  # may raise SimCrash: the op never happens
        self.trace.append((kind, what))

    def _inode(self, fd: int) -> _Inode:
        try:
            return self.inodes[self.fds[fd]]
        except KeyError:
            raise OSError(errno.EBADF, "bad file descriptor") from None

    # ------------------------------------------------------------ FileSystem protocol

    def mkdir(self, path: str) -> None:
        with self._lock:
            self._op("mkdir", path)
            p = os.path.normpath(path)
            parts = p.split(os.sep)
            for i in range(2, len(parts) + 1):
                d = os.sep.join(parts[:i])
                if d and d not in self.dirs:
                    self.dirs.add(d)
                    self.ns_pending.append(("mkdir", d, "", 0))

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            d = os.path.normpath(path)
            return sorted(os.path.basename(p) for p in self.names if os.path.dirname(p) == d)

    def exists(self, path: str) -> bool:
        with self._lock:
            p = os.path.normpath(path)
            return p in self.names or p in self.dirs

    def open_create(self, path: str) -> int:
        with self._lock:
            self._op("create", path)
            p = os.path.normpath(path)
            if p in self.names:
                raise OSError(errno.EEXIST, "exists", path)
            ino = next(self._next_ino)
            self.inodes[ino] = _Inode(bytearray(), b"")
            self.names[p] = ino
            self.ns_pending.append(("link", p, "", ino))
            fd = next(self._next_fd)
            self.fds[fd] = ino
            return fd

    def open_rw(self, path: str) -> int:
        with self._lock:
            p = os.path.normpath(path)
            if p not in self.names:
                raise OSError(errno.ENOENT, "no such file", path)
            fd = next(self._next_fd)
            self.fds[fd] = self.names[p]
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self.fds.pop(fd, None)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        with self._lock:
            self._op("pwrite", f"{self.fds.get(fd)}@{offset}+{len(data)}")
            ino = self._inode(fd)
            end = offset + len(data)
            if end > len(ino.data):
                ino.data.extend(bytes(end - len(ino.data)))
            ino.data[offset:end] = data
            ino.pending.append(("write", offset, bytes(data)))
            ino.lost.difference_update(range(offset // PAGE, -(-end // PAGE)))  # dirty again: written back whole
            return len(data)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            self._op("fallocate", f"{self.fds.get(fd)}")
            ino = self._inode(fd)
            end = offset + length
            if end > len(ino.data):
                ino.data.extend(bytes(end - len(ino.data)))
                ino.pending.append(("size", end, b""))

    def _sync(self, fd: int, kind: str) -> None:
        with self._lock:
            self._op(kind, f"{self.fds.get(fd)}")
            ino = self._inode(fd)
            ino.durable = ino.disk_view()  # lost pages are clean: a sync does not write them
            ino.pending.clear()

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync")

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync")

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            self._op("ftruncate", f"{self.fds.get(fd)}->{length}")
            ino = self._inode(fd)
            if length < len(ino.data):
                del ino.data[length:]
            else:
                ino.data.extend(bytes(length - len(ino.data)))
            ino.pending.append(("size", length, b""))
            # the pages past the cut are gone, the one it splits is zeroed past it and dirtied: none is lost any more
            ino.lost = {p for p in ino.lost if p < length // PAGE}

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._op("fsync_dir", path)
            d = os.path.normpath(path)
            keep: list[NsOp] = []
            for op in self.ns_pending:
                if os.path.dirname(op[1]) == d or (op[0] == "rename" and os.path.dirname(op[2]) == d):
                    self._apply_ns(op, self.durable_names, self.durable_dirs)
                else:
                    keep.append(op)
            self.ns_pending = keep

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._op("rename", f"{src}->{dst}")
            s, d = os.path.normpath(src), os.path.normpath(dst)
            ino = self.names.pop(s)
            self.names[d] = ino
            self.ns_pending.append(("rename", s, d, ino))

    def unlink(self, path: str) -> None:
        with self._lock:
            self._op("unlink", path)
            p = os.path.normpath(path)
            self.names.pop(p)
            self.ns_pending.append(("unlink", p, "", 0))

    def size(self, path: str) -> int:
        with self._lock:
            return len(self.inodes[self.names[os.path.normpath(path)]].data)

    @contextmanager
    def mapped(self, path: str) -> Iterator[ReadBuffer]:
        with self._lock:
            b = bytes(self.inodes[self.names[os.path.normpath(path)]].data)
        yield b

    @contextmanager
    def read_past_cache(self, path: str) -> Iterator[tuple[ReadBuffer, str]]:
        with self._lock:
            b = self.inodes[self.names[os.path.normpath(path)]].disk_view()
        yield b, "simulated disk"

    # ------------------------------------------------------------ images

    @staticmethod
    def _apply_ns(op: NsOp, names: dict[str, int], dirs: set[str]) -> None:
        kind, p, p2, ino = op
        if kind == "mkdir":
            dirs.add(p)
        elif kind == "link":
            names[p] = ino
        elif kind == "unlink":
            names.pop(p, None)
        elif kind == "rename":
            if p in names:
                names[p2] = names.pop(p)
            else:  # the source's link was not durable yet: the rename brings the inode under the new name
                names[p2] = ino

    def process_crash(self, on_op: Callable[[SimFs, str], None] | None = None) -> SimFs:
        """A kill -9 now: the same files with their unsynced writes and namespace operations still pending (the page
        cache survives the process, not a power cut), and no open descriptors. The next process runs on the copy."""
        with self._lock:
            fs = SimFs(on_op=on_op)
            fs.inodes = {
                i: _Inode(bytearray(n.data), n.durable, list(n.pending), set(n.lost)) for i, n in self.inodes.items()
            }
            fs.names, fs.durable_names = dict(self.names), dict(self.durable_names)
            fs.dirs, fs.durable_dirs = set(self.dirs), set(self.durable_dirs)
            fs.ns_pending = list(self.ns_pending)
            fs._next_ino = itertools.count(max(self.inodes, default=0) + 1)
            return fs

    def volatile_image(self) -> CrashImage:
        """What a process crash (kill -9) leaves: everything written. A SimFs started from an image treats it all as
        synced; `process_crash` keeps the unsynced part pending."""
        with self._lock:
            return CrashImage(
                {p: bytes(self.inodes[i].data) for p, i in self.names.items()}, frozenset(self.dirs), "volatile"
            )

    def durable_image(self) -> CrashImage:
        """Only what was synced (files and directory entries)."""
        with self._lock:
            return CrashImage(
                {p: self.inodes[i].durable for p, i in self.durable_names.items()},
                frozenset(self.durable_dirs),
                "durable",
            )

    def crash_images(self, rng: random.Random, samples: int = 8, exhaustive_pieces: int = 6) -> list[CrashImage]:
        """Disk states a power cut could leave now (deduplicated). Always includes the all-synced-only image."""
        with self._lock:
            ns_states: list[tuple[dict[str, int], set[str], str]] = []
            names, dirs = dict(self.durable_names), set(self.durable_dirs)
            ns_states.append((dict(names), set(dirs), "ns+0"))
            for k, op in enumerate(self.ns_pending, 1):
                self._apply_ns(op, names, dirs)
                ns_states.append((dict(names), set(dirs), f"ns+{k}"))
            # Unsynced content: pieces of writes cut at sector boundaries, plus size changes, in issue order.
            pieces: list[tuple[int, str, int, bytes]] = []  # (inode, kind, offset/size, data)
            for ino_id, ino in self.inodes.items():
                for kind, off, data in ino.pending:
                    if kind == "size":
                        pieces.append((ino_id, "size", off, b""))
                        continue
                    pos = off
                    while pos < off + len(data):
                        nxt = min(off + len(data), (pos // SECTOR + 1) * SECTOR)
                        pieces.append((ino_id, "write", pos, data[pos - off : nxt - off]))
                        pos = nxt
            choices: list[tuple[list[int], str]] = []
            n = len(pieces)
            choices += [(list(range(k)), f"prefix {k}/{n}") for k in range(n + 1)]
            choices += [([j], f"only piece {j}") for j in range(n)]
            choices += [([i for i in range(n) if i != j], f"all but piece {j}") for j in range(n)]
            if n <= exhaustive_pieces:
                for mask in range(1 << n):
                    choices.append(([i for i in range(n) if mask >> i & 1], f"subset {mask:b}"))
            for s in range(samples):
                sub = [i for i in range(n) if rng.random() < 0.5]
                rng.shuffle(sub)  # reordering: overlapping pieces land in a different order
                choices.append((sub, f"random {s}"))
            out: dict[bytes, CrashImage] = {}
            for names_k, dirs_k, ns_how in ns_states:
                # Every namespace prefix with the extreme content states; the full namespace with every choice.
                use = choices if ns_how == ns_states[-1][2] else [choices[0], choices[n]]
                for chosen, how in use:
                    img = self._image(names_k, dirs_k, pieces, chosen, f"{ns_how}, {how}")
                    out.setdefault(img.key(), img)
            return list(out.values())

    def _image(
        self,
        names: dict[str, int],
        dirs: set[str],
        pieces: list[tuple[int, str, int, bytes]],
        chosen: list[int],
        how: str,
    ) -> CrashImage:
        files = {i: bytearray(self.inodes[i].durable) for i in set(names.values()) if i in self.inodes}
        for j in chosen:
            ino, kind, off, data = pieces[j]
            if ino not in files:
                continue
            buf = files[ino]
            if kind == "size":
                if off < len(buf):
                    del buf[off:]
                else:
                    buf.extend(bytes(off - len(buf)))
                continue
            end = off + len(data)
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
            buf[off:end] = data
        return CrashImage({p: bytes(files[i]) for p, i in names.items() if i in files}, frozenset(dirs), how)


FaultKind = Literal["eio_sync", "enospc_write", "short_write"]


class FaultFs(SimFs):
    """A SimFs whose k-th sync (EIO) or k-th write/allocation (ENOSPC, short write) fails, once; calls are counted.

    A failed file sync is fsyncgate as ext4 and XFS do it: the file's unsynced writes never reach the disk, yet their
    pages are marked clean and stay in the cache. Reads through the cache still return them, a read past it does not,
    a later sync succeeds without writing them, and a power cut loses them. The size changes stay pending (the inode
    is still dirty: a later sync persists them).
    """

    def __init__(self, kind: FaultKind, at: int, on_op: Callable[[SimFs, str], None] | None = None) -> None:
        super().__init__(on_op=on_op)
        self.kind, self.at = kind, at
        self.syncs = self.writes = 0
        self.fired_at_trace: int | None = None

    def _sync(self, fd: int, kind: str) -> None:
        with self._lock:
            if self.kind == "eio_sync":
                self.syncs += 1
                if self.syncs == self.at:
                    self._fire(f"{kind} EIO")
                    ino = self._inode(fd)
                    for op, off, data in ino.pending:
                        if op == "write":
                            ino.lost.update(range(off // PAGE, -(-(off + len(data)) // PAGE)))
                    ino.pending = [p for p in ino.pending if p[0] == "size"]
                    raise OSError(errno.EIO, "injected EIO")
            super()._sync(fd, kind)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            if self.kind == "eio_sync":
                self.syncs += 1
                if self.syncs == self.at:
                    self._fire("fsync_dir EIO")
                    raise OSError(errno.EIO, "injected EIO")
            super().fsync_dir(path)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        with self._lock:
            if self.kind in ("enospc_write", "short_write"):
                self.writes += 1
                if self.writes == self.at:
                    if self.kind == "enospc_write":
                        self._fire("pwrite ENOSPC")
                        raise OSError(errno.ENOSPC, "injected ENOSPC")
                    self._fire("short pwrite")
                    # Space runs out at a block boundary: the short write stops at a sector edge of the file.
                    half = max(0, (offset + len(data) // 2) // SECTOR * SECTOR - offset)
                    return super().pwrite(fd, data[:half], offset) if half else 0
            return super().pwrite(fd, data, offset)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            if self.kind == "enospc_write":
                self.writes += 1
                if self.writes == self.at:
                    self._fire("fallocate ENOSPC")
                    raise OSError(errno.ENOSPC, "injected ENOSPC")
            super().fallocate(fd, offset, length)

    def _fire(self, what: str) -> None:
        self.trace.append(("FAULT", what))
        self.fired_at_trace = len(self.trace)
