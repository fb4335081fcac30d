"""A blueprint to a signed artifact: validated in the caller, built and compiled in a sandboxed worker, signed and
stored by the caller (the worker never holds the signing key, and nothing it returns is unpickled).

The worker's job (`compile_job`, run by the SandboxExecutor) validates the IR again (the worker trusts nobody), builds
the module from it and a seed, records the initial weights before anything runs, compiles at the tier with a fresh
inductor cache directory and fresh Dynamo state (so the cache blobs hold this compile alone), proves the module by one
forward and backward against eager, and returns the weights and the compiled code as bytes with a JSON report.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.compiler.artifacts.address import ReuseKey
from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.publish import ArtifactBuild, publish
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.artifacts.verify import VerifiedArtifact
from esper.compiler.exceptions import CompileFailedError
from esper.compiler.ir.canonical import canonical_bytes
from esper.compiler.ir.validate import SecurityValidator, ValidatedBlueprint
from esper.compiler.sandbox import JobLimits, JobResult, SandboxExecutor
from esper.compiler.tiers import TIERS
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy, DType, FailureReason
from esper.safety.events import EventSink

__all__ = ["COMPILE_JOB", "CompileReport", "compile_blueprint", "compile_job", "example_batch"]

COMPILE_JOB = "esper.compiler.compile.compile_job"
MEGACACHE = "megacache.bin"  # torch.compiler.save_cache_artifacts(): graphs (and Triton kernels on a GPU)
INDUCTOR_BUNDLE = "inductor-cache.tar.gz"  # the inductor cache dir: the built native code of a CPU compile
# The example batch for a dynamic batch dimension: 2 or more (Dynamo specialises sizes 0 and 1).
DEFAULT_EXAMPLE_BATCH = 8


@dataclass(frozen=True)
class CompileReport:
    """What the worker proved and what each phase cost (ms): the tier's own phases, and the job and sandbox."""

    artifact: VerifiedArtifact
    tier: CompilationStrategy
    phases_ms: dict[str, float]
    max_output_error: float
    max_grad_error: float
    graphs: int

    def to_json(self) -> dict[str, Any]:
        manifest = json.loads(self.artifact.manifest_bytes)
        return {
            "artifact_id": self.artifact.artifact_id,
            "tier": self.tier.name,
            "phases_ms": {k: round(v, 3) for k, v in self.phases_ms.items()},
            "max_output_error": self.max_output_error,
            "max_grad_error": self.max_grad_error,
            "graphs": self.graphs,
            "manifest": manifest,
        }


def example_batch(shape: tuple[int, ...], batch: int = DEFAULT_EXAMPLE_BATCH) -> tuple[int, ...]:
    """The example input's shape: the blueprint's, a dynamic (-1) batch dimension set to `batch`."""
    return tuple(batch if d < 0 else d for d in shape)


def compile_blueprint(
    validated: ValidatedBlueprint,
    strategy: CompilationStrategy,
    *,
    executor: SandboxExecutor,
    store: ArtifactStore,
    ring: KeyRing,
    sink: EventSink,
    seed: int = 0,
    limits: JobLimits | None = None,
    source_id: str = "tezzeret",
) -> CompileReport:
    """Compile a validated blueprint at `strategy` in a sandboxed worker and publish its artifact. The job's limits
    default to the tier's timeout (wall clock) and twice that in CPU seconds. CompileFailedError (with the
    worker's FailureReason) when the compile or its check failed in any way."""
    args = {"strategy": strategy.name, "seed": seed}
    timeout = TIERS[strategy].timeout_s
    limits = limits or JobLimits(timeout_s=timeout, cpu_s=max(1, int(timeout * 2)))  # CPU: both cores busy
    ir = canonical_bytes(validated)
    outcome = executor.run(COMPILE_JOB, args, ir, limits=limits)
    if not outcome.ok:
        assert outcome.failure is not None
        raise CompileFailedError(outcome.failure, outcome.message)
    value, blobs = outcome.value, _split(outcome.value["files"], outcome.data)
    build = ArtifactBuild(
        blueprint_id=validated.ir.blueprint_id,
        tier=strategy,
        ir=ir,
        reuse_key=ReuseKey.from_json(value["reuse_key"]),
        weights=blobs.pop("weights"),
        compiled=blobs,
        has_backward=True,
    )
    artifact = publish(store, build, ring, sink, source_id=source_id)
    phases = dict(value["phases_ms"])
    phases["sandbox_wait"] = outcome.timings.wait_s * 1e3
    phases["sandbox_run"] = outcome.timings.run_s * 1e3
    return CompileReport(
        artifact=artifact,
        tier=strategy,
        phases_ms=phases,
        max_output_error=value["max_output_error"],
        max_grad_error=value["max_grad_error"],
        graphs=value["graphs"],
    )


def compile_job(args: dict[str, Any], data: bytes) -> JobResult:
    """The worker's side (see the module's docstring). args: strategy (a name), seed; data: canonical IR bytes."""
    import torch

    from esper.compiler.artifacts.address import current_reuse_key
    from esper.compiler.artifacts.publish import compiler_version
    from esper.compiler.artifacts.weights import encode_weights
    from esper.compiler.ir.build import TORCH_DTYPES, BlueprintModule
    from esper.compiler.tiers import cache_artifacts, compile_and_check, inductor_bundle

    strategy = CompilationStrategy[args["strategy"]]
    validated = SecurityValidator().validate(pb.BlueprintIR.FromString(data))
    module = BlueprintModule(validated, seed=int(args["seed"]))
    weights = encode_weights(module.state_dict())  # initial weights: before the check's step moves BatchNorm stats
    dtype = TORCH_DTYPES[validated.dtype]
    dynamic = any(d < 0 for d in validated.input_shape)
    example = torch.randn(example_batch(validated.input_shape), dtype=dtype)

    with tempfile.TemporaryDirectory(prefix="esper-inductor-") as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        torch._dynamo.reset()
        torch.compiler.reset()  # the Mega-Cache then holds this compile's entries only
        _, result = compile_and_check(module, example, strategy, dynamic=dynamic)
        files: dict[str, bytes] = {"weights": weights}
        megacache = cache_artifacts()
        if megacache:
            files[MEGACACHE] = megacache
        if TIERS[strategy].backend == "inductor":
            files[INDUCTOR_BUNDLE] = inductor_bundle(Path(cache_dir))
    dtype_name = DType(validated.dtype).name
    key = current_reuse_key(
        device="cpu",
        dtype=dtype_name,
        input_shape=validated.input_shape,
        input_dtype=dtype_name,
        input_requires_grad=True,
        # The seed decides the initial weights and this compiler's version its settings: both in the content address
        compile_options=dict(
            sorted(
                {
                    **result.options,
                    "dynamic": str(dynamic).lower(),
                    "seed": str(int(args["seed"])),
                    "tezzeret": compiler_version(),
                }.items()
            )
        ),
    )
    names = sorted(files)
    value = {
        "reuse_key": key.to_json(),
        "phases_ms": dict(result.phases_ms),
        "max_output_error": result.max_output_error,
        "max_grad_error": result.max_grad_error,
        "graphs": result.graphs,
        "files": [[name, len(files[name])] for name in names],
    }
    return JobResult(value, b"".join(files[name] for name in names))


def _split(layout: list[list[Any]], data: bytes) -> dict[str, bytes]:
    """The worker's files from its one data frame (names and lengths in its JSON, in order)."""
    out: dict[str, bytes] = {}
    offset = 0
    for name, size in layout:
        if not isinstance(name, str) or not isinstance(size, int) or size < 0 or offset + size > len(data):
            raise CompileFailedError(FailureReason.SANDBOX_CRASH, f"the worker's file layout is inconsistent: {name}")
        out[name] = data[offset : offset + size]
        offset += size
    if offset != len(data) or "weights" not in out:
        raise CompileFailedError(FailureReason.SANDBOX_CRASH, "the worker's files do not add up")
    return out
