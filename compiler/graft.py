"""Grafting an artifact into a seed slot, warm: verify, build from the IR, load the initial weights, install the
compiled code into this process's caches, compile with the artifact's settings, and put the result into the slot.

Nothing of an artifact is unpickled, imported or loaded before `load_verified` has checked its signature and every
hash, and only those checked bytes are used. When the artifact's reuse key (torch build, device, thread count, input,
compile options) is not this process's, its compiled code would miss torch's caches anyway: it is not installed, the
module compiles locally at the same tier, and that is counted and reported as a safety event, never silently slow.
The host is not recompiled: a slot calls its seed behind a graph boundary (`SeedSlot._run_seed`).
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from esper.compiler.artifacts.address import ReuseKey, current_reuse_key
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.manifest import COMPILED_DIR
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.artifacts.verify import VerifiedArtifact, load_verified
from esper.compiler.compile import INDUCTOR_BUNDLE, MEGACACHE
from esper.compiler.ir.build import BlueprintModule
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.tiers import TIERS
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy
from esper.safety.events import EventSink, Reporter
from esper.safety.seed import SeedSlot

__all__ = ["GraftReport", "graft", "graft_artifact", "local_recompiles", "reuse_mismatches"]

_counts_lock = threading.Lock()
_local_recompiles = 0


@dataclass(frozen=True)
class GraftReport:
    """What a graft did: the artifact, whether its compiled code was installed, and if not, why."""

    artifact_id: str
    tier: str
    installed: tuple[str, ...]  # the compiled files put into this process's caches
    mismatches: tuple[str, ...]  # reuse-key fields that differ from this process (then a local recompile)

    @property
    def warm(self) -> bool:
        return not self.mismatches


def local_recompiles() -> int:
    """Grafts of this process whose compiled code did not match it and were compiled here instead."""
    return _local_recompiles


def reuse_mismatches(theirs: ReuseKey, ours: ReuseKey) -> tuple[str, ...]:
    """`field: theirs != ours` for every reuse-key field that differs."""
    return tuple(
        f"{f.name}: {getattr(theirs, f.name)!r} != {getattr(ours, f.name)!r}"
        for f in dataclasses.fields(ReuseKey)
        if getattr(theirs, f.name) != getattr(ours, f.name)
    )


def graft_artifact(
    slot: SeedSlot, store: ArtifactStore, artifact_id: str, ring: KeyRing, sink: EventSink, *, seed: int = 0
) -> GraftReport:
    """Load the artifact (verified first: a refusal raises and nothing of it runs), then `graft` it."""
    return graft(slot, load_verified(store, artifact_id, ring, sink, source_id=slot.instance_id), sink, seed=seed)


def graft(slot: SeedSlot, artifact: VerifiedArtifact, sink: EventSink, *, seed: int = 0) -> GraftReport:
    """Install a verified artifact's module into a DORMANT slot (then `slot.germinate()` as with any seed)."""
    global _local_recompiles
    manifest = artifact.manifest
    validated = SecurityValidator().validate(pb.BlueprintIR.FromString(artifact.ir))
    module = BlueprintModule(validated, seed=seed)
    module.load_state_dict(artifact.weights(), strict=True)
    theirs = manifest.reuse_key
    device = "cuda" if theirs.device == "cuda" and torch.cuda.is_available() else "cpu"
    module.to(device)
    ours = current_reuse_key(
        device=device,
        dtype=theirs.dtype,
        input_shape=theirs.input_shape,
        input_dtype=theirs.input_dtype,
        input_requires_grad=theirs.input_requires_grad,
        compile_options=dict(theirs.compile_options),
    )
    mismatches = reuse_mismatches(theirs, ours)
    installed: tuple[str, ...] = ()
    report = Reporter(sink, slot.instance_id)
    if mismatches:
        with _counts_lock:
            _local_recompiles += 1
        report(
            pb.TELEMETRY_WARN,
            f"slot {slot.slot_id}: artifact {artifact.artifact_id[:16]} was compiled for another process "
            f"({'; '.join(mismatches)}); compiling it here at {manifest.tier.name}",
        )
    else:
        installed = _install(artifact)
    slot.install_seed(module, _runner(module, manifest.tier, dict(theirs.compile_options).get("dynamic") == "true"))
    report(
        pb.TELEMETRY_INFO,
        f"slot {slot.slot_id}: grafted artifact {artifact.artifact_id[:16]} ({manifest.tier.name}, "
        f"{'warm' if not mismatches else 'compiled here'})",
    )
    return GraftReport(artifact.artifact_id, manifest.tier.name, installed, mismatches)


def _runner(module: torch.nn.Module, strategy: CompilationStrategy, dynamic: bool) -> Callable[[torch.Tensor], Any]:
    """The module compiled as the worker compiled it (same tier; the batch dimension marked dynamic as the worker
    marked its example's), so that its graphs are the artifact's and hit the caches."""
    compiled = TIERS[strategy].compile(module, dynamic=None if dynamic else False)
    if not dynamic:
        return compiled

    def run(x: torch.Tensor) -> Any:
        # The mark goes on a view: the tensor itself is the host's too, and its graph would see the mark and recompile.
        view = x.view_as(x)
        torch._dynamo.maybe_mark_dynamic(view, 0)
        return compiled(view)

    return run


def _install(artifact: VerifiedArtifact) -> tuple[str, ...]:
    """The artifact's compiled code into this process's caches: the inductor cache bundle unpacked into inductor's
    cache directory (the built native code), then the Mega-Cache loaded (its entries point at that code)."""
    installed = []
    bundle = artifact.files.get(f"{COMPILED_DIR}/{INDUCTOR_BUNDLE}")
    if bundle is not None:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        _unpack(bundle, Path(cache_dir()))
        installed.append(INDUCTOR_BUNDLE)
    megacache = artifact.files.get(f"{COMPILED_DIR}/{MEGACACHE}")
    if megacache is not None:
        torch.compiler.load_cache_artifacts(megacache)
        installed.append(MEGACACHE)
    return tuple(installed)


def _unpack(bundle: bytes, into: Path) -> None:
    """Regular files only, inside `into` (tarfile's data filter refuses links, devices and paths that leave it)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members: list[Any] = [m for m in tar.getmembers() if m.isfile()]
        tar.extractall(into, members=members, filter="data")
