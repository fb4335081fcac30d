"""The answered-offsets ledger: its metadata format, what it refuses, and the exactly-once property across crashes
(a simulated partition answered in any order by a shell that fetches, answers, commits and dies at any point)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.compiler.service.ledger import (
    DEFAULT_MAX_WINDOW,
    LedgerMetadataError,
    PartitionLedger,
    decode_answered,
    encode_answered,
)

MAX_METADATA_BYTES = 4096  # the broker's offset.metadata.max.bytes default
LANE_FETCH = 200  # lane.py: consume(200), then pause the partitions that are full


# ---------------------------------------------------------------- the format


def test_the_format_is_ranges_of_distances_from_the_base() -> None:
    assert encode_answered(100, [104, 100, 101, 102, 103, 107, 109, 110, 111, 112]) == "tz1:0-4,7,9-12"
    assert encode_answered(5, []) == "tz1:"
    assert decode_answered(100, "tz1:0-4,7,9-12") == {100, 101, 102, 103, 104, 107, 109, 110, 111, 112}
    assert decode_answered(7, "") == frozenset() == decode_answered(7, "tz1:")


@given(base=st.integers(0, 1 << 62), distances=st.sets(st.integers(0, 5000), max_size=300))
def test_encode_then_decode_is_the_identity(base: int, distances: set[int]) -> None:
    answered = {base + d for d in distances}
    metadata = encode_answered(base, answered)
    assert decode_answered(base, metadata) == answered
    assert encode_answered(base, decode_answered(base, metadata)) == metadata  # one spelling per set


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text().map(lambda s: "tz1:" + s), st.from_regex(r"tz1:[0-9,\-]{0,40}")))
def test_any_metadata_is_decoded_or_refused_with_a_ledger_metadata_error(metadata: str) -> None:
    try:
        answered = decode_answered(10, metadata)
    except LedgerMetadataError:
        return
    # what it accepts is what the ledger writes: ASCII ranges of distances from the base
    assert set(metadata.partition(":")[2]) <= set("0123456789,-")
    assert all(o >= 10 for o in answered)


@pytest.mark.parametrize(
    "metadata",
    [
        "tz2:0-3",  # another version
        "0-3",  # no tag
        "tz1",  # no separator
        "tz1:a",
        "tz1:-3",
        "tz1:3-",
        "tz1:5-3",  # reversed
        "tz1:0-3-4",
        "tz1:\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
        "tz1:\u0661\u0662",  # Arabic-Indic digits: never written by the ledger
        "tz1:" + "9" * 5000,  # past int()'s digit limit
        "tz1:0-1048576",  # more offsets than the bound
    ],
)
def test_malformed_metadata_is_refused(metadata: str) -> None:
    with pytest.raises(LedgerMetadataError):
        decode_answered(0, metadata)
    with pytest.raises(LedgerMetadataError):
        PartitionLedger(0, metadata)


# ---------------------------------------------------------------- the ledger


def test_out_of_order_answers_hold_the_commit_point_and_the_metadata_names_them() -> None:
    ledger = PartitionLedger(10)
    assert [ledger.consumed(o) for o in range(10, 15)] == [True] * 5
    for o in (11, 13):
        ledger.answered(o)
    assert ledger.commit_point() == (10, "tz1:1,3")
    ledger.answered(10)
    assert ledger.commit_point() == (12, "tz1:1")  # 10 and 11 are below it now
    restored = PartitionLedger(12, "tz1:1")
    assert [restored.already_answered(o) for o in range(10, 16)] == [True, True, False, True, False, False]
    assert [restored.consumed(o) for o in range(12, 15)] == [True, False, True]
    assert restored.consumed(12) is False  # a re-delivery of an outstanding record


def test_the_window_fills_at_max_window_and_empties_as_the_commit_point_moves() -> None:
    ledger = PartitionLedger(0, max_window=4)
    for o in range(4):
        ledger.consumed(o)
    assert ledger.window == 4 and ledger.full
    ledger.answered(3)
    ledger.commit_point()
    assert ledger.window == 4 and ledger.full  # answered ahead of 0 still holds its place
    ledger.answered(0)
    ledger.commit_point()
    assert ledger.window == 3 and not ledger.full


@pytest.mark.parametrize("stride", [1, 2])  # 2: a transactional producer's commit marker after every record
def test_metadata_stays_under_the_broker_limit_in_the_worst_case_at_the_default_window(stride: int) -> None:
    """The worst case: the lowest record outstanding and every other one answered ahead of it, the window full
    and overshot by one more fetch (the lane pauses a full partition after a batch of up to 200 records)."""
    held = [i * stride for i in range(DEFAULT_MAX_WINDOW - 1 + LANE_FETCH)]
    ledger = PartitionLedger(0)
    for o in held:
        ledger.consumed(o)
    for o in held[1::2]:
        ledger.answered(o)
    assert ledger.full
    base, metadata = ledger.commit_point()
    assert base == 0 and len(decode_answered(base, metadata)) == len(held) // 2
    assert len(metadata.encode()) < MAX_METADATA_BYTES


# ---------------------------------------------------------------- exactly once across crashes


@dataclass
class Shell:
    """What the lane does with a ledger, as a model: fetch a batch from the consumer's position when the partition
    is not paused (`full`), answer records in any order into the batch of the next transaction, then commit the
    answers with the ledger's commit point (or see that transaction abort: the ledger is restored, the answers
    stay for the retry). A crash loses everything but the last committed (offset, metadata)."""

    offsets: list[int]  # the partition's records, ascending (gaps: transaction markers)
    max_window: int
    committed: tuple[int, str] = (0, "")
    answers: dict[int, int] = field(default_factory=dict)  # record -> answers committed
    ledger: PartitionLedger = field(init=False)
    position: int = field(init=False)  # index into offsets of the next record the consumer delivers
    waiting: list[int] = field(default_factory=list)  # consumed, needing an answer
    batch: list[int] = field(default_factory=list)  # answered in the open transaction

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        offset, metadata = self.committed
        self.ledger = PartitionLedger(offset, metadata, max_window=self.max_window)
        self.seek(offset)
        self.waiting, self.batch = [], []

    def seek(self, offset: int) -> None:
        self.position = next((i for i, o in enumerate(self.offsets) if o >= offset), len(self.offsets))

    def fetch(self, n: int) -> None:
        if self.ledger.full:
            return
        for o in self.offsets[self.position : self.position + n]:
            if self.ledger.consumed(o):
                self.waiting.append(o)
        self.position = min(self.position + n, len(self.offsets))

    def answer(self, pick: int) -> None:
        """Answer the `pick`-th newest waiting record (0, hypothesis' favourite, is the newest: out of order)."""
        if self.waiting:
            self.batch.append(self.waiting.pop(-1 - pick % len(self.waiting)))

    def flush(self, ok: bool) -> None:
        saved = copy.deepcopy(self.ledger)
        for o in self.batch:
            self.ledger.answered(o)
        point = self.ledger.commit_point()
        if not ok:
            self.ledger = saved
            return
        self.committed = point
        for o in self.batch:
            self.answers[o] = self.answers.get(o, 0) + 1
        self.batch = []
        assert len(point[1].encode()) < MAX_METADATA_BYTES

    def step(self, op: str, arg: int) -> None:
        if op == "fetch":
            self.fetch(arg)
        elif op == "answer":
            self.answer(arg)
        elif op == "commit":
            self.flush(ok=True)
        elif op == "abort":
            self.flush(ok=False)
        elif op == "redeliver":  # the consumer seeks back to the commit point without a new ledger
            self.seek(self.committed[0])
        else:
            self.restart()

    def drain(self) -> None:
        """Run without faults until every record is answered; the ledger must never hold the shell stuck."""
        for _ in range(4 * len(self.offsets) + 4):
            if self.position == len(self.offsets) and not self.waiting and not self.batch:
                return
            self.fetch(len(self.offsets))
            while self.waiting:
                self.answer(len(self.waiting) - 1)  # oldest first
            self.flush(ok=True)
        raise AssertionError(f"stuck: position {self.position}, window {self.ledger.window}, {self.committed}")


OPS = st.tuples(
    st.sampled_from(["fetch", "answer", "answer", "answer", "commit", "abort", "redeliver", "crash"]),
    st.integers(0, 1000),
)


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 3), min_size=1, max_size=40),
    max_window=st.integers(1, 6),
    batch=st.integers(1, 8),
    ops=st.lists(OPS, min_size=10, max_size=120),  # hypothesis favours short lists: crashes need room
)
def test_every_record_is_answered_exactly_once_across_crashes(
    gaps: list[int], max_window: int, batch: int, ops: list[tuple[str, int]]
) -> None:
    offsets = [sum(gaps[: i + 1]) - gaps[0] for i in range(len(gaps))]
    shell = Shell(offsets, max_window)
    for op, arg in ops:
        shell.step(op, batch if op == "fetch" else arg)
    shell.drain()
    assert shell.answers == dict.fromkeys(offsets, 1)
    assert shell.committed == (offsets[-1] + 1, "tz1:")


def test_a_ledger_restored_over_full_still_lets_the_oldest_record_in() -> None:
    """A fetch batch can overshoot the window (the lane pauses a partition only after a batch): answers committed
    ahead of the oldest record may then be more than `max_window`, and the restored ledger must still take it."""
    shell = Shell(list(range(10)), max_window=3)
    shell.fetch(10)  # one fetch of ten while the window is not full
    for _ in range(9):
        shell.answer(0)  # newest first: everything but record 0
    shell.flush(ok=True)
    assert shell.committed == (0, "tz1:1-9")
    shell.restart()
    shell.drain()
    assert shell.answers == dict.fromkeys(range(10), 1)
