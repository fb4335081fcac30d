"""Artifacts: content addresses, signed manifests, the key ring, atomic writes, and verify before load."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from esper.compiler.artifacts.address import ReuseKey, artifact_id, current_reuse_key
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest, check_file_name
from esper.compiler.artifacts.publish import ArtifactBuild, publish
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.artifacts.verify import load_verified
from esper.compiler.artifacts.weights import encode_weights
from esper.compiler.exceptions import (
    ArtifactNotFoundError,
    ArtifactRefusedError,
    BadSignatureError,
    HashMismatchError,
    InvalidArtifactIdError,
    KeyRingError,
    MalformedManifestError,
    ManifestMismatchError,
    MissingFileError,
    RetiredKeyError,
    UnexpectedFileError,
    UnknownKeyError,
)
from esper.compiler.fsio import OsFs
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy
from tests.sinks import MemorySink

KEY = ReuseKey(
    torch_version="2.15.0+gitabc",
    device="cpu",
    device_name="Some CPU",
    cuda_version="",
    triton_version="3.9.0",
    num_threads=2,
    dtype="FLOAT32",
    input_shape=(-1, 128, 256),
    input_dtype="FLOAT32",
    input_requires_grad=True,
    compile_options=(("fullgraph", "True"), ("dynamic", "False")),
)
MEGACACHE = "megacache.bin"


def make_build(ir: bytes = b"\x0a\x04bp-1", weight: float = 1.0, **changes: object) -> ArtifactBuild:
    weights = encode_weights({"lin.weight": torch.full((4, 3), weight), "lin.bias": torch.zeros(4)})
    build = ArtifactBuild(
        blueprint_id="bp-1",
        tier=CompilationStrategy.STANDARD,
        ir=ir,
        reuse_key=KEY,
        weights=weights,
        compiled={MEGACACHE: b"mega" * 100, "inductor-cache.tar.gz": b"tar" * 50},
        has_backward=True,
    )
    return replace(build, **changes)  # type: ignore[arg-type]


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing(tmp_path / "keys")
    ring.generate()
    return ring


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_the_id_covers_ir_tier_and_every_reuse_field_but_not_the_weights() -> None:
    base = make_build()
    assert base.artifact_id == artifact_id(base.ir, base.tier, KEY)
    assert make_build(weight=2.0).artifact_id == base.artifact_id  # torch's cache does not key on weights
    changed = {
        make_build(ir=b"\x0a\x04bp-2").artifact_id,
        make_build(tier=CompilationStrategy.FAST).artifact_id,
        *(
            make_build(reuse_key=replace(KEY, **{field: value})).artifact_id  # type: ignore[arg-type]
            for field, value in [
                ("torch_version", "2.15.0+gitdef"),
                ("device", "cuda"),
                ("device_name", "NVIDIA H200"),
                ("cuda_version", "13.2"),
                ("triton_version", ""),
                ("num_threads", 1),
                ("dtype", "BFLOAT16"),
                ("input_shape", (8, 128, 256)),
                ("input_dtype", "FLOAT16"),
                ("input_requires_grad", False),
                ("compile_options", (("fullgraph", "True"), ("dynamic", "True"))),
            ]
        ),
    }
    assert len(changed) == 13 and base.artifact_id not in changed
    reordered = replace(KEY, compile_options=(("dynamic", "False"), ("fullgraph", "True")))
    assert artifact_id(base.ir, base.tier, reordered) == base.artifact_id  # options are sorted


def test_the_reuse_key_reads_this_process() -> None:
    def key() -> ReuseKey:
        return current_reuse_key(
            device="cpu",
            dtype="FLOAT32",
            input_shape=(8, 4),
            input_dtype="FLOAT32",
            input_requires_grad=True,
            compile_options={"fullgraph": "True"},
        )

    k = key()
    assert k.torch_version == f"{torch.__version__}+git{torch.version.git_version}"
    assert (k.device, k.num_threads, k.cuda_version) == ("cpu", torch.get_num_threads(), torch.version.cuda or "")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert key().num_threads == threads + 1 and key() != k
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError):
        replace(KEY, dtype="float32")


def test_publish_writes_a_signed_directory_that_verifies(store: LocalStore, ring: KeyRing) -> None:
    sink = MemorySink()
    build = make_build()
    art = publish(store, build, ring, sink)
    aid = build.artifact_id
    assert store.ids() == [aid] and art.artifact_id == aid
    assert store.names(aid) == [
        "compiled/inductor-cache.tar.gz",
        "compiled/megacache.bin",
        "ir.pb",
        MANIFEST_FILE,
        SIGNATURE_FILE,
        "weights.safetensors",
    ]
    root = store.root / aid
    manifest = json.loads((root / MANIFEST_FILE).read_bytes())
    assert manifest["key_id"] == ring.signing_key_id() and manifest["algorithm"] == "ed25519"
    assert {f["name"]: f["sha256"] for f in manifest["files"]}["ir.pb"] == hashlib.sha256(build.ir).hexdigest()
    assert art.ir == build.ir and art.files["compiled/megacache.bin"] == build.compiled[MEGACACHE]
    assert torch.equal(art.weights()["lin.weight"], torch.ones(4, 3))
    record = art.to_proto()
    assert (record.artifact_id, record.strategy, record.key_id) == (aid, pb.STRATEGY_STANDARD, ring.signing_key_id())
    assert record.signature == (root / SIGNATURE_FILE).read_bytes()
    assert record.sha256 == hashlib.sha256((root / MANIFEST_FILE).read_bytes()).hexdigest()
    assert list(record.input.shape) == [-1, 128, 256] and record.input.dtype == pb.DTYPE_FLOAT32
    assert [(kv.key, kv.value) for kv in record.compile_options] == [("dynamic", "False"), ("fullgraph", "True")]
    assert record.has_backward and record.store_uri == root.resolve().as_uri()
    assert record.size_bytes == sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) - len(
        (root / MANIFEST_FILE).read_bytes()
    ) - len(record.signature)
    assert sink.events == []  # a good artifact reports nothing


def test_an_existing_id_is_verified_not_rewritten(store: LocalStore, ring: KeyRing) -> None:
    first = publish(store, make_build(weight=1.0), ring, MemorySink())
    again = publish(store, make_build(weight=2.0), ring, MemorySink())  # same id: the stored bytes stand
    assert again.files == first.files and torch.equal(again.weights()["lin.weight"], torch.ones(4, 3))
    (store.root / first.artifact_id / "ir.pb").write_bytes(b"tampered")
    with pytest.raises(HashMismatchError):
        publish(store, make_build(), ring, MemorySink())


def test_the_key_ring_rotates_and_retires(tmp_path: Path, store: LocalStore) -> None:
    ring = KeyRing(tmp_path / "ring")
    with pytest.raises(KeyRingError):
        ring.signer()
    old = ring.generate()
    a = publish(store, make_build(ir=b"a"), ring, MemorySink())
    new = ring.generate()
    b = publish(store, make_build(ir=b"b"), ring, MemorySink())
    assert (a.manifest.key_id, b.manifest.key_id, ring.signing_key_id()) == (old, new, new)
    load_verified(store, a.artifact_id, ring, MemorySink())  # an old key verifies until retired
    assert stat.S_IMODE(os.stat(ring.directory / f"{new}.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ring.directory).st_mode) == 0o700
    assert len(new) == 16 and old != new
    ring.retire(old)
    with pytest.raises(RetiredKeyError):
        load_verified(store, a.artifact_id, ring, MemorySink())
    load_verified(store, b.artifact_id, ring, MemorySink())
    ring.retire(new)
    with pytest.raises(KeyRingError):
        ring.signer()
    assert [(k.key_id, k.signing, k.retired) for k in ring.key_infos()] == sorted(
        [(old, False, True), (new, False, True)]
    )


# ---------------------------------------------------------------- refusals: each a typed error and a safety event


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _resign(root: Path, ring: KeyRing, edit: Callable[[dict[str, object]], None], raw: bool = False) -> None:
    """Rewrite the manifest (edited, or as non-canonical JSON) and sign it with the ring's real key."""
    manifest = json.loads((root / MANIFEST_FILE).read_bytes())
    edit(manifest)
    body = (
        json.dumps(manifest, indent=1).encode()
        if raw
        else json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    )
    (root / MANIFEST_FILE).write_bytes(body)
    (root / SIGNATURE_FILE).write_bytes(ring.signer().sign(body))


def _foreign_signature(root: Path, tmp: Path) -> None:
    """An attacker's own key: a consistent manifest, validly signed, by a key the ring does not hold."""
    attacker = KeyRing(tmp / "attacker")
    key_id = attacker.generate()
    manifest = json.loads((root / MANIFEST_FILE).read_bytes())
    manifest["key_id"] = key_id
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    (root / MANIFEST_FILE).write_bytes(body)
    (root / SIGNATURE_FILE).write_bytes(attacker.signer().sign(body))


def _set_id(m: dict[str, object]) -> None:
    m["artifact_id"] = "0" * 64


def _add_duplicate(m: dict[str, object]) -> None:
    m["files"] = [*m["files"], m["files"][0]]  # type: ignore[misc]


TAMPERS: dict[str, tuple[Callable[[Path, KeyRing, Path], None], type[ArtifactRefusedError]]] = {
    "flipped byte in ir.pb": (lambda r, k, t: _flip(r / "ir.pb"), HashMismatchError),
    "flipped byte in weights": (lambda r, k, t: _flip(r / "weights.safetensors"), HashMismatchError),
    "flipped byte in a compiled blob": (lambda r, k, t: _flip(r / "compiled" / MEGACACHE), HashMismatchError),
    "flipped byte in the manifest": (lambda r, k, t: _flip(r / MANIFEST_FILE), BadSignatureError),
    "flipped byte in the signature": (lambda r, k, t: _flip(r / SIGNATURE_FILE), BadSignatureError),
    "truncated blob": (lambda r, k, t: (r / "compiled" / MEGACACHE).write_bytes(b"mega"), HashMismatchError),
    "missing blob": (lambda r, k, t: (r / "compiled" / MEGACACHE).unlink(), MissingFileError),
    "missing weights": (lambda r, k, t: (r / "weights.safetensors").unlink(), MissingFileError),
    "missing manifest": (lambda r, k, t: (r / MANIFEST_FILE).unlink(), MissingFileError),
    "missing signature": (lambda r, k, t: (r / SIGNATURE_FILE).unlink(), MissingFileError),
    "extra file": (lambda r, k, t: (r / "compiled" / "extra.py").write_bytes(b"import os"), UnexpectedFileError),
    "blob replaced by a link": (
        lambda r, k, t: ((r / "compiled" / MEGACACHE).unlink(), (r / "compiled" / MEGACACHE).symlink_to(r / "ir.pb")),
        UnexpectedFileError,
    ),
    "blob replaced by a FIFO": (
        lambda r, k, t: ((r / "compiled" / MEGACACHE).unlink(), os.mkfifo(r / "compiled" / MEGACACHE)),
        UnexpectedFileError,
    ),
    "signed by an unknown key": (lambda r, k, t: _foreign_signature(r, t), UnknownKeyError),
    "another algorithm": (lambda r, k, t: _resign(r, k, lambda m: m.update(algorithm="sha256")), UnknownKeyError),
    "retired key": (lambda r, k, t: k.retire(k.signing_key_id() or ""), RetiredKeyError),
    "signed manifest naming another id": (lambda r, k, t: _resign(r, k, _set_id), ManifestMismatchError),
    "signed manifest whose reuse key gives another id": (
        lambda r, k, t: _resign(r, k, lambda m: m["reuse_key"].update(num_threads=1)),  # type: ignore[attr-defined]
        ManifestMismatchError,
    ),
    "signed manifest, not canonical": (lambda r, k, t: _resign(r, k, lambda m: None, raw=True), MalformedManifestError),
    "signed manifest, a file twice": (lambda r, k, t: _resign(r, k, _add_duplicate), MalformedManifestError),
    "garbage manifest": (lambda r, k, t: (r / MANIFEST_FILE).write_bytes(b"\x80garbage"), MalformedManifestError),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_tampered_artifact_is_refused_with_a_safety_event(
    case: str, store: LocalStore, ring: KeyRing, tmp_path: Path
) -> None:
    tamper, refusal = TAMPERS[case]
    art = publish(store, make_build(), ring, MemorySink())
    tamper(store.root / art.artifact_id, ring, tmp_path)
    sink = MemorySink()
    with pytest.raises(refusal) as caught:
        load_verified(store, art.artifact_id, ring, sink, source_id="tezzeret-0")
    assert type(caught.value) is refusal and caught.value.artifact_id == art.artifact_id
    [event] = sink.events
    assert (event.subsystem, event.source_id, event.severity) == ("tezzeret", "tezzeret-0", pb.TELEMETRY_CRITICAL)
    assert refusal.__name__ in event.message and art.artifact_id in event.message


def test_a_swapped_manifest_is_refused(store: LocalStore, ring: KeyRing) -> None:
    a = publish(store, make_build(ir=b"a"), ring, MemorySink())
    b = publish(store, make_build(ir=b"b"), ring, MemorySink())
    for name in (MANIFEST_FILE, SIGNATURE_FILE):  # a's genuine, validly signed manifest in b's directory
        shutil.copy(store.root / a.artifact_id / name, store.root / b.artifact_id / name)
    sink = MemorySink()
    with pytest.raises(ManifestMismatchError):
        load_verified(store, b.artifact_id, ring, sink)
    assert len(sink.events) == 1


def _malicious_megacache(marker: Path) -> bytes:
    """A Mega-Cache blob whose one inductor entry has an absolute path for a key: `load_cache_artifacts` writes it
    under that path (TORCH-NOTES, trust). Built with torch's own serializer, so it is a blob torch accepts."""
    from torch.compiler._cache import CacheArtifactFactory, CacheArtifactManager, _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    out = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    out.append(("inductor", [CacheArtifactFactory.create("inductor", str(marker), b"pwned")]))
    return out.to_bytes()


def test_a_malicious_cache_entry_is_refused_before_anything_loads_it(
    store: LocalStore, ring: KeyRing, tmp_path: Path
) -> None:
    control = tmp_path / "control-marker"
    torch.compiler.load_cache_artifacts(_malicious_megacache(control))
    [written] = control.iterdir()  # the blob really writes outside the cache dir when loaded: <key>/<hash>
    assert written.read_bytes() == b"pwned"

    marker = tmp_path / "marker"
    art = publish(store, make_build(), ring, MemorySink())
    root = store.root / art.artifact_id
    evil = _malicious_megacache(marker)
    (root / "compiled" / MEGACACHE).write_bytes(evil)  # swapped in, not re-signed
    with pytest.raises(HashMismatchError):
        load_verified(store, art.artifact_id, ring, MemorySink())
    # the attacker also fixes the manifest's hash and size: the signature no longer verifies
    manifest = json.loads((root / MANIFEST_FILE).read_bytes())
    for f in manifest["files"]:
        if f["name"] == f"compiled/{MEGACACHE}":
            f.update(sha256=hashlib.sha256(evil).hexdigest(), size=len(evil))
    (root / MANIFEST_FILE).write_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(BadSignatureError):
        load_verified(store, art.artifact_id, ring, MemorySink())
    _foreign_signature(root, tmp_path)  # and signs it with a key of their own
    with pytest.raises(UnknownKeyError):
        load_verified(store, art.artifact_id, ring, MemorySink())
    assert not marker.exists()


def test_ids_are_checked_before_they_reach_a_path(store: LocalStore, ring: KeyRing) -> None:
    for bad in ("../../etc", "A" * 64, "0" * 63, ""):
        with pytest.raises(InvalidArtifactIdError):
            load_verified(store, bad, ring, MemorySink())
    with pytest.raises(ArtifactNotFoundError):
        load_verified(store, "0" * 64, ring, MemorySink())
    for bad in ("../x", "/etc/passwd", "compiled/a/b", "compiled/../x", MANIFEST_FILE, ".hidden"):
        with pytest.raises(ValueError):
            check_file_name(bad)
    with pytest.raises(ValueError):
        publish(store, make_build(compiled={"../../escape": b"x"}), ring, MemorySink())
    assert store.ids() == []


class _FailingFs(OsFs):
    """The real OS, but the call named `fail` raises EIO (a dying disk)."""

    def __init__(self, fail: str) -> None:
        self.fail = fail

    def fsync(self, fd: int) -> None:
        if self.fail == "fsync":
            raise OSError(errno.EIO, "injected")
        super().fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        if self.fail == "rename":
            raise OSError(errno.EIO, "injected")
        super().rename(src, dst)


@pytest.mark.parametrize("fail", ["fsync", "rename"])
def test_a_failed_write_leaves_no_artifact_and_no_temporary(tmp_path: Path, ring: KeyRing, fail: str) -> None:
    root = tmp_path / "store"
    with pytest.raises(OSError):
        publish(LocalStore(root, fs=_FailingFs(fail)), make_build(), ring, MemorySink())
    assert os.listdir(root) == []
    (root / ".tmp-left-by-a-crash").mkdir()  # what a power cut mid-write leaves: never listed, never verified
    store = LocalStore(root)
    assert store.ids() == []
    art = publish(store, make_build(), ring, MemorySink())
    assert store.ids() == [art.artifact_id]


def test_a_writer_that_loses_the_race_keeps_the_winners_artifact(tmp_path: Path, ring: KeyRing) -> None:
    root = tmp_path / "store"
    winner = LocalStore(root)

    class Racing(OsFs):
        """Another process publishes the same id between this writer's check and its rename."""

        def rename(self, src: str, dst: str) -> None:
            if Path(src).name.startswith(".tmp-") and Path(src).is_dir():
                publish(winner, make_build(weight=3.0), ring, MemorySink())
            super().rename(src, dst)

    art = publish(LocalStore(root, fs=Racing()), make_build(weight=1.0), ring, MemorySink())
    assert torch.equal(art.weights()["lin.weight"], torch.full((4, 3), 3.0))  # the winner's bytes, verified
    assert os.listdir(root) == [art.artifact_id]  # the loser's temporary folder is gone


def test_manifest_parse_accepts_only_canonical_bytes(store: LocalStore, ring: KeyRing) -> None:
    art = publish(store, make_build(), ring, MemorySink())
    assert Manifest.parse(art.manifest_bytes, art.artifact_id) == art.manifest
    assert art.manifest.to_bytes() == art.manifest_bytes
    wrong_type = art.manifest_bytes.replace(b'"num_threads":2', b'"num_threads":"2"')
    assert wrong_type != art.manifest_bytes
    with pytest.raises(MalformedManifestError):
        Manifest.parse(wrong_type, art.artifact_id)
