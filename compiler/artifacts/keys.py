"""The key ring: Ed25519 keys in a directory, one signing key, old keys verifying until they are retired.

Layout (the directory is 0700):

    <id>.pub      the public key (PEM, SubjectPublicKeyInfo); kept for as long as artifacts it signed exist
    <id>.key      the private key (PEM, PKCS#8, unencrypted, 0600): only on the host that signs
    <id>.retired  a marker: this key verifies nothing any more
    signing       the id of the key new manifests are signed with

A key id is the first 16 hex digits of sha256 over the raw 32-byte public key. `generate` makes a new key the
signing key; the previous one stays in the ring and still verifies what it signed (rotation without re-signing).
Retiring is immediate and total, not "valid until a time": a signature carries no trusted time (whoever holds a
withdrawn key can back-date a manifest), so an artifact signed by a retired key is refused and must be published
again under the current key.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from esper.compiler.artifacts.durable import publish_file
from esper.compiler.exceptions import KeyRingError
from esper.compiler.fsio import OsFs

__all__ = ["KeyInfo", "KeyRing", "Signer", "key_id_of"]

_SIGNING = "signing"
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """The signing key, taken once: the key id a manifest names and the key that signs it cannot differ."""

    key_id: str
    private_key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    signing: bool
    retired: bool
    has_private_key: bool


class KeyRing:
    """Keys by id in one directory (see the module docstring)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._fs = OsFs()

    def _path(self, key_id: str, suffix: str) -> Path:
        if not _KEY_ID.fullmatch(key_id):
            raise KeyRingError(f"not a key id (16 lower-case hex digits): {key_id!r}")
        return self.directory / f"{key_id}{suffix}"

    def generate(self) -> str:
        """A new key pair, now the signing key; returns its id."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        key_id = key_id_of(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pub = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        d = str(self.directory)
        publish_file(self._fs, d, f"{key_id}.key", pem, mode=0o600)
        publish_file(self._fs, d, f"{key_id}.pub", pub)
        publish_file(self._fs, d, _SIGNING, key_id.encode() + b"\n")  # last: the pointer names a complete key
        return key_id

    def signing_key_id(self) -> str | None:
        try:
            return (self.directory / _SIGNING).read_text().strip() or None
        except FileNotFoundError:
            return None

    def signer(self) -> Signer:
        """The signing key (KeyRingError when there is none, or it is retired or unreadable)."""
        key_id = self.signing_key_id()
        if key_id is None:
            raise KeyRingError(f"no signing key in {self.directory} (run `esper keys generate`)")
        if self.is_retired(key_id):
            raise KeyRingError(f"the signing key {key_id} is retired (run `esper keys generate`)")
        try:
            private = serialization.load_pem_private_key(self._path(key_id, ".key").read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise KeyRingError(f"cannot read the private key {key_id}: {e}") from e
        if not isinstance(private, Ed25519PrivateKey) or key_id_of(private.public_key()) != key_id:
            raise KeyRingError(f"{key_id}.key is not the Ed25519 key with that id")
        return Signer(key_id, private)

    def public_key(self, key_id: str) -> Ed25519PublicKey | None:
        """The public key with this id, or None when the ring does not hold it (or holds another key under it)."""
        try:
            public = serialization.load_pem_public_key(self._path(key_id, ".pub").read_bytes())
        except (OSError, ValueError, KeyRingError):
            return None
        if not isinstance(public, Ed25519PublicKey) or key_id_of(public) != key_id:
            return None
        return public

    def is_retired(self, key_id: str) -> bool:
        return self._path(key_id, ".retired").exists()

    def retire(self, key_id: str) -> None:
        """From now on the key verifies nothing; when it was the signing key there is none until `generate`."""
        if self.public_key(key_id) is None:
            raise KeyRingError(f"no key {key_id} in {self.directory}")
        d = str(self.directory)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        publish_file(self._fs, d, f"{key_id}.retired", f"retired {stamp}\n".encode())
        if self.signing_key_id() == key_id:
            self._fs.unlink(str(self.directory / _SIGNING))
            self._fs.fsync_dir(d)

    def key_infos(self) -> list[KeyInfo]:
        if not self.directory.is_dir():
            return []
        signing = self.signing_key_id()
        ids = sorted(k for p in self.directory.glob("*.pub") if _KEY_ID.fullmatch(k := p.name.removesuffix(".pub")))
        return [
            KeyInfo(
                k,
                signing=k == signing,
                retired=self.is_retired(k),
                has_private_key=os.path.exists(self._path(k, ".key")),
            )
            for k in ids
        ]
