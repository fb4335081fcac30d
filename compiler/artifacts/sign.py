"""Ed25519 signatures over a manifest's exact bytes, checked against the key ring."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import ALGORITHM
from esper.compiler.exceptions import BadSignatureError, RetiredKeyError, UnknownKeyError

__all__ = ["verify_signature"]


def verify_signature(
    ring: KeyRing, artifact_id: str, *, key_id: str, algorithm: str, data: bytes, signature: bytes
) -> None:
    """Return when `signature` is `key_id`'s Ed25519 signature of `data` and the key is in force; otherwise raise
    UnknownKeyError (another algorithm, a key the ring lacks), RetiredKeyError or BadSignatureError."""
    if algorithm != ALGORITHM:
        raise UnknownKeyError(artifact_id, f"signature algorithm {algorithm!r}, not {ALGORITHM!r}")
    public = ring.public_key(key_id)
    if public is None:
        raise UnknownKeyError(artifact_id, f"signed by key {key_id!r}, which the key ring does not hold")
    if ring.is_retired(key_id):
        raise RetiredKeyError(artifact_id, f"signed by key {key_id}, retired")
    try:
        public.verify(signature, data)
    except InvalidSignature:
        raise BadSignatureError(artifact_id, f"the signature does not verify with key {key_id}") from None
