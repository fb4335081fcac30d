"""Verify before load, always: an artifact's bytes are handed out only after its signature and every hash check.

Loading compiled code executes pickles (a Mega-Cache entry can even write files on
`torch.compiler.load_cache_artifacts`), so nothing of an artifact is unpickled, imported or loaded before
`load_verified` returns. Each file is read once into memory, hashed, and those same bytes are what the caller gets:
no window between the check and the use. Every refusal is a typed ArtifactRefusedError and a safety event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from esper.compiler.artifacts.address import artifact_id as compute_id
from esper.compiler.artifacts.address import check_artifact_id
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import (
    IR_FILE,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    Manifest,
)
from esper.compiler.artifacts.sign import verify_signature
from esper.compiler.artifacts.store import ArtifactStore, NotRegularFileError
from esper.compiler.artifacts.weights import decode_weights
from esper.compiler.exceptions import (
    ArtifactRefusedError,
    HashMismatchError,
    MalformedManifestError,
    ManifestMismatchError,
    MissingFileError,
    UnexpectedFileError,
)
from esper.proto import leyline_pb2 as pb
from esper.safety.events import EventSink, safety_event

if TYPE_CHECKING:
    import torch

__all__ = ["SUBSYSTEM", "VerifiedArtifact", "load_verified"]

SUBSYSTEM = "tezzeret"
_SIGNATURE_BYTES = 64  # Ed25519


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose signature and hashes checked out, with the very bytes that were checked."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    files: Mapping[str, bytes]  # every file the manifest lists, by name (read-only)
    store_uri: str

    @property
    def artifact_id(self) -> str:
        return self.manifest.artifact_id

    @property
    def ir(self) -> bytes:
        return self.files[IR_FILE]

    def weights(self) -> dict[str, torch.Tensor]:
        return decode_weights(self.files[WEIGHTS_FILE])

    def to_proto(self) -> pb.CompiledKernelArtifact:
        """The kernels topic's metadata record for this artifact."""
        return self.manifest.to_proto(
            store_uri=self.store_uri,
            manifest_sha256=hashlib.sha256(self.manifest_bytes).hexdigest(),
            signature=self.signature,
        )


def _read(store: ArtifactStore, artifact_id: str, name: str, limit: int) -> bytes:
    try:
        return store.read(artifact_id, name, limit)
    except FileNotFoundError:
        raise MissingFileError(artifact_id, f"{name} is missing") from None
    except NotRegularFileError:
        raise UnexpectedFileError(artifact_id, f"{name} is not a regular file") from None


def _check(store: ArtifactStore, artifact_id: str, ring: KeyRing) -> VerifiedArtifact:
    check_artifact_id(artifact_id)
    listed = set(store.names(artifact_id))  # ArtifactNotFoundError when there is no such artifact
    manifest_bytes = _read(store, artifact_id, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    signature = _read(store, artifact_id, SIGNATURE_FILE, _SIGNATURE_BYTES)
    try:  # only to find the key: json.loads runs no code; nothing else of the manifest is believed yet
        head = json.loads(manifest_bytes)
        key_id, algorithm = head["key_id"], head["algorithm"]
        if not isinstance(key_id, str) or not isinstance(algorithm, str):
            raise TypeError("key_id and algorithm must be strings")
    except (ValueError, KeyError, TypeError) as e:
        raise MalformedManifestError(artifact_id, f"malformed manifest: {type(e).__name__}: {e}") from None
    verify_signature(ring, artifact_id, key_id=key_id, algorithm=algorithm, data=manifest_bytes, signature=signature)
    manifest = Manifest.parse(manifest_bytes, artifact_id)
    if manifest.artifact_id != artifact_id:
        raise ManifestMismatchError(artifact_id, f"the manifest is artifact {manifest.artifact_id}'s")
    expected = {f.name for f in manifest.files} | {MANIFEST_FILE, SIGNATURE_FILE}
    if missing := sorted(expected - listed):
        raise MissingFileError(artifact_id, f"missing: {', '.join(missing)}")
    if extra := sorted(listed - expected):
        raise UnexpectedFileError(artifact_id, f"not in the manifest: {', '.join(extra)}")
    files: dict[str, bytes] = {}
    for entry in manifest.files:
        data = _read(store, artifact_id, entry.name, entry.size)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise HashMismatchError(artifact_id, f"{entry.name} does not match its sha256 and size in the manifest")
        files[entry.name] = data
    recomputed = compute_id(files[IR_FILE], manifest.tier, manifest.reuse_key)
    if recomputed != artifact_id:
        raise ManifestMismatchError(artifact_id, f"IR, tier and reuse key give the id {recomputed}")
    return VerifiedArtifact(manifest, manifest_bytes, signature, MappingProxyType(files), store.uri(artifact_id))


def load_verified(
    store: ArtifactStore, artifact_id: str, ring: KeyRing, sink: EventSink, *, source_id: str = ""
) -> VerifiedArtifact:
    """The artifact's checked bytes, or a typed refusal (an ArtifactRefusedError subclass) after a safety event on
    `sink`. ArtifactNotFoundError (not a refusal: nothing was there to distrust) when the store lacks the id."""
    try:
        return _check(store, artifact_id, ring)
    except ArtifactRefusedError as e:
        sink.emit(
            safety_event(
                pb.TELEMETRY_CRITICAL,
                f"{type(e).__name__}: {e}",
                source_id=source_id,
                subsystem=SUBSYSTEM,
            )
        )
        raise
