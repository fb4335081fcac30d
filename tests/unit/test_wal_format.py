"""Pure pieces of the WAL: header codec, RFC 6962 Merkle frontier, system payloads."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from esper.compiler.wal.format import (
    HEADER_SIZE,
    CheckpointBody,
    Header,
    MerkleFrontier,
    RecordType,
    SegmentBody,
    decode_header,
    encode_header,
    header_slot_unwritten,
    leaf_hash,
    merkle_root,
    node_hash,
)


def _header(**kw: object) -> Header:
    base: dict[str, object] = dict(
        type=RecordType.DATA,
        payload_len=10,
        lsn=7,
        prev_offset=256,
        next_offset=1024,
        wal_uuid=b"u" * 16,
        segment_id=3,
        epoch=2,
        txn=b"t" * 16,
        batch_id=5,
        batch_index=0,
        batch_count=1,
        timestamp_ns=123,
        payload_sha=b"p" * 32,
        ctx_sha=b"c" * 32,
        chain=b"h" * 32,
        payload_crc=99,
    )
    base.update(kw)
    return Header(**base)  # type: ignore[arg-type]


def test_header_is_256_bytes_and_round_trips() -> None:
    h = _header()
    raw = encode_header(h)
    assert len(raw) == HEADER_SIZE
    assert decode_header(raw) == h


def test_every_single_bit_flip_of_a_header_is_rejected() -> None:
    raw = encode_header(_header())
    for bit in range(HEADER_SIZE * 8):
        b = bytearray(raw)
        b[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(decode_header(bytes(b)), str), bit
        assert not header_slot_unwritten(bytes(b), 0)  # a flip never looks like an unwritten slot


def test_unwritten_slot_is_zeros_or_past_the_end() -> None:
    assert header_slot_unwritten(bytes(256), 0)
    assert header_slot_unwritten(bytes(100), 0)
    assert header_slot_unwritten(encode_header(_header())[:200] + bytes(56), 0)  # a torn prefix
    assert not header_slot_unwritten(encode_header(_header()), 0)


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=0, max_size=70))
def test_merkle_frontier_matches_rfc6962_reference(items: list[bytes]) -> None:
    leaves = [leaf_hash(x) for x in items]
    f = MerkleFrontier()
    for i, leaf in enumerate(leaves):
        assert f.root() == merkle_root(leaves[:i])
        f.append(leaf)
    assert f.root() == merkle_root(leaves)
    g = MerkleFrontier(f.size, list(f.roots or []))  # resumable from a checkpoint's frontier
    g.append(leaf_hash(b"x"))
    assert g.root() == merkle_root([*leaves, leaf_hash(b"x")])


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(a + b) != node_hash(a, b)
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()


def test_system_payloads_round_trip() -> None:
    s = SegmentBody(b"x" * 32, 42, 1 << 20)
    assert SegmentBody.decode(s.encode()) == s
    c = CheckpointBody(5, b"r" * 32, b"c" * 32, b"x" * 32, (b"a" * 32, b"b" * 32), b'{"device":"cpu"}')
    assert CheckpointBody.decode(c.encode()) == c
    assert c.context() == {"device": "cpu"}
    assert CheckpointBody.decode(c.encode()[:-1]) is None
