"""Publishing an artifact: its files hashed into a manifest, the manifest signed, the whole written atomically."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from esper.compiler.artifacts.address import ReuseKey, artifact_id
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import (
    COMPILED_DIR,
    IR_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    FileEntry,
    Manifest,
    check_file_name,
)
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.artifacts.verify import VerifiedArtifact, load_verified
from esper.proto.enums import CompilationStrategy
from esper.safety.events import EventSink

__all__ = ["ArtifactBuild", "compiler_version", "publish"]


@dataclass(frozen=True)
class ArtifactBuild:
    """What a tier produced for one blueprint, before it has an id or a signature."""

    blueprint_id: str
    tier: CompilationStrategy
    ir: bytes  # canonical BlueprintIR bytes
    reuse_key: ReuseKey
    weights: bytes  # safetensors (esper.compiler.artifacts.weights.encode_weights)
    compiled: Mapping[str, bytes]  # the tier's opaque blobs, by name: they land under compiled/
    has_backward: bool

    @property
    def artifact_id(self) -> str:
        return artifact_id(self.ir, self.tier, self.reuse_key)


@functools.cache  # read once: importlib.metadata scans the installed distributions (~3 ms), per request otherwise
def compiler_version() -> str:
    """This Tezzeret's version (the installed distribution's)."""
    try:
        return metadata.version("esper-on-kafka")
    except metadata.PackageNotFoundError:
        return "unknown"


def publish(
    store: ArtifactStore, build: ArtifactBuild, ring: KeyRing, sink: EventSink, *, source_id: str = ""
) -> VerifiedArtifact:
    """Sign and store the artifact, then return it as a verifier sees it. An id already in the store is not
    rewritten (same id, same content): the stored artifact is verified instead, and a refusal is raised as from
    `load_verified`."""
    aid = build.artifact_id
    if not store.exists(aid):
        signer = ring.signer()
        files = {IR_FILE: build.ir, WEIGHTS_FILE: build.weights}
        files |= {check_file_name(f"{COMPILED_DIR}/{name}"): data for name, data in build.compiled.items()}
        manifest = Manifest(
            artifact_id=aid,
            blueprint_id=build.blueprint_id,
            tier=build.tier,
            reuse_key=build.reuse_key,
            compiler_version=compiler_version(),
            has_backward=build.has_backward,
            created_at_ns=time.time_ns(),
            files=tuple(
                FileEntry(name, hashlib.sha256(data).hexdigest(), len(data)) for name, data in sorted(files.items())
            ),
            key_id=signer.key_id,
        )
        body = manifest.to_bytes()
        store.put(aid, {**files, MANIFEST_FILE: body, SIGNATURE_FILE: signer.sign(body)})
    return load_verified(store, aid, ring, sink, source_id=source_id)
