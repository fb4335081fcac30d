"""`esper artifact verify|inspect` and `esper keys generate|list|retire`.

Light to import (the `esper` command registers these for every start; the WAL's crash matrix starts it thousands
of times): everything is imported in the commands, and none of them imports torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from esper.compiler.artifacts.keys import KeyRing
    from esper.compiler.artifacts.verify import VerifiedArtifact
    from esper.proto import leyline_pb2 as pb

__all__ = ["artifact_app", "keys_app"]

artifact_app = typer.Typer(help="Signed, content-addressed kernel artifacts: verify, inspect.", no_args_is_help=True)
keys_app = typer.Typer(help="The artifact signing key ring.", no_args_is_help=True)

StoreDir = Annotated[Path, typer.Option("--store", help="The artifact store (a directory).")]
KeysDir = Annotated[Path | None, typer.Option("--keys", help="The key ring (default: the keys_dir setting).")]


def _ring(keys: Path | None) -> KeyRing:
    from esper.compiler.artifacts.keys import KeyRing

    if keys is None:
        from esper.settings import load_settings

        keys = load_settings().key_ring_dir()
    return KeyRing(keys)


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


class _Events:
    """Keeps the safety event a refusal emits, to print it (the command has no Kafka producer)."""

    def __init__(self) -> None:
        self.events: list[pb.SafetyEvent] = []

    def emit(self, event: pb.SafetyEvent) -> None:
        self.events.append(event)


def _verify(artifact_id: str, store: Path, keys: Path | None) -> tuple[VerifiedArtifact | None, dict[str, Any]]:
    """The verified artifact, or None and the refusal as JSON. Exit 2 when there is no such artifact."""
    from google.protobuf import json_format

    from esper.compiler.artifacts.store import LocalStore
    from esper.compiler.artifacts.verify import load_verified
    from esper.compiler.exceptions import ArtifactNotFoundError, ArtifactRefusedError, InvalidArtifactIdError

    events = _Events()
    try:
        return load_verified(LocalStore(store), artifact_id, _ring(keys), events, source_id="esper-cli"), {}
    except (ArtifactNotFoundError, InvalidArtifactIdError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise typer.Exit(2) from e
    except ArtifactRefusedError as e:
        return None, {
            "refusal": type(e).__name__,
            "reason": e.reason,
            "safety_event": [json_format.MessageToDict(ev) for ev in events.events],
        }


@artifact_app.command("verify")
def verify(artifact_id: str, store: StoreDir, keys: KeysDir = None) -> None:
    """Check the signature, the key and every file's sha256; exit 1 on any failed check, 2 when there is no such
    artifact."""
    verified, refusal = _verify(artifact_id, store, keys)
    if verified is None:
        _print({"ok": False, "artifact_id": artifact_id, **refusal})
        raise typer.Exit(1)
    m = verified.manifest
    _print(
        {
            "ok": True,
            "artifact_id": artifact_id,
            "key_id": m.key_id,
            "files": len(m.files),
            "size_bytes": sum(f.size for f in m.files),
        }
    )


@artifact_app.command("inspect")
def inspect(artifact_id: str, store: StoreDir, keys: KeysDir = None) -> None:
    """Print the artifact as JSON: whether it verifies, its manifest and its kernels-topic record. An artifact
    that fails verification is still shown (its manifest as found, untrusted) and exits 0; `verify` is the check."""
    from google.protobuf import json_format

    from esper.compiler.artifacts.manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES
    from esper.compiler.artifacts.store import LocalStore

    verified, refusal = _verify(artifact_id, store, keys)
    if verified is not None:
        record = json_format.MessageToDict(verified.to_proto(), preserving_proto_field_name=True)
        _print({"verified": True, "manifest": verified.manifest.to_json(), "kernel_artifact": record})
        return
    try:
        found: Any = json.loads(LocalStore(store).read(artifact_id, MANIFEST_FILE, MAX_MANIFEST_BYTES))
    except (OSError, ValueError) as e:
        found = f"unreadable: {e}"
    _print({"verified": False, **refusal, "manifest_untrusted": found})


@keys_app.command("generate")
def generate(keys: KeysDir = None) -> None:
    """Make a new Ed25519 key the signing key; the previous ones keep verifying until retired."""
    ring = _ring(keys)
    key_id = ring.generate()
    _print({"key_id": key_id, "signing": True, "directory": str(ring.directory)})


@keys_app.command("list")
def list_keys(keys: KeysDir = None) -> None:
    """Every key of the ring: id, whether it signs, whether it is retired."""
    _print([k.__dict__ for k in _ring(keys).key_infos()])


@keys_app.command("retire")
def retire(key_id: str, keys: KeysDir = None) -> None:
    """Retire a key at once: artifacts it signed are refused from now on."""
    from esper.compiler.exceptions import KeyRingError

    try:
        _ring(keys).retire(key_id)
    except KeyRingError as e:
        sys.stderr.write(f"error: {e}\n")
        raise typer.Exit(1) from e
    _print({"key_id": key_id, "retired": True})
