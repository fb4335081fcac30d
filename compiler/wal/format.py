"""The WAL's on-disk format as pure functions: header codec, hash chain, RFC 6962 Merkle tree, system payloads.

Follows FORMAT.md field by field; no I/O here.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import crc32c

from esper.compiler.fsio import ReadBuffer

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "CheckpointBody",
    "Header",
    "Manifest",
    "MerkleFrontier",
    "RecordType",
    "SegmentBody",
    "chain_next",
    "context_sha",
    "decode_header",
    "encode_header",
    "genesis_chain",
    "padded",
    "segment_name",
]

MAGIC = b"ESPERWAL"
VERSION = 1
ENDIAN_MARK = 0x0102
HEADER_SIZE = 256
MAX_PAYLOAD = 0xFFFF_FFFF  # the header's payload length is a u32
ALIGN = 256
SENTINEL = 0x5AFEC0DE
CHAINED = 184  # header[0:184] feeds the chain hash and the Merkle leaf
ZERO32 = bytes(32)

# magic, version, endian, type, flags, hlen, plen, reserved | lsn, prev, next | uuid | segment, epoch | txn |
# batch id, index, count | timestamp | payload sha, ctx sha, chain | reserved | payload crc, sentinel, header crc
_FMT = HEADER_FMT = struct.Struct("<8sHHBBHII QQQ 16s QQ 16s QII Q 32s32s32s 28s III")
assert _FMT.size == HEADER_SIZE
_RESERVED28 = bytes(28)


class RecordType(enum.IntEnum):
    SEGMENT = 1
    BEGIN = 2
    DATA = 3
    COMMIT = 4
    ABORT = 5
    CHECKPOINT = 6


_TYPES = frozenset(int(t) for t in RecordType)


ZERO_PADS = [bytes(k) for k in range(ALIGN)]  # the zero padding of k bytes, shared rather than built per record


SEGMENT_SUFFIX = ".seg"


def segment_name(segment_id: int) -> str:
    return f"wal-{segment_id:016x}{SEGMENT_SUFFIX}"


def padded(n: int) -> int:
    """Payload length rounded up to the record alignment."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    payload_len: int
    lsn: int
    prev_offset: int
    next_offset: int
    wal_uuid: bytes
    segment_id: int
    epoch: int
    txn: bytes
    batch_id: int
    batch_index: int
    batch_count: int
    timestamp_ns: int
    payload_sha: bytes
    ctx_sha: bytes
    chain: bytes
    payload_crc: int

    @property
    def offset(self) -> int:
        """Where this header says it lives (derived from next offset), checked against where it was found."""
        return self.next_offset - HEADER_SIZE - padded(self.payload_len)


# The header in two parts, so the writer packs it once: the chained prefix header[0:184] (everything the chain hash and
# the Merkle leaf commit to), then the tail header[184:252] (chain, reserved, payload CRC, sentinel); CRC last.
_PREFIX = struct.Struct("<8sHHBBHII QQQ 16s QQ 16s QII Q 32s32s")
_TAIL = struct.Struct("<32s 28s II")
assert _PREFIX.size == CHAINED and CHAINED + _TAIL.size + 4 == HEADER_SIZE
_CRC = struct.Struct("<I")


def encode_prefix(
    rtype: int,
    payload_len: int,
    lsn: int,
    prev_offset: int,
    next_offset: int,
    wal_uuid: bytes,
    segment_id: int,
    epoch: int,
    txn: bytes,
    batch_id: int,
    batch_index: int,
    batch_count: int,
    timestamp_ns: int,
    payload_sha: bytes,
    ctx_sha: bytes,
) -> bytes:
    """header[0:184]: what the chain hash and the Merkle leaf commit to."""
    return _PREFIX.pack(
        MAGIC,
        VERSION,
        ENDIAN_MARK,
        rtype,
        0,
        HEADER_SIZE,
        payload_len,
        0,
        lsn,
        prev_offset,
        next_offset,
        wal_uuid,
        segment_id,
        epoch,
        txn,
        batch_id,
        batch_index,
        batch_count,
        timestamp_ns,
        payload_sha,
        ctx_sha,
    )


def seal_header(prefix: bytes, chain: bytes, payload_crc: int) -> bytes:
    """The 256 header bytes from the prefix, the chain hash (`chain_next`) and the payload CRC; header CRC last."""
    body = prefix + _TAIL.pack(chain, _RESERVED28, payload_crc, SENTINEL)
    return body + _CRC.pack(crc32c.crc32c(body))


def encode_header(h: Header) -> bytes:
    """The 256 header bytes, CRC last. `h.chain` must already be computed with `chain_next`."""
    prefix = encode_prefix(
        h.type,
        h.payload_len,
        h.lsn,
        h.prev_offset,
        h.next_offset,
        h.wal_uuid,
        h.segment_id,
        h.epoch,
        h.txn,
        h.batch_id,
        h.batch_index,
        h.batch_count,
        h.timestamp_ns,
        h.payload_sha,
        h.ctx_sha,
    )
    return seal_header(prefix, h.chain, h.payload_crc)


def chained_prefix(h: Header) -> bytes:
    """header[0:184] of `h` (what the chain and the Merkle leaf commit to) without the chain field."""
    return encode_header(h)[:CHAINED]


# Positions in the tuple `HEADER_FMT.unpack_from` returns, so the per-record checks index instead of naming all 26.
(F_MAGIC, F_VERSION, F_ENDIAN, F_TYPE, F_FLAGS, F_HLEN, F_PLEN, F_RES4, F_LSN) = range(9)
(F_PREV, F_NEXT, F_UUID, F_SEGMENT, F_EPOCH, F_TXN, F_BATCH, F_BIDX, F_BCOUNT) = range(9, 18)
(F_TS, F_PSHA, F_CSHA, F_CHAIN, F_RES28, F_PCRC, F_SENTINEL, F_HCRC) = range(18, 26)


def header_problem(buf: ReadBuffer | memoryview, off: int, f: tuple[Any, ...]) -> str:
    """Why the unpacked header `f` (found at `off` in `buf`) is not a sound header, or "" when it is."""
    if crc32c.crc32c(buf[off : off + 252]) != f[F_HCRC]:
        return "header crc mismatch"
    if (
        f[F_MAGIC] != MAGIC
        or f[F_VERSION] != VERSION
        or f[F_ENDIAN] != ENDIAN_MARK
        or f[F_HLEN] != HEADER_SIZE
        or f[F_SENTINEL] != SENTINEL
    ):
        return "bad magic/version/endianness/length/sentinel"
    if f[F_FLAGS] or f[F_RES4] or f[F_RES28] != _RESERVED28:
        return "non-zero reserved bytes"
    if f[F_TYPE] not in _TYPES:
        return f"unknown record type {f[F_TYPE]}"
    if f[F_BCOUNT] == 0 or f[F_BIDX] >= f[F_BCOUNT]:
        return "bad batch index/count"
    return ""


def decode_header(buf: bytes | memoryview, off: int = 0) -> Header | str:
    """The header at `off`, or the reason it is not a sound header (the caller classifies, never this)."""
    if off + HEADER_SIZE > len(buf):
        return "header past end of file"
    f = _FMT.unpack_from(buf, off)
    problem = header_problem(buf, off, f)
    if problem:
        return problem
    # the fields left out are the constants, reserved bytes and header CRC just checked
    return Header(
        f[F_TYPE],
        f[F_PLEN],
        f[F_LSN],
        f[F_PREV],
        f[F_NEXT],
        f[F_UUID],
        f[F_SEGMENT],
        f[F_EPOCH],
        f[F_TXN],
        f[F_BATCH],
        f[F_BIDX],
        f[F_BCOUNT],
        f[F_TS],
        f[F_PSHA],
        f[F_CSHA],
        f[F_CHAIN],
        f[F_PCRC],
    )


def header_slot_unwritten(buf: bytes | memoryview, off: int) -> bool:
    """True when the header slot looks never written: past EOF, or its sentinel and CRC are zero.

    A header lies inside one 512-byte sector, so a torn write leaves it whole or absent; a kill mid-write leaves at
    worst a page-granular prefix, which also zeroes the trailing sentinel and CRC. A bit flip never does.
    """
    if off + HEADER_SIZE > len(buf):
        return True
    return bytes(buf[off + 248 : off + 256]) == bytes(8)


CHAIN_TAG = b"esper-wal-chain\x00"
LEAF_TAG = b"\x00"
NODE_TAG = b"\x01"


def genesis_chain(wal_uuid: bytes) -> bytes:
    return hashlib.sha256(b"esper-wal-genesis\x00" + wal_uuid).digest()


def chain_next(prev_chain: bytes, prefix184: bytes | memoryview) -> bytes:
    return hashlib.sha256(CHAIN_TAG + prev_chain + bytes(prefix184)).digest()


def canonical_context(ctx: Mapping[str, str]) -> bytes:
    return json.dumps(dict(ctx), sort_keys=True, separators=(",", ":")).encode()


def context_sha(ctx_json: bytes) -> bytes:
    return hashlib.sha256(b"esper-wal-ctx\x00" + ctx_json).digest()


def leaf_hash(prefix184: bytes | memoryview) -> bytes:
    return hashlib.sha256(LEAF_TAG + bytes(prefix184)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_TAG + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


@dataclass
class MerkleFrontier:
    """An append-only RFC 6962 tree kept as the roots of its perfect subtrees (O(log n) state and work per leaf)."""

    size: int = 0
    roots: list[bytes] | None = None  # largest subtree first

    def __post_init__(self) -> None:
        if self.roots is None:
            self.roots = []
        if len(self.roots) != bin(self.size).count("1"):
            raise ValueError("frontier does not match the tree size")

    def append(self, leaf: bytes) -> None:
        roots = self.roots
        assert roots is not None
        node = leaf
        n = self.size
        while n & 1:  # each trailing one bit is a perfect subtree of the same height to merge with
            node = _sha256(NODE_TAG + roots.pop() + node).digest()  # node_hash, inlined: once per record in recovery
            n >>= 1
        roots.append(node)
        self.size += 1

    def root(self) -> bytes:
        assert self.roots is not None
        if not self.roots:
            return EMPTY_ROOT
        acc = self.roots[-1]
        for r in reversed(self.roots[:-1]):
            acc = node_hash(r, acc)
        return acc

    def copy(self) -> MerkleFrontier:
        assert self.roots is not None
        return MerkleFrontier(self.size, list(self.roots))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 MTH by the recursive definition (reference for tests)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def context_root(tree_size: int, root: bytes, ctx_sha: bytes) -> bytes:
    return hashlib.sha256(b"esper-wal-checkpoint\x00" + struct.pack("<Q", tree_size) + root + ctx_sha).digest()


SEGMENT_BODY_SIZE = 48  # previous chain hash (32), first LSN (u64), segment size (u64)


@dataclass(frozen=True)
class SegmentBody:
    prev_chain: bytes
    first_lsn: int
    segment_size: int

    def encode(self) -> bytes:
        return self.prev_chain + struct.pack("<QQ", self.first_lsn, self.segment_size)

    @staticmethod
    def decode(b: bytes) -> SegmentBody | None:
        if len(b) != SEGMENT_BODY_SIZE:
            return None
        first, size = struct.unpack_from("<QQ", b, 32)
        return SegmentBody(bytes(b[:32]), first, size)


@dataclass(frozen=True)
class CheckpointBody:
    tree_size: int
    root: bytes
    chain: bytes
    ctx_root: bytes
    frontier: tuple[bytes, ...]
    context_json: bytes

    def encode(self) -> bytes:
        return b"".join(
            [
                struct.pack("<Q", self.tree_size),
                self.root,
                self.chain,
                self.ctx_root,
                *self.frontier,
                struct.pack("<I", len(self.context_json)),
                self.context_json,
            ]
        )

    @staticmethod
    def decode(b: bytes) -> CheckpointBody | None:
        try:
            (size,) = struct.unpack_from("<Q", b, 0)
            root, chain, croot = b[8:40], b[40:72], b[72:104]
            k = bin(size).count("1")
            pos = 104 + 32 * k
            frontier = tuple(bytes(b[104 + 32 * i : 136 + 32 * i]) for i in range(k))
            (clen,) = struct.unpack_from("<I", b, pos)
            ctx = bytes(b[pos + 4 : pos + 4 + clen])
            if pos + 4 + clen != len(b):
                return None
        except struct.error:
            return None
        return CheckpointBody(size, bytes(root), bytes(chain), bytes(croot), frontier, ctx)

    def context(self) -> dict[str, str]:
        out: dict[str, str] = json.loads(self.context_json.decode())
        return out


MANIFEST_MAGIC = b"ESPERMAN"
# magic, version, reserved | WAL uuid | first retained segment id, its first LSN | chain hash before that LSN; CRC last
_MANIFEST = struct.Struct("<8sHH 16s QQ 32s")
MANIFEST_SIZE = _MANIFEST.size + 4


@dataclass(frozen=True)
class Manifest:
    """Where the retained log starts: the first retained segment, its first LSN and the chain hash before it.

    Also what a segment's SEGMENT record says about its own start (`SegmentScan.start`), so the two compare directly.
    """

    wal_uuid: bytes
    segment_id: int
    first_lsn: int
    prev_chain: bytes

    def encode(self) -> bytes:
        body = _MANIFEST.pack(
            MANIFEST_MAGIC, VERSION, 0, self.wal_uuid, self.segment_id, self.first_lsn, self.prev_chain
        )
        return body + _CRC.pack(crc32c.crc32c(body))

    @staticmethod
    def decode(b: bytes) -> Manifest | str:
        """The manifest in `b`, or why it is not one (written tmp, fsync, rename: any damage is corruption)."""
        if len(b) != MANIFEST_SIZE:
            return f"{len(b)} bytes, not {MANIFEST_SIZE}"
        if crc32c.crc32c(b[:-4]) != _CRC.unpack_from(b, len(b) - 4)[0]:
            return "crc mismatch"
        magic, version, reserved, wal_uuid, segment_id, first_lsn, prev_chain = _MANIFEST.unpack_from(b)
        if magic != MANIFEST_MAGIC or version != VERSION or reserved:
            return "bad magic/version/reserved bytes"
        return Manifest(wal_uuid, segment_id, first_lsn, prev_chain)
