"""A dead letter keeps its origin record, and always fits the dead-letter topic whatever that record's size."""

from __future__ import annotations

from confluent_kafka import Message

from esper.streams import deadletter as dl
from esper.streams.exceptions import MalformedPayloadError


def record(value: bytes, key: bytes = b"k", headers: list[tuple[str, bytes]] | None = None) -> Message:
    return Message(
        topic="leyline.control.pause",
        partition=0,
        offset=41,
        key=key,
        value=value,
        headers=headers or [],
        timestamp=(1, 1_700_000_000_000),
    )


def test_a_dead_letter_carries_the_origin_and_the_error() -> None:
    letter = dl.dead_letter_for(record(b"\xff", headers=[("content-type", b"x")]), MalformedPayloadError("bad"), "g")
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == ("leyline.control.pause", 0, 41)
    assert (letter.origin_key, letter.origin_value, letter.origin_timestamp_ms) == (b"k", b"\xff", 1_700_000_000_000)
    assert [(h.key, h.value) for h in letter.origin_headers] == [("content-type", b"x")]
    assert (letter.error_type, letter.error, letter.consumer_group) == ("MalformedPayloadError", "bad", "g")
    assert not (letter.origin_value_truncated or letter.origin_key_truncated or letter.origin_headers_truncated)


def test_the_largest_origin_record_still_fits_the_dead_letter_topic() -> None:
    """Value, key and headers each over their budget (a cluster may allow records far above our topic's limit)."""
    huge = record(
        value=b"v" * (8 * 1024 * 1024),
        key=b"k" * (1024 * 1024),
        headers=[(f"h{i}", b"x" * 100_000) for i in range(40)],
    )
    letter = dl.dead_letter_for(huge, RuntimeError("e" * 100_000))
    assert letter.origin_value_truncated and letter.origin_key_truncated and letter.origin_headers_truncated
    assert len(letter.origin_value) == dl.MAX_COPIED_VALUE
    assert sum(len(h.key) + len(h.value) for h in letter.origin_headers) <= dl.MAX_COPIED_HEADERS
    record_size = len(letter.SerializeToString()) + len(letter.origin_key) + 1024  # + envelope headers, framing
    assert record_size < dl.DEADLETTER_MAX_BYTES
