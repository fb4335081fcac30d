"""Tezzeret's three cache levels, keyed by what a compile's answer depends on (`job_key`).

L1 is memory (a TTL and a size bound); L2 the local artifact store, through an index of key -> artifact id; L3 the
shared store, through an index fed from the leyline.kernels topic. Only memory is trusted: an L2 or L3 entry is a
hit once `load_verified` has checked the artifact and the verified manifest answers the same job (a kernels record
can name any artifact under any key), and every failure is a miss, logged, with the bad entry dropped.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TypeVar

from cachetools import TLRUCache

from esper.compiler.artifacts.address import canonical_json, check_artifact_id, current_reuse_key
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE, Manifest
from esper.compiler.artifacts.publish import compiler_version
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.artifacts.verify import VerifiedArtifact, load_verified
from esper.compiler.exceptions import ArtifactError, ArtifactRefusedError, InvalidArtifactIdError
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CacheLevel, CompilationStrategy
from esper.safety.events import EventSink, NullSink

__all__ = ["ArtifactCache", "CacheHit", "CacheStats", "job_key", "job_key_of", "service_job_key"]

log = logging.getLogger(__name__)

_KEY_FORMAT = 1  # bumped when what goes into a job key changes
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HIT_LEVELS = (CacheLevel.L1, CacheLevel.L2, CacheLevel.L3)
_V = TypeVar("_V")


def job_key(
    *, ir_sha256: str, strategy: CompilationStrategy, seed: int, device: str, torch_version: str, compiler_version: str
) -> str:
    """sha256 (hex) over what a compile's answer depends on, known before compiling: the lookup and coalescing key.
    `device` is a kind ("cpu", "cuda"); `torch_version` as ReuseKey spells it."""
    if type(seed) is not int:
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    fields = {
        "format": _KEY_FORMAT,
        "ir_sha256": ir_sha256,
        "strategy": CompilationStrategy(strategy).name,
        "seed": seed,
        "device": device,
        "torch_version": torch_version,
        "compiler_version": compiler_version,
    }
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def job_key_of(artifact: pb.CompiledKernelArtifact) -> str | None:
    """The job key of a kernels-topic record (the options compile_job records: seed, tezzeret), or None when a
    field is missing or malformed: a foreign record is not an error."""
    options: dict[str, str] = {}
    for kv in artifact.compile_options:
        if kv.key in options:  # two values: which one was compiled is unknowable
            return None
        options[kv.key] = kv.value
    seed, tezzeret = options.get("seed", ""), options.get("tezzeret", "")
    if not (_SHA256.fullmatch(artifact.blueprint_sha256) and artifact.device and artifact.torch_version and tezzeret):
        return None
    if not re.fullmatch(r"-?[0-9]{1,20}", seed) or str(int(seed)) != seed:  # as compile_job writes it, str(int)
        return None
    try:
        strategy = CompilationStrategy(artifact.strategy)
    except ValueError:
        return None
    return job_key(
        ir_sha256=artifact.blueprint_sha256,
        strategy=strategy,
        seed=int(seed),
        device=artifact.device,
        torch_version=artifact.torch_version,
        compiler_version=tezzeret,
    )


@functools.cache
def _torch_version() -> str:
    # ReuseKey's spelling, from the one function that writes it (the rest of this key is not used)
    return current_reuse_key(
        device="cpu",
        dtype="FLOAT32",
        input_shape=(),
        input_dtype="FLOAT32",
        input_requires_grad=False,
        compile_options={},
    ).torch_version


def service_job_key(ir: bytes, strategy: CompilationStrategy, seed: int, device: str = "cpu") -> str:
    """The job key of canonical IR bytes compiled by this process (its torch build, this Tezzeret's version): what
    `job_key_of` gives for the artifact such a compile produces. `device` may name an index ("cuda:1")."""
    import torch

    return job_key(
        ir_sha256=hashlib.sha256(ir).hexdigest(),
        strategy=strategy,
        seed=seed,
        device=torch.device(device).type,
        torch_version=_torch_version(),
        compiler_version=compiler_version(),
    )


@dataclass(frozen=True)
class CacheHit:
    """A lookup's answer: the level that had it and the kernels-topic metadata to answer with."""

    level: CacheLevel
    artifact: pb.CompiledKernelArtifact  # a copy: the caller may change it
    published: bool  # known to be on leyline.kernels already (committed)


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was made, and the entries each level holds now."""

    hits: Mapping[CacheLevel, int]  # L1, L2, L3
    misses: int
    refused: int  # L2/L3 entries whose artifact failed verification or answered another job
    entries: Mapping[CacheLevel, int]  # L1, L2, L3

    @property
    def lookups(self) -> int:
        return sum(self.hits.values()) + self.misses

    def hit_rate(self, level: CacheLevel) -> float:
        """Hits at `level` over all lookups (0.0 before the first)."""
        if level not in self.hits:
            raise ValueError(f"{level.name} is not a cache level that hits")
        return self.hits[level] / self.lookups if self.lookups else 0.0


@dataclass(frozen=True)
class _Memory:
    artifact: pb.CompiledKernelArtifact
    published: bool
    expires_at: float  # kept with the value, so resizing and marking published keep the entry's deadline


@dataclass(frozen=True)
class _Local:
    artifact_id: str
    published: bool


def _copy(msg: pb.CompiledKernelArtifact) -> pb.CompiledKernelArtifact:
    out = pb.CompiledKernelArtifact()
    out.CopyFrom(msg)
    return out


def _files(artifact: VerifiedArtifact) -> dict[str, bytes]:
    """Everything the artifact's directory holds, to write it into another store."""
    return {**artifact.files, MANIFEST_FILE: artifact.manifest_bytes, SIGNATURE_FILE: artifact.signature}


class ArtifactCache:
    """The L1/L2/L3 cache of compiled artifacts (see the module docstring). Thread-safe; artifacts are read and
    verified outside its lock. `clock` and `ttl_s` are in seconds."""

    def __init__(
        self,
        local: ArtifactStore,
        ring: KeyRing,
        *,
        shared: ArtifactStore | None = None,
        max_entries: int = 16384,
        ttl_s: float = 3600.0,
        index_max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        sink: EventSink | None = None,
        source_id: str = "tezzeret",
    ) -> None:
        if ttl_s <= 0 or index_max_entries < 1:
            raise ValueError(f"ttl_s must be > 0 and index_max_entries >= 1, got {ttl_s} and {index_max_entries}")
        self._local = local
        self._shared = shared
        self._ring = ring
        self._sink: EventSink = sink or NullSink()  # where load_verified reports a refusal
        self._source_id = source_id
        self._ttl_s = ttl_s
        self._index_max = index_max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._l1 = self._memory(max_entries)
        self._l2: OrderedDict[str, _Local] = OrderedDict()  # oldest first
        self._l3: OrderedDict[str, str] = OrderedDict()  # key -> artifact id in the shared store, oldest first
        self._hits = dict.fromkeys(_HIT_LEVELS, 0)
        self._misses = 0
        self._refused = 0

    def _memory(self, max_entries: int) -> TLRUCache[str, _Memory]:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        return TLRUCache(max_entries, lambda _key, value, _now: value.expires_at, timer=self._clock)

    # ------------------------------------------------------------------------------------------------ reading

    def lookup(self, key: str) -> CacheHit | None:
        """The first level that holds a good artifact for `key`, promoted to L1; None on a miss. Never raises for
        what a store holds or fails to read."""
        with self._lock:
            memory = self._l1.get(key)
            if memory is not None:
                self._hits[CacheLevel.L1] += 1
                return CacheHit(CacheLevel.L1, _copy(memory.artifact), memory.published)
            local, remote = self._l2.get(key), self._l3.get(key)
        if local is not None:
            hit = self._from_local(key, local, published=local.published or remote == local.artifact_id)
            if hit is not None:
                return hit
        if remote is not None and self._shared is not None:
            hit = self._from_shared(self._shared, key, remote)
            if hit is not None:
                return hit
        with self._lock:
            self._misses += 1
        return None

    def _from_local(self, key: str, entry: _Local, *, published: bool) -> CacheHit | None:
        verified = self._verified(self._local, key, entry.artifact_id)
        if verified is None:
            self._drop(self._l2, key, entry)
            return None
        try:
            meta = self._share(verified)
        except (ArtifactError, OSError) as e:  # the local artifact is good: the entry stays
            log.warning("cache: %s not answered from L2, the shared store failed: %s", verified.artifact_id, e)
            return None
        return self._promote(CacheLevel.L2, key, meta, published)

    def _from_shared(self, shared: ArtifactStore, key: str, artifact_id: str) -> CacheHit | None:
        verified = self._verified(shared, key, artifact_id)
        if verified is None:
            self._drop(self._l3, key, artifact_id)
            return None
        try:
            self._local.put(artifact_id, _files(verified))  # False when already there: verified when looked up
        except (ArtifactError, OSError) as e:  # the answer still stands: its bytes are in the shared store
            log.warning("cache: %s not copied into the local store: %s", artifact_id, e)
        else:
            with self._lock:
                self._index(self._l2, key, _Local(artifact_id, published=True))
        return self._promote(CacheLevel.L3, key, verified.to_proto(), published=True)

    def _verified(self, store: ArtifactStore, key: str, artifact_id: str) -> VerifiedArtifact | None:
        try:
            verified = load_verified(store, artifact_id, self._ring, self._sink, source_id=self._source_id)
        except ArtifactRefusedError as e:  # load_verified has reported it as a safety event
            log.warning("cache: %s refused: %s", artifact_id, e)
            with self._lock:
                self._refused += 1
            return None
        except (ArtifactError, OSError) as e:  # gone, or unreadable: nothing to distrust, nothing to use
            log.warning("cache: %s unreadable: %s", artifact_id, e)
            return None
        if job_key_of(verified.to_proto()) != key:
            log.warning("cache: %s was indexed under job %s but answers another job", artifact_id, key)
            with self._lock:
                self._refused += 1
            return None
        return verified

    def _share(self, verified: VerifiedArtifact) -> pb.CompiledKernelArtifact:
        """The metadata to answer with: the shared store's copy when there is one (written now if missing)."""
        if self._shared is None:
            return verified.to_proto()
        aid = verified.artifact_id
        if self._shared.put(aid, _files(verified)):
            return replace(verified, store_uri=self._shared.uri(aid)).to_proto()
        # another writer's copy of this id (another signature, another time): describe what is there
        return load_verified(self._shared, aid, self._ring, self._sink, source_id=self._source_id).to_proto()

    def _promote(self, level: CacheLevel, key: str, meta: pb.CompiledKernelArtifact, published: bool) -> CacheHit:
        with self._lock:
            self._remember(key, meta, published)
            self._hits[level] += 1
        return CacheHit(level, _copy(meta), published)

    def _remember(self, key: str, meta: pb.CompiledKernelArtifact, published: bool) -> None:
        if self._l1.maxsize:  # 0: no memory level
            self._l1[key] = _Memory(meta, published, self._clock() + self._ttl_s)

    def _index(self, index: OrderedDict[str, _V], key: str, value: _V) -> None:
        index[key] = value
        index.move_to_end(key)
        while len(index) > self._index_max:
            index.popitem(last=False)

    def _drop(self, index: OrderedDict[str, _V], key: str, value: _V) -> None:
        with self._lock:
            if index.get(key) == value:  # unless another thread has replaced it meanwhile
                del index[key]

    # ------------------------------------------------------------------------------------------------ writing

    def put(self, key: str, artifact: VerifiedArtifact, *, published: bool = False) -> pb.CompiledKernelArtifact:
        """Cache a compile's artifact (already in the local store) in L1 and L2; with a shared store, copy it there.
        Returns the metadata to answer with (the shared store's URI when there is one). ValueError when the
        artifact answers another job; a shared store's failure or refusal is raised."""
        if job_key_of(artifact.to_proto()) != key:
            raise ValueError(f"artifact {artifact.artifact_id} does not answer job {key}")
        meta = self._share(artifact)
        with self._lock:
            self._index(self._l2, key, _Local(artifact.artifact_id, published))
            self._remember(key, meta, published)
        return _copy(meta)

    def record_local(self, key: str, artifact_id: str) -> None:
        """An L2 entry from the WAL at recovery (verified when first looked up)."""
        check_artifact_id(artifact_id)
        with self._lock:
            self._index(self._l2, key, _Local(artifact_id, published=False))

    def mark_published(self, key: str) -> None:
        """The answer that carries the key's kernels record has committed."""
        with self._lock:
            self._set_published(key, None)

    def _set_published(self, key: str, artifact_id: str | None) -> None:
        """Under the lock: the key's L1 and L2 entries (those of `artifact_id` only, when given) are published."""
        memory = self._l1.get(key)
        if memory is not None and artifact_id in (None, memory.artifact.artifact_id):
            self._l1[key] = replace(memory, published=True)
        local = self._l2.get(key)
        if local is not None and artifact_id in (None, local.artifact_id):
            self._l2[key] = replace(local, published=True)

    def observe_kernel(self, artifact: pb.CompiledKernelArtifact) -> None:
        """A record from leyline.kernels: what it names is published, and an artifact in the shared store becomes an
        L3 entry. Records this cache cannot use (foreign, malformed, another store's) are ignored."""
        key = job_key_of(artifact)
        aid = artifact.artifact_id
        try:
            check_artifact_id(aid)
        except InvalidArtifactIdError:
            return
        if key is None:
            return
        in_shared = self._shared is not None and artifact.store_uri == self._shared.uri(aid)
        with self._lock:
            self._set_published(key, aid)
            if in_shared:
                self._index(self._l3, key, aid)

    def scan_local(self) -> int:
        """Index the local store's artifacts in L2 from their manifests (parsed, not yet verified; oldest first, so
        the newest artifact of a key wins); an unreadable one is skipped and logged. Returns the keys indexed."""
        found: list[tuple[int, str, str]] = []
        for aid in self._local.ids():
            try:
                manifest = Manifest.parse(self._local.read(aid, MANIFEST_FILE, MAX_MANIFEST_BYTES), aid)
            except (ArtifactError, OSError) as e:  # MalformedManifestError, an odd directory name, a missing file
                log.warning("cache: %s skipped by the scan: %s", aid, e)
                continue
            key = job_key_of(manifest.to_proto(store_uri="", manifest_sha256="", signature=b""))
            if manifest.artifact_id != aid or key is None:
                log.warning("cache: %s skipped by the scan: not a manifest of this id from a Tezzeret compile", aid)
                continue
            found.append((manifest.created_at_ns, key, aid))
        with self._lock:
            for _, key, aid in sorted(found):
                old = self._l2.get(key)  # a rescan keeps what is known of the same artifact
                self._index(self._l2, key, _Local(aid, published=old == _Local(aid, published=True)))
        return len({key for _, key, _ in found})

    # ------------------------------------------------------------------------------------------------ upkeep

    def cleanup(self) -> int:
        """The TTL sweep: expired L1 entries go. Returns how many. (The L2 and L3 indexes are bounded as they grow,
        oldest first, so they never wait for a sweep.)"""
        with self._lock:
            return len(self._l1.expire())

    def resize(self, max_entries: int) -> None:
        """A new L1 bound (conservative mode halves it): least recently used entries go first, deadlines stay."""
        with self._lock:
            resized = self._memory(max_entries)
            while len(self._l1) > max_entries:
                self._l1.popitem()
            resized.update(self._l1)
            self._l1 = resized

    def stats(self) -> CacheStats:
        with self._lock:
            self._l1.expire()
            entries = {CacheLevel.L1: len(self._l1), CacheLevel.L2: len(self._l2), CacheLevel.L3: len(self._l3)}
            return CacheStats(
                hits=MappingProxyType(dict(self._hits)),
                misses=self._misses,
                refused=self._refused,
                entries=MappingProxyType(entries),
            )
