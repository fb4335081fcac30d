"""The four compilation tiers as real torch.compile settings, and the compile that proves a module before it is saved.

  EMERGENCY   backend "eager": Dynamo captures the whole graph (fullgraph, so a graph break rejects the blueprint)
              and runs it with eager kernels; no AOTAutograd, no code generation. Ready in well under a second.
  FAST        backend "aot_eager": AOTAutograd traces forward and backward into functional graphs, still no code
              generation: the backward is proven too, at a fraction of inductor's cost.
  STANDARD    inductor, default settings: generated C++ (CPU) or Triton (GPU) kernels.
  AGGRESSIVE  inductor with max_autotune and coordinate_descent_tuning (what mode "max-autotune-no-cudagraphs"
              sets): on a GPU it benchmarks GEMM/conv templates and tunes kernel launch parameters; on a CPU it
              generates the same code as STANDARD (inductor's CPU GEMM templates need frozen weights, which
              training has not), only slower.

`compile_and_check` compiles at a tier, runs one full forward and backward at the example input (the backward is
compiled lazily, at its first run), compares the output and every gradient with eager's within a stated tolerance,
and times each phase. The compiled code for an artifact is what this process's caches now hold: `cache_artifacts()`
(Mega-Cache bytes: forward and backward graphs; Triton kernels on a GPU) and, since on a CPU those bytes hold only
C++ source that g++ must build again, `inductor_bundle(cache_dir)` (the inductor cache directory with the built
native code). Kept free of Kafka so it runs where only PyTorch is installed.
"""

from __future__ import annotations

import copy
import io
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper.compiler.exceptions import GraphBreakError, TierCheckError
from esper.proto.enums import CompilationStrategy

__all__ = [
    "TIERS",
    "Tier",
    "TierResult",
    "Tolerance",
    "cache_artifacts",
    "compile_and_check",
    "inductor_bundle",
]


@dataclass(frozen=True)
class Tier:
    """torch.compile's settings for one strategy (always fullgraph: a graph break is a rejected blueprint).
    `inductor` holds inductor's config options; inductor tiers all take `fallback_random`: random ops (dropout) draw
    from eager's generator, so a compiled module's dropout equals eager's under one seed and the check can compare
    them (and a graft draws the same way)."""

    strategy: CompilationStrategy
    backend: str
    timeout_s: float  # the spec's upper bound of the tier's compile time: past it the sandbox kills the compile
    inductor: tuple[tuple[str, bool], ...] = ()

    def compile(self, module: nn.Module, *, dynamic: bool | None = None) -> Callable[..., Any]:
        options: dict[str, str | int | bool | Callable[..., Any]] | None = dict(self.inductor) or None
        return torch.compile(module, backend=self.backend, options=options, fullgraph=True, dynamic=dynamic)

    @property
    def options(self) -> dict[str, str]:
        """The settings that decide reuse of the compiled code (they go into an artifact's reuse key)."""
        return {"backend": self.backend, "fullgraph": "true", **{k: str(v).lower() for k, v in self.inductor}}


_RANDOM_AS_EAGER = ("fallback_random", True)
TIERS: Mapping[CompilationStrategy, Tier] = {
    CompilationStrategy.EMERGENCY: Tier(CompilationStrategy.EMERGENCY, "eager", 10.0),
    CompilationStrategy.FAST: Tier(CompilationStrategy.FAST, "aot_eager", 65.0),
    CompilationStrategy.STANDARD: Tier(CompilationStrategy.STANDARD, "inductor", 250.0, (_RANDOM_AS_EAGER,)),
    # what mode="max-autotune-no-cudagraphs" sets (a mode and options cannot be given together)
    CompilationStrategy.AGGRESSIVE: Tier(
        CompilationStrategy.AGGRESSIVE,
        "inductor",
        960.0,
        (("coordinate_descent_tuning", True), _RANDOM_AS_EAGER, ("max_autotune", True)),
    ),
}


@dataclass(frozen=True)
class Tolerance:
    """How far a compiled result may be from eager's: |compiled - eager| <= atol + rtol * |eager|, elementwise.
    Inductor reorders float reductions (about 1e-6 relative on these blocks), so exact equality is not the test."""

    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass(frozen=True)
class TierResult:
    """What a compile proved, and what it cost, phase by phase (milliseconds)."""

    strategy: CompilationStrategy
    options: Mapping[str, str]
    dynamic: bool
    phases_ms: Mapping[str, float]
    max_output_error: float  # largest |compiled - eager| over the output
    max_grad_error: float  # the same over the example's and every parameter's gradient
    graphs: int = field(default=0)  # graphs Dynamo compiled for this module (1 when nothing recompiled)


def compile_and_check(
    module: nn.Module,
    example: torch.Tensor,
    strategy: CompilationStrategy,
    *,
    dynamic: bool = False,
    tolerance: Tolerance = Tolerance(),  # frozen: one shared default is safe
) -> tuple[Callable[..., Any], TierResult]:
    """Compile `module` at `strategy`, run one forward and backward at `example` (train mode), check both against
    an eager copy of the module with the same weights, and return the compiled module with what was proved.
    GraphBreakError when the module cannot be captured whole; TierCheckError when a result is out of tolerance.
    `dynamic`: the batch dimension (dim 0) may change without a recompile."""
    tier = TIERS[strategy]
    reference = copy.deepcopy(module)
    phases: dict[str, float] = {}

    start = time.perf_counter()
    torch.manual_seed(_CHECK_SEED)  # the same draws for eager and compiled random ops (dropout)
    expected, expected_grads = _forward_backward(reference, example)
    phases["eager_reference"] = _ms_since(start)

    compiled = tier.compile(module, dynamic=None if dynamic else False)
    before = _graph_count()
    x = _leaf(example)
    if dynamic:  # maybe_: as a graft marks the seed's input (a hint: the host's graph may specialise the tensor)
        torch._dynamo.maybe_mark_dynamic(x, 0)
    start = time.perf_counter()
    torch.manual_seed(_CHECK_SEED)
    try:
        out = compiled(x)
    except torch._dynamo.exc.Unsupported as e:  # fullgraph: a graph break is refused, never run in pieces
        raise GraphBreakError(f"{strategy.name}: the module cannot be captured as one graph: {e}") from e
    phases["compile_forward"] = _ms_since(start)
    start = time.perf_counter()
    got_grads = _backward(module, out, x)
    phases["compile_backward"] = _ms_since(start)

    start = time.perf_counter()
    output_error = _check("output", out.detach(), expected, tolerance)
    grad_error = max(
        (_check(name, got_grads[name], want, tolerance) for name, want in expected_grads.items()), default=0.0
    )
    phases["check"] = _ms_since(start)
    result = TierResult(
        strategy=strategy,
        options=tier.options,
        dynamic=dynamic,
        phases_ms=phases,
        max_output_error=output_error,
        max_grad_error=grad_error,
        graphs=_graph_count() - before,
    )
    return compiled, result


def cache_artifacts() -> bytes | None:
    """This process's Mega-Cache since its last reset (forward and backward graphs; kernels on a GPU), or None."""
    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def inductor_bundle(cache_dir: Path) -> bytes:
    """The inductor cache directory as a deterministic tar.gz (sorted names, no owners or times): on a CPU the
    built native code that the Mega-Cache's C++ source would otherwise make g++ build again."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in cache_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(cache_dir)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def _forward_backward(module: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = _leaf(example)
    out = module(x)
    return out.detach(), _backward(module, out, x)


def _leaf(example: torch.Tensor) -> torch.Tensor:
    """A fresh copy of the example that wants its gradient (the host's gradient flows through a grafted seed)."""
    return example.detach().clone().requires_grad_(example.is_floating_point())


def _backward(module: nn.Module, out: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed function of the output (the sum of out times a ramp, so that every element matters and
    no gradient is uniform) for the input and every trainable parameter, by name; .grad fields are left alone."""
    ramp = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    named = {"input": x} if x.requires_grad else {}
    named.update((f"param:{n}", p) for n, p in module.named_parameters() if p.requires_grad)
    grads = torch.autograd.grad((out * ramp).sum(), list(named.values()), allow_unused=True)
    return {name: g for name, g in zip(named, grads, strict=True) if g is not None}


def _check(what: str, got: torch.Tensor, want: torch.Tensor, tolerance: Tolerance) -> float:
    if got.shape != want.shape or got.dtype != want.dtype:
        raise TierCheckError(f"{what}: {tuple(got.shape)} {got.dtype}, eager gave {tuple(want.shape)} {want.dtype}")
    error = (got.float() - want.float()).abs()
    allowed = tolerance.atol + tolerance.rtol * want.float().abs()
    if not bool(torch.isfinite(got).all()) or bool((error > allowed).any()):
        raise TierCheckError(
            f"{what}: differs from eager by up to {float(error.max()):.3g} (allowed {tolerance.atol} + "
            f"{tolerance.rtol} x |eager|)"
        )
    return float(error.max()) if error.numel() else 0.0


_CHECK_SEED = 0


def _graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
