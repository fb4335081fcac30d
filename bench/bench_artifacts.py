"""Verify-and-load of an artifact of realistic size (4 MiB of weights, a 400 KB compiled blob, a 190 KB cache
tarball) against reading the same files with no checks, and against reading and hashing them: what the signature,
the hashes and the strict manifest parse cost a consumer that loads a kernel (the hashing is most of it)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from common import Row, per_call_ns, print_table, ratio_row

from esper.compiler.artifacts.address import ReuseKey
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.publish import ArtifactBuild, publish
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.artifacts.verify import load_verified
from esper.compiler.artifacts.weights import encode_weights
from esper.proto.enums import CompilationStrategy
from esper.safety.events import NullSink


def _build() -> ArtifactBuild:
    g = torch.Generator().manual_seed(0)
    weights = {"fc1.weight": torch.randn(1024, 512, generator=g), "fc2.weight": torch.randn(512, 1024, generator=g)}
    key = ReuseKey("2.15.0+gitx", "cpu", "bench CPU", "", "", 2, "FLOAT32", (8, 128, 512), "FLOAT32", True, ())
    return ArtifactBuild(
        blueprint_id="bench",
        tier=CompilationStrategy.STANDARD,
        ir=os.urandom(2_000),
        reuse_key=key,
        weights=encode_weights(weights),
        compiled={"megacache.bin": os.urandom(400_000), "inductor-cache.tar.gz": os.urandom(190_000)},
        has_backward=True,
    )


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        ring = KeyRing(Path(tmp) / "keys")
        ring.generate()
        store = LocalStore(Path(tmp) / "store")
        art = publish(store, _build(), ring, NullSink())
        root = store.root / art.artifact_id
        paths = [p for p in root.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in paths)

        def plain() -> None:
            for p in paths:
                p.read_bytes()

        def hashed() -> None:
            for p in paths:
                hashlib.sha256(p.read_bytes()).digest()

        t_plain = per_call_ns(plain, 20)
        t_hashed = per_call_ns(hashed, 20)
        t_verified = per_call_ns(lambda: load_verified(store, art.artifact_id, ring, NullSink()), 20)
    return [
        Row("artifact size (weights, blobs, IR, manifest)", size / 1e6, "MB"),
        ratio_row(
            "artifact verify + load (signature, sha256 of every file)",
            t_verified / 1e6,
            "ms",
            "read the same files, no checks",
            t_plain / 1e6,
        ),
        ratio_row(
            "artifact verify + load",
            t_verified / 1e6,
            "ms",
            "read and sha256 the same files",
            t_hashed / 1e6,
        ),
        Row("artifact verify throughput", size / (t_verified / 1e9) / 1e6, "MB/s"),
    ]


if __name__ == "__main__":
    print_table(run(), "artifacts")
