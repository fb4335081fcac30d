"""Which input records of one partition have been answered: the state that commits with the answers.

Tezzeret answers records out of offset order (priorities, coalescing, compiles of different lengths), but a Kafka
consumer offset says only "everything below this is done". So a partition's commit is the lowest offset still
unanswered, and the consumer-offset metadata string carries the offsets above it that are answered already. Both
go to `send_offsets_to_transaction` in the transaction that produces the answers, so after any crash or rebalance
the next owner resumes at the offset, skips exactly the records the metadata names, and answers every other one:
each record is answered once as a read_committed reader sees it.

Pure: no Kafka. The shell feeds it what it consumed and answered, and pauses a partition whose window (records
consumed but not yet below the commit point) reaches `max_window`, which also bounds the metadata's size well under
the broker's offset.metadata.max.bytes (4096 by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["LedgerMetadataError", "PartitionLedger", "decode_answered", "encode_answered"]

FORMAT = "tz1"  # the metadata's version tag: a foreign or older string is refused, never guessed at
DEFAULT_MAX_WINDOW = 256  # ~1.5 KB of metadata in the worst (alternating) case
_RANGE = re.compile(r"([0-9]{1,19})(?:-([0-9]{1,19}))?")  # ASCII only: str.isdigit() takes "²", int() does not


class LedgerMetadataError(ValueError):
    """Committed offset metadata this ledger did not write (or cannot read)."""


def encode_answered(base: int, answered: Iterable[int]) -> str:
    """The answered offsets above `base` as ranges of distances from it: "tz1:0-4,7,9-12" ("tz1:" when none)."""
    parts: list[str] = []
    for lo, hi in _ranges(sorted(o - base for o in answered)):
        parts.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return f"{FORMAT}:{','.join(parts)}"


def decode_answered(base: int, metadata: str, *, max_offsets: int = 1 << 20) -> frozenset[int]:
    """The offsets `encode_answered(base, ...)` wrote; "" (nothing committed with metadata) is none."""
    if metadata == "":
        return frozenset()
    tag, sep, body = metadata.partition(":")
    if tag != FORMAT or not sep:
        raise LedgerMetadataError(f"offset metadata {metadata[:40]!r} is not Tezzeret's ({FORMAT})")
    out: set[int] = set()
    for part in filter(None, body.split(",")):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise LedgerMetadataError(f"offset metadata range {part[:20]!r} is malformed")
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo or len(out) + hi - lo + 1 > max_offsets:
            raise LedgerMetadataError(f"offset metadata range {part[:20]!r} is out of bounds")
        out.update(range(base + lo, base + hi + 1))
    return frozenset(out)


def _ranges(values: list[int]) -> Iterator[tuple[int, int]]:
    start = prev = None
    for v in values:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None and prev is not None:
            yield start, prev
        start = prev = v
    if start is not None and prev is not None:
        yield start, prev


class PartitionLedger:
    """One input partition as this member holds it: restored from the committed offset and metadata."""

    def __init__(self, committed: int, metadata: str = "", *, max_window: int = DEFAULT_MAX_WINDOW) -> None:
        if committed < 0:
            raise ValueError("a committed offset is >= 0 (the caller maps 'none' to the partition's start)")
        self.max_window = max_window
        self._base = committed  # everything below is answered
        self._answered = set(decode_answered(committed, metadata))  # answered, above the base
        self._outstanding: set[int] = set()  # consumed, not yet answered
        self._next = committed  # the lowest offset not yet consumed by this member

    def already_answered(self, offset: int) -> bool:
        """True for a record answered before (below the commit point, or named by the metadata)."""
        return offset < self._base or offset in self._answered

    def consumed(self, offset: int) -> bool:
        """A record was fetched: True when it needs an answer (it is new), False when it was answered before or
        is outstanding already (a re-delivery after a seek)."""
        self._next = max(self._next, offset + 1)
        if self.already_answered(offset) or offset in self._outstanding:
            return False
        self._outstanding.add(offset)
        return True

    def answered(self, offset: int) -> None:
        """The record's answer is in the transaction being built (call `commit_point` after it)."""
        if offset in self._outstanding:
            self._outstanding.discard(offset)
            self._answered.add(offset)

    def commit_point(self) -> tuple[int, str]:
        """(offset, metadata) to commit with the answers given so far; advances past every answered prefix."""
        low = min(self._outstanding, default=max(self._next, self._base))
        if low > self._base:
            self._answered = {o for o in self._answered if o >= low}
            self._base = low
        return self._base, encode_answered(self._base, self._answered)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def window(self) -> int:
        """Records held above the commit point (outstanding or answered ahead of it)."""
        return len(self._outstanding) + len(self._answered)

    @property
    def full(self) -> bool:
        """The shell stops fetching this partition until answers bring the window down. Never while nothing is
        outstanding: a fetch batch can overshoot the window, so a ledger restored from its commit can hold
        `max_window` answers ahead of a record not yet fetched again, which only fetching lets in."""
        return self.window >= self.max_window and bool(self._outstanding)
