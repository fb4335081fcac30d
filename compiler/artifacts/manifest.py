"""The signed manifest: the reuse key, every file's sha256 and size, the signing key's id; canonical JSON bytes.

The signature covers the manifest's exact bytes, and the manifest covers every file, so one signature check and one
hash per file prove the whole artifact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from esper.compiler.artifacts.address import ReuseKey, canonical_json, check_field_types
from esper.compiler.exceptions import MalformedManifestError
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy, DType

__all__ = [
    "ALGORITHM",
    "COMPILED_DIR",
    "IR_FILE",
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "SIGNATURE_FILE",
    "WEIGHTS_FILE",
    "FileEntry",
    "Manifest",
    "check_file_name",
]

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
IR_FILE = "ir.pb"
WEIGHTS_FILE = "weights.safetensors"
COMPILED_DIR = "compiled"
ALGORITHM = "ed25519"
MAX_MANIFEST_BYTES = 1 << 20  # read before anything is trusted: bounded
_FORMAT = 1
# Relative names of plain characters, one level of folder at most: nothing a manifest lists can point outside its
# artifact's directory.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")


def check_file_name(name: str) -> str:
    """`name` when a manifest may list it (ValueError otherwise)."""
    if not _NAME.fullmatch(name) or name in (MANIFEST_FILE, SIGNATURE_FILE):
        raise ValueError(f"not an artifact file name: {name!r}")
    return name


@dataclass(frozen=True)
class FileEntry:
    name: str  # relative to the artifact's directory, e.g. "compiled/megacache.bin"
    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclass(frozen=True)
class Manifest:
    """What manifest.json says. `to_bytes` is what is signed; `parse` accepts only what `to_bytes` writes."""

    artifact_id: str
    blueprint_id: str
    tier: CompilationStrategy
    reuse_key: ReuseKey
    compiler_version: str
    has_backward: bool
    created_at_ns: int
    files: tuple[FileEntry, ...]  # sorted by name
    key_id: str
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        check_field_types(self)

    def file(self, name: str) -> FileEntry:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "artifact_id": self.artifact_id,
            "blueprint_id": self.blueprint_id,
            "tier": self.tier.name,
            "reuse_key": self.reuse_key.to_json(),
            "compiler_version": self.compiler_version,
            "has_backward": self.has_backward,
            "created_at_ns": self.created_at_ns,
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
            "key_id": self.key_id,
            "algorithm": self.algorithm,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes, artifact_id: str) -> Manifest:
        """The manifest in `data`, which must be the canonical bytes of one (MalformedManifestError otherwise)."""

        def bad(why: str) -> MalformedManifestError:
            return MalformedManifestError(artifact_id, f"malformed manifest: {why}")

        if len(data) > MAX_MANIFEST_BYTES:
            raise bad(f"{len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
        try:
            d = json.loads(data)
            if d["format"] != _FORMAT:
                raise bad(f"format {d['format']!r}, not {_FORMAT}")
            m = cls(
                artifact_id=d["artifact_id"],
                blueprint_id=d["blueprint_id"],
                tier=CompilationStrategy[d["tier"]],
                reuse_key=ReuseKey.from_json(d["reuse_key"]),
                compiler_version=d["compiler_version"],
                has_backward=d["has_backward"],
                created_at_ns=d["created_at_ns"],
                files=tuple(FileEntry(f["name"], f["sha256"], f["size"]) for f in d["files"]),
                key_id=d["key_id"],
                algorithm=d["algorithm"],
            )
            for f in m.files:
                check_file_name(f.name)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # json's errors are ValueErrors
            raise bad(f"{type(e).__name__}: {e}") from e
        if m.to_bytes() != data:  # types, order, extra fields, duplicate names: only canonical bytes pass
            raise bad("not in canonical form")
        if len({f.name for f in m.files}) != len(m.files) or [f.name for f in m.files] != sorted(
            f.name for f in m.files
        ):
            raise bad("file names repeated or unsorted")
        if not {IR_FILE, WEIGHTS_FILE} <= {f.name for f in m.files}:
            raise bad(f"no {IR_FILE} or no {WEIGHTS_FILE}")
        return m

    def to_proto(self, *, store_uri: str, manifest_sha256: str, signature: bytes) -> pb.CompiledKernelArtifact:
        """The metadata record for the kernels topic (the bytes stay in the store: claim check). `sha256` is the
        manifest's, which covers every file."""
        k = self.reuse_key
        msg = pb.CompiledKernelArtifact(
            artifact_id=self.artifact_id,
            blueprint_id=self.blueprint_id,
            blueprint_sha256=self.file(IR_FILE).sha256,
            strategy=pb.CompilationStrategy.Name(int(self.tier)),
            store_uri=store_uri,
            sha256=manifest_sha256,
            signature=signature,
            signature_algorithm=self.algorithm,
            key_id=self.key_id,
            size_bytes=sum(f.size for f in self.files),
            torch_version=k.torch_version,
            device=k.device,
            device_name=k.device_name,
            cuda_version=k.cuda_version,
            triton_version=k.triton_version,
            compiler_version=self.compiler_version,
            compile_options=[pb.KeyValue(key=a, value=b) for a, b in k.compile_options],
            input=pb.TensorSpec(shape=list(k.input_shape), dtype=pb.DType.Name(DType[k.input_dtype])),
            has_backward=self.has_backward,
        )
        msg.created_at.FromNanoseconds(self.created_at_ns)
        return msg
