"""Tezzeret's cache: the job key of a real compile, L1's TTL and bound, L2 across a restart, L3 from the kernels
topic and a shared store, and verification before any L2/L3 hit (a tampered or substituted artifact is a miss)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.compiler.artifacts.address import ReuseKey
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import MANIFEST_FILE, WEIGHTS_FILE
from esper.compiler.artifacts.publish import ArtifactBuild, compiler_version, publish
from esper.compiler.artifacts.store import LocalStore, open_store
from esper.compiler.artifacts.verify import VerifiedArtifact
from esper.compiler.artifacts.weights import encode_weights
from esper.compiler.compile import compile_blueprint
from esper.compiler.exceptions import UnsupportedStoreError
from esper.compiler.ir.canonical import canonical_bytes
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import SandboxExecutor
from esper.compiler.service.cache import ArtifactCache, job_key, job_key_of, service_job_key
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CacheLevel, CompilationStrategy
from esper.safety.clock import ManualClock
from tests.ir_samples import EXAMPLES
from tests.sinks import MemorySink

L1, L2, L3 = CacheLevel.L1, CacheLevel.L2, CacheLevel.L3
TTL = 60.0


def reuse_key(seed: int = 0, torch_version: str = "2.15.0+gitabc") -> ReuseKey:
    return ReuseKey(
        torch_version=torch_version,
        device="cpu",
        device_name="Some CPU",
        cuda_version="",
        triton_version="",
        num_threads=2,
        dtype="FLOAT32",
        input_shape=(-1, 8),
        input_dtype="FLOAT32",
        input_requires_grad=True,
        compile_options=(("backend", "eager"), ("seed", str(seed)), ("tezzeret", compiler_version())),
    )


def stored(store: LocalStore, ring: KeyRing, ir: bytes = b"\x0a\x04bp-1", seed: int = 0) -> VerifiedArtifact:
    build = ArtifactBuild(
        blueprint_id="bp-1",
        tier=CompilationStrategy.EMERGENCY,
        ir=ir,
        reuse_key=reuse_key(seed),
        weights=encode_weights({"w": torch.ones(2)}),
        compiled={},
        has_backward=True,
    )
    return publish(store, build, ring, MemorySink())


def key_of(artifact: VerifiedArtifact) -> str:
    key = job_key_of(artifact.to_proto())
    assert key is not None
    return key


def levels(cache: ArtifactCache, keys: Iterable[str]) -> list[CacheLevel | None]:
    return [hit.level if (hit := cache.lookup(k)) else None for k in keys]


def published(cache: ArtifactCache, keys: Iterable[str]) -> list[bool | None]:
    return [hit.published if (hit := cache.lookup(k)) else None for k in keys]


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing(tmp_path / "keys")
    ring.generate()
    return ring


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "local")


@pytest.fixture
def shared(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "shared")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


# ---------------------------------------------------------------- the job key


@pytest.fixture(scope="module")
def executor() -> Iterator[SandboxExecutor]:
    with SandboxExecutor(1) as ex:
        ex.wait_ready()
        yield ex


def test_the_service_key_of_a_real_compile_is_its_artifacts_and_finds_it_after_a_restart(
    executor: SandboxExecutor, ring: KeyRing, local: LocalStore
) -> None:
    validated = SecurityValidator().validate(load_blueprint(EXAMPLES / "mlp.yaml"))
    ir = canonical_bytes(validated)
    report = compile_blueprint(
        validated, CompilationStrategy.EMERGENCY, executor=executor, store=local, ring=ring, sink=MemorySink(), seed=3
    )
    key = service_job_key(ir, CompilationStrategy.EMERGENCY, 3)
    assert job_key_of(report.artifact.to_proto()) == key
    assert service_job_key(ir, CompilationStrategy.EMERGENCY, 4) != key
    assert service_job_key(ir, CompilationStrategy.FAST, 3) != key
    assert (
        service_job_key(ir, CompilationStrategy.EMERGENCY, 3, "cuda:1")
        == service_job_key(ir, CompilationStrategy.EMERGENCY, 3, "cuda")
        != key
    )

    ArtifactCache(local, ring).put(key, report.artifact)
    restarted = ArtifactCache(local, ring)
    assert restarted.lookup(key) is None  # nothing indexed before the scan
    assert restarted.scan_local() == 1
    hit = restarted.lookup(key)
    assert hit is not None and hit.level is L2 and hit.artifact.artifact_id == report.artifact.artifact_id


def test_every_field_of_the_job_key_changes_it() -> None:
    def key(
        ir: str = "a" * 64,
        strategy: CompilationStrategy = CompilationStrategy.FAST,
        seed: int = 0,
        device: str = "cpu",
        torch_version: str = "2.9",
        compiler: str = "0.1.0",
    ) -> str:
        return job_key(
            ir_sha256=ir,
            strategy=strategy,
            seed=seed,
            device=device,
            torch_version=torch_version,
            compiler_version=compiler,
        )

    variants = [
        key(ir="b" * 64),
        key(strategy=CompilationStrategy.STANDARD),
        key(seed=1),
        key(device="cuda"),
        key(torch_version="2.10"),
        key(compiler="0.2.0"),
    ]
    assert key() == key() and len({key(), *variants}) == 1 + len(variants)
    with pytest.raises(TypeError):
        key(seed=True)


def test_a_record_missing_or_mangling_a_key_field_has_no_key(ring: KeyRing, local: LocalStore) -> None:
    good = stored(local, ring).to_proto()
    assert job_key_of(good) is not None

    def variant(edit: Callable[[pb.CompiledKernelArtifact], object]) -> pb.CompiledKernelArtifact:
        msg = pb.CompiledKernelArtifact()
        msg.CopyFrom(good)
        edit(msg)
        return msg

    def cleared(field: str) -> pb.CompiledKernelArtifact:
        return variant(lambda m: m.ClearField(field))

    def with_options(pairs: list[tuple[str, str]]) -> pb.CompiledKernelArtifact:
        msg = variant(lambda m: m.ClearField("compile_options"))
        msg.compile_options.extend(pb.KeyValue(key=k, value=v) for k, v in pairs)
        return msg

    options = [(kv.key, kv.value) for kv in good.compile_options]
    bad = [
        *(cleared(f) for f in ("blueprint_sha256", "strategy", "device", "torch_version")),
        variant(lambda m: setattr(m, "blueprint_sha256", m.blueprint_sha256.upper())),
        variant(lambda m: setattr(m, "strategy", 99)),
        with_options([kv for kv in options if kv[0] != "seed"]),
        with_options([kv for kv in options if kv[0] != "tezzeret"]),
        with_options([*options, ("seed", "1")]),  # two seeds: which was compiled?
        with_options([(k, "07" if k == "seed" else v) for k, v in options]),
        with_options([(k, "x" if k == "seed" else v) for k, v in options]),
    ]
    assert [job_key_of(m) for m in bad] == [None] * len(bad)


# ---------------------------------------------------------------- L1


def test_l1_expires_after_its_ttl_and_the_sweep_counts_what_went(
    ring: KeyRing, local: LocalStore, clock: ManualClock
) -> None:
    cache = ArtifactCache(local, ring, ttl_s=TTL, clock=clock)
    art = stored(local, ring)
    key = key_of(art)
    cache.put(key, art)
    clock.advance(TTL - 0.001)
    hit = cache.lookup(key)
    assert hit is not None and hit.level is L1
    clock.advance(0.001)
    assert cache.cleanup() == 1 and cache.stats().entries[L1] == 0
    hit = cache.lookup(key)
    assert hit is not None and hit.level is L2  # verified from the local store, then promoted
    hit = cache.lookup(key)
    assert hit is not None and hit.level is L1
    assert cache.cleanup() == 0


def test_l1_holds_at_most_its_bound_and_a_resize_keeps_each_deadline(
    ring: KeyRing, local: LocalStore, clock: ManualClock
) -> None:
    cache = ArtifactCache(local, ring, max_entries=2, ttl_s=TTL, clock=clock)
    arts = [stored(local, ring, ir=bytes([i])) for i in range(3)]
    keys = [key_of(a) for a in arts]
    for key, art in zip(keys, arts, strict=True):
        cache.put(key, art)
        clock.advance(1)
    assert cache.stats().entries == {L1: 2, L2: 3, L3: 0}
    assert levels(cache, reversed(keys)) == [
        L1,
        L1,
        L2,
    ]  # the first was evicted; its promotion (at 1003) evicts the third
    cache.resize(1)  # the least recently used goes (the second); the first stays, with its deadline
    assert cache.stats().entries[L1] == 1
    clock.set(1003 + TTL)
    assert cache.cleanup() == 1
    cache.resize(0)  # no memory level at all
    assert levels(cache, keys) == [L2, L2, L2]
    assert cache.stats().entries[L1] == 0


def test_a_hit_is_a_copy_the_caller_may_change(ring: KeyRing, local: LocalStore) -> None:
    cache = ArtifactCache(local, ring)
    art = stored(local, ring)
    cache.put(key_of(art), art).store_uri = "changed"
    first = cache.lookup(key_of(art))
    assert first is not None
    first.artifact.store_uri = "changed too"
    again = cache.lookup(key_of(art))
    assert again is not None and again.artifact.store_uri == local.uri(art.artifact_id)


# ---------------------------------------------------------------- L2


def test_l2_answers_after_a_restart_from_the_scan_or_the_wal(ring: KeyRing, local: LocalStore) -> None:
    arts = [stored(local, ring, seed=s) for s in range(3)]
    first = ArtifactCache(local, ring)
    for art in arts:
        first.put(key_of(art), art)
    (local.root / "not-an-id").mkdir()
    (local.root / ("0" * 64)).mkdir()  # no manifest
    scanned = ArtifactCache(local, ring)
    assert scanned.scan_local() == 3
    for art in arts:
        hit = scanned.lookup(key_of(art))
        assert hit is not None and hit.level is L2 and not hit.published
        assert hit.artifact == art.to_proto()
    from_wal = ArtifactCache(local, ring)
    from_wal.record_local(key_of(arts[0]), arts[0].artifact_id)
    hit = from_wal.lookup(key_of(arts[0]))
    assert hit is not None and hit.level is L2
    assert from_wal.lookup(key_of(arts[1])) is None
    stats = from_wal.stats()
    assert (stats.hits[L2], stats.misses, stats.lookups, stats.hit_rate(L2)) == (1, 1, 2, 0.5)


def test_a_tampered_artifact_is_a_miss_and_its_entry_goes(ring: KeyRing, local: LocalStore) -> None:
    art = stored(local, ring)
    sink = MemorySink()
    cache = ArtifactCache(local, ring, sink=sink, source_id="tezzeret-7")
    assert cache.scan_local() == 1
    weights = local.root / art.artifact_id / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    assert cache.lookup(key_of(art)) is None
    [event] = sink.events
    assert event.severity == pb.TELEMETRY_CRITICAL and event.source_id == "tezzeret-7"
    assert "HashMismatchError" in event.message
    stats = cache.stats()
    assert (stats.refused, stats.misses, stats.entries[L2]) == (1, 1, 0)


def test_an_artifact_indexed_under_another_job_is_a_miss(ring: KeyRing, local: LocalStore) -> None:
    a, b = stored(local, ring, seed=1), stored(local, ring, seed=2)
    cache = ArtifactCache(local, ring)
    cache.record_local(key_of(a), b.artifact_id)  # genuine, signed, and the answer to another job
    assert cache.lookup(key_of(a)) is None and cache.stats().refused == 1
    with pytest.raises(ValueError, match="does not answer"):
        cache.put(key_of(a), b)


def test_a_scan_skips_manifests_it_cannot_parse(ring: KeyRing, local: LocalStore) -> None:
    good, bad = stored(local, ring, seed=1), stored(local, ring, seed=2)
    (local.root / bad.artifact_id / MANIFEST_FILE).write_bytes(b"\x80 not json")
    cache = ArtifactCache(local, ring)
    assert cache.scan_local() == 1
    assert cache.lookup(key_of(good)) is not None and cache.lookup(key_of(bad)) is None


def test_published_is_known_from_the_commit_or_the_kernels_topic(
    ring: KeyRing, local: LocalStore, clock: ManualClock
) -> None:
    a, b = stored(local, ring, seed=1), stored(local, ring, seed=2)
    cache = ArtifactCache(local, ring, ttl_s=TTL, clock=clock)
    cache.put(key_of(a), a)
    meta_b = cache.put(key_of(b), b)
    assert published(cache, [key_of(a), key_of(b)]) == [False, False]
    cache.mark_published(key_of(a))
    cache.observe_kernel(meta_b)  # its own record, read back from leyline.kernels
    clock.advance(TTL)  # out of L1: L2 remembers too
    hits = [cache.lookup(k) for k in (key_of(a), key_of(b))]
    assert [(h.level, h.published) for h in hits if h] == [(L2, True), (L2, True)]


# ---------------------------------------------------------------- L3


def test_l3_answers_from_a_shared_store_named_on_the_kernels_topic(
    ring: KeyRing, local: LocalStore, shared: LocalStore, tmp_path: Path
) -> None:
    producer = ArtifactCache(local, ring, shared=shared)
    art = stored(local, ring)
    meta = producer.put(key_of(art), art)
    assert meta.store_uri == shared.uri(art.artifact_id) and shared.exists(art.artifact_id)

    other_local = LocalStore(tmp_path / "other-local")
    consumer = ArtifactCache(other_local, ring, shared=shared)
    consumer.observe_kernel(meta)
    hit = consumer.lookup(key_of(art))
    assert hit is not None and (hit.level, hit.published) == (L3, True) and hit.artifact == meta
    assert other_local.exists(art.artifact_id)  # copied in: after a restart it is an L2 hit
    restarted = ArtifactCache(other_local, ring, shared=shared)
    assert restarted.scan_local() == 1
    hit = restarted.lookup(key_of(art))
    assert hit is not None and hit.level is L2 and hit.artifact.store_uri == meta.store_uri

    elsewhere = pb.CompiledKernelArtifact()
    elsewhere.CopyFrom(meta)
    elsewhere.store_uri = local.uri(art.artifact_id)  # another host's private store: nothing to fetch
    with_shared = ArtifactCache(LocalStore(tmp_path / "third"), ring, shared=shared)
    with_shared.observe_kernel(elsewhere)
    no_shared = ArtifactCache(LocalStore(tmp_path / "fourth"), ring)
    no_shared.observe_kernel(meta)
    for cache in (with_shared, no_shared):
        assert cache.stats().entries[L3] == 0 and cache.lookup(key_of(art)) is None


def test_an_id_another_writer_put_in_the_shared_store_is_answered_as_stored_there(
    ring: KeyRing, local: LocalStore, shared: LocalStore, tmp_path: Path
) -> None:
    their_local = LocalStore(tmp_path / "theirs")
    first = stored(their_local, ring)
    ArtifactCache(their_local, ring, shared=shared).put(key_of(first), first)
    mine = stored(local, ring)  # the same id, signed at another time: other manifest bytes
    assert mine.artifact_id == first.artifact_id and mine.manifest_bytes != first.manifest_bytes
    meta = ArtifactCache(local, ring, shared=shared).put(key_of(mine), mine)
    assert meta.sha256 == hashlib.sha256(first.manifest_bytes).hexdigest() and meta.signature == first.signature
    assert meta.store_uri == shared.uri(first.artifact_id)


def test_a_kernels_record_naming_another_jobs_artifact_is_a_miss(
    ring: KeyRing, local: LocalStore, shared: LocalStore, tmp_path: Path
) -> None:
    a, b = stored(shared, ring, seed=1), stored(shared, ring, seed=2)
    forged = a.to_proto()
    forged.artifact_id = b.artifact_id  # a's key fields, b's genuine signed artifact
    forged.store_uri = shared.uri(b.artifact_id)
    cache = ArtifactCache(local, ring, shared=shared)
    cache.observe_kernel(forged)
    assert cache.stats().entries[L3] == 1
    assert cache.lookup(key_of(a)) is None
    stats = cache.stats()
    assert (stats.refused, stats.entries[L3]) == (1, 0) and not local.exists(b.artifact_id)


def test_the_indexes_are_bounded_oldest_first(ring: KeyRing, local: LocalStore, shared: LocalStore) -> None:
    arts = [stored(shared, ring, seed=s) for s in range(5)]
    cache = ArtifactCache(local, ring, shared=shared, index_max_entries=3)
    for art in arts:
        cache.observe_kernel(art.to_proto())
        cache.record_local(key_of(art), art.artifact_id)
    assert cache.stats().entries == {L1: 0, L2: 3, L3: 3}
    assert [cache.lookup(key_of(a)) is None for a in arts] == [True, True, False, False, False]


def test_hostile_kernels_records_never_raise(ring: KeyRing, local: LocalStore, shared: LocalStore) -> None:
    genuine = stored(shared, ring)
    cache = ArtifactCache(local, ring, shared=shared)
    hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
    texts = st.one_of(st.text(max_size=80), hexes, st.just(genuine.artifact_id))
    options = st.lists(
        st.builds(
            lambda k, v: pb.KeyValue(key=k, value=v),
            st.one_of(st.sampled_from(["seed", "tezzeret", "backend"]), st.text(max_size=10)),
            st.one_of(st.text(max_size=10), st.integers().map(str)),
        ),
        max_size=5,
    )
    records = st.builds(
        lambda aid, sha, strategy, uri, device, torch_version, opts: pb.CompiledKernelArtifact(
            artifact_id=aid,
            blueprint_sha256=sha,
            strategy=strategy,
            store_uri=uri,
            device=device,
            torch_version=torch_version,
            compile_options=opts,
        ),
        texts,
        texts,
        st.integers(-(2**31), 2**31 - 1),
        st.one_of(st.text(max_size=40), hexes.map(lambda h: shared.uri(h)), st.just(shared.uri(genuine.artifact_id))),
        st.sampled_from(["cpu", "cuda", ""]),
        st.sampled_from(["2.9", ""]),
        options,
    )
    garbage = st.binary(max_size=200).map(
        lambda data: pb.CompiledKernelArtifact.FromString(data) if _parses(data) else pb.CompiledKernelArtifact()
    )

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(records, garbage))
    def check(record: pb.CompiledKernelArtifact) -> None:
        cache.observe_kernel(record)
        key = job_key_of(record)
        if key is not None:
            assert cache.lookup(key) is None  # none of them answers its own claim

    check()
    assert cache.stats().hits == {L1: 0, L2: 0, L3: 0}


def _parses(data: bytes) -> bool:
    try:
        pb.CompiledKernelArtifact.FromString(data)
    except DecodeError:
        return False
    return True


# ---------------------------------------------------------------- open_store


def test_open_store_opens_file_stores_only(ring: KeyRing, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a store%")
    art = stored(store, ring)
    uri = store.root.resolve().as_uri()
    assert "%20" in uri and store.uri(art.artifact_id).startswith(uri + "/")
    for given_uri in (uri, str(store.root), uri.replace("file://", "file://localhost")):
        reopened = open_store(given_uri)
        assert reopened.uri(art.artifact_id) == store.uri(art.artifact_id) and reopened.ids() == [art.artifact_id]
    for bad in ("s3://bucket/artifacts", "gs://bucket", "file://host/share", "file:relative", "https://x/y", ""):
        with pytest.raises(UnsupportedStoreError):
            open_store(bad)
    assert issubclass(UnsupportedStoreError, ValueError)
    with pytest.raises(UnsupportedStoreError, match="only file stores"):
        open_store("s3://bucket")
