"""The safety-event outbox: every safety event is on local disk from the moment it is emitted until the broker has
acknowledged it, so none is lost to a broker outage of any length, a burst, a full queue or a `kill -9`.

Layout of a directory (one per Kasmina instance, held by one process at a time through a lock file):
  seg-<first seq, 20 digits>.log   records: u32 length, u32 CRC32C of the payload, payload (a SafetyEvent)
  ACKED                            u64 highest acknowledged seq, u32 CRC32C of those 8 bytes
Sequence numbers are implied by order: the first record of `seg-N.log` is seq N. `append` is one `write(2)` into
the page cache (a killed process loses nothing the kernel holds; no fsync on the caller's thread); `sync` makes it
durable against power loss and is called from the publisher's thread. Acknowledgements move ACKED forward (written
in place, no fsync: after a crash at worst some events are delivered again, with their event ids unchanged, so
consumers drop the duplicates) and a segment whose every record is acknowledged is deleted. A write that fails (a full
disk) keeps the record in memory and is retried in order, so even then nothing is dropped while the process lives.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import crc32c

from esper.safety.exceptions import OutboxLockedError

__all__ = ["OutboxStats", "SafetyOutbox"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<II")
_ACKED = struct.Struct("<QI")
_ACKED_FILE = "ACKED"
_LOCK_FILE = "LOCK"


def _segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.log"


@dataclass(frozen=True)
class OutboxStats:
    appended: int  # this process
    acked: int  # highest acknowledged seq
    last_seq: int  # highest seq written or waiting to be written
    recovered: int  # unacknowledged records found at open (left by an earlier process)
    torn_bytes: int  # bytes of an incomplete last record cut at open
    write_errors: int
    unwritten: int  # records waiting in memory for a disk that refused them

    @property
    def undelivered(self) -> int:
        return self.last_seq - self.acked


class SafetyOutbox:
    """An append-only, acknowledged log of serialized safety events (see the module's docstring)."""

    # Small segments: the publisher reads the unacknowledged part of a segment whole, and acknowledged ones go soon.
    def __init__(self, directory: Path | str, segment_bytes: int = 256 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OutboxLockedError(f"outbox {self.directory} is held by another process") from None
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._acked_fd = os.open(self.directory / _ACKED_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        self._acked = self._read_acked()
        self._appended = self._write_errors = 0
        self._unwritten: deque[tuple[int, bytes]] = deque()
        self._segments: list[int] = []  # first seq of each segment on disk, ascending
        self._torn = 0
        self._tail_end = 0  # the last seq of the last segment on disk (0: none)
        last = self._recover()
        self._last_seq = last  # highest seq assigned
        self._recovered = max(0, last - self._acked)
        self._written_seq = last  # highest seq on disk
        self._seg_fd = -1
        self._seg_size = 0
        self._dirty = False
        self._open_tail()

    # -- recovery ------------------------------------------------------------------------------------------

    def _read_acked(self) -> int:
        raw = os.pread(self._acked_fd, _ACKED.size, 0)
        if len(raw) < _ACKED.size:
            return 0
        seq, crc = _ACKED.unpack(raw)
        if crc != crc32c.crc32c(raw[:8]):
            log.warning("outbox %s: damaged ACKED file, every kept event will be delivered again", self.directory)
            return 0
        return int(seq)

    def _recover(self) -> int:
        """Find the segments, cut a torn last record, delete fully acknowledged segments; the last seq on disk."""
        firsts = sorted(int(p.name[4:-4]) for p in self.directory.glob("seg-*.log"))
        last = self._acked
        for i, first in enumerate(firsts):
            path = self.directory / _segment_name(first)
            count, good_bytes = _scan(path.read_bytes())
            if good_bytes < path.stat().st_size:  # a record cut by a crash or damaged: what follows is not trusted
                self._torn += path.stat().st_size - good_bytes
                log.warning("outbox %s: cut %d bytes after %d records", path, path.stat().st_size - good_bytes, count)
                os.truncate(path, good_bytes)
            end = first + count - 1
            if i < len(firsts) - 1 and end <= self._acked:
                path.unlink()
                continue
            self._segments.append(first)
            self._tail_end = end
            last = max(last, end)
        return last

    def _open_tail(self) -> None:
        # Appending to the last segment keeps seqs implied by position only if it ends at the last seq (damage cut
        # below what ACKED says was delivered would break that: then a new segment starts).
        if self._segments and self._tail_end == self._last_seq:
            path = self.directory / _segment_name(self._segments[-1])
            self._seg_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._seg_size = path.stat().st_size
        else:
            self._roll()

    def _roll(self) -> None:
        """Start a segment at the next seq (its directory entry synced, so the segment itself survives)."""
        first = self._written_seq + 1
        fd = os.open(self.directory / _segment_name(first), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self._seg_fd >= 0:
            os.fsync(self._seg_fd)
            os.close(self._seg_fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._seg_fd, self._seg_size = fd, 0
        if not self._segments or self._segments[-1] != first:
            self._segments.append(first)

    # -- writing (any thread) ------------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Keep one event; returns its seq. One write(2), no fsync: it never waits for the disk."""
        with self._lock:
            self._last_seq += 1
            self._appended += 1
            self._unwritten.append((self._last_seq, payload))
            self._write_pending()
            return self._last_seq

    def _write_pending(self) -> None:
        while self._unwritten:
            seq, payload = self._unwritten[0]
            record = _HEAD.pack(len(payload), crc32c.crc32c(payload)) + payload
            try:
                if self._seg_size and self._seg_size + len(record) > self.segment_bytes:
                    self._roll()
                written = os.write(self._seg_fd, record)
                if written != len(record):  # a short write leaves a torn record: cut it and try again later
                    os.ftruncate(self._seg_fd, self._seg_size)
                    raise OSError(f"short write ({written} of {len(record)} bytes)")
            except OSError as e:
                self._write_errors += 1
                if self._write_errors == 1 or self._write_errors % 1000 == 0:
                    log.error("outbox %s: write failed (%s); %d events wait in memory", self.directory, e, len(self))
                return
            self._unwritten.popleft()
            self._seg_size += len(record)
            self._written_seq = seq
            self._dirty = True

    def __len__(self) -> int:
        return len(self._unwritten)

    def sync(self) -> None:
        """Make what was appended durable against power loss (the publisher's thread calls this, never training),
        and retry records a refusing disk kept in memory."""
        with self._lock:
            self._write_pending()
            if not self._dirty:
                return
            self._dirty = False
            fd = self._seg_fd
        os.fdatasync(fd)

    # -- reading and acknowledging (the publisher's thread) ------------------------------------------------

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` records with seq > after that are on disk, in order."""
        with self._lock:
            written = self._written_seq
            segments = list(self._segments)
        out: list[tuple[int, bytes]] = []
        for i, first in enumerate(segments):
            nxt = segments[i + 1] if i + 1 < len(segments) else written + 1
            if nxt <= after + 1 or first > written:
                continue
            data = (self.directory / _segment_name(first)).read_bytes()
            seq, pos = first, 0
            while pos + _HEAD.size <= len(data) and seq <= written and len(out) < limit:
                length, _crc = _HEAD.unpack_from(data, pos)
                if seq > after:
                    out.append((seq, data[pos + _HEAD.size : pos + _HEAD.size + length]))
                pos += _HEAD.size + length
                seq += 1
            if len(out) >= limit:
                break
        return out

    def ack(self, seq: int) -> None:
        """Every record up to `seq` is acknowledged: remember it and delete segments no longer needed."""
        with self._lock:
            if seq <= self._acked:
                return
            self._acked = seq
            raw = struct.pack("<Q", seq)
            os.pwrite(self._acked_fd, raw + struct.pack("<I", crc32c.crc32c(raw)), 0)
            while len(self._segments) > 1 and self._segments[1] - 1 <= seq:
                os.unlink(self.directory / _segment_name(self._segments.pop(0)))

    @property
    def acked(self) -> int:
        return self._acked

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                appended=self._appended,
                acked=self._acked,
                last_seq=self._last_seq,
                recovered=self._recovered,
                torn_bytes=self._torn,
                write_errors=self._write_errors,
                unwritten=len(self._unwritten),
            )

    def close(self) -> None:
        """Sync and release the directory (what is unacknowledged stays for the next process)."""
        self.sync()
        with self._lock:
            for fd in (self._seg_fd, self._acked_fd, self._lock_fd):
                os.close(fd)
            self._seg_fd = self._acked_fd = self._lock_fd = -1


def _scan(data: bytes) -> tuple[int, int]:
    """(records, bytes) of the valid prefix of a segment: each record whole and its CRC right."""
    count = pos = 0
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if end > len(data) or crc32c.crc32c(data[pos + _HEAD.size : end]) != crc:
            break
        count += 1
        pos = end
    return count, pos
