"""Tezzeret's compile and graft, no Kafka (runs where only PyTorch is installed, a GPU machine too):
- each tier's compile_and_check (compile, one forward and backward, the check against eager) against a bare
  torch.compile with the same settings, same module, same example, forward and backward, each in a fresh process
  with a fresh inductor cache directory (our overhead; in one process the second compile would reuse the first's
  in-memory code caches);
- the first forward+backward after grafting a STANDARD artifact in a fresh process, against a cold compile of the
  same module at the same tier in a fresh process (tests/graft_probe.py; medians of alternating runs).
The device is named in every figure."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Row, ratio_row

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.compile import compile_blueprint
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import SandboxExecutor
from esper.compiler.tiers import TIERS
from esper.proto.enums import CompilationStrategy
from esper.safety.events import NullSink

REPO = Path(__file__).resolve().parents[1]
BLUEPRINT = REPO / "examples" / "blueprints" / "mlp.yaml"
GRAFT_ROUNDS = 3


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"


# One compile in a fresh process: in-process code caches outlive a reset, so a second compile in the same process
# would be warm. Prints the seconds of compile + first forward and backward.
_ONE_COMPILE = """
import os, sys, tempfile, time
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="esper-bench-")
import torch
from esper.compiler.compile import example_batch
from esper.compiler.ir.build import BlueprintModule
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.tiers import TIERS, compile_and_check
from esper.proto.enums import CompilationStrategy
strategy, how = CompilationStrategy[sys.argv[1]], sys.argv[2]
validated = SecurityValidator().validate(load_blueprint(sys.argv[3]))
example = torch.randn(example_batch(validated.input_shape))
module = BlueprintModule(validated)
start = time.perf_counter()
if how == "bare":
    x = example.detach().clone().requires_grad_()
    torch._dynamo.maybe_mark_dynamic(x, 0)
    TIERS[strategy].compile(module, dynamic=None)(x).sum().backward()
else:
    compile_and_check(module, example, strategy, dynamic=True)
print(time.perf_counter() - start)
"""


def _one_compile(strategy: CompilationStrategy, how: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _ONE_COMPILE, strategy.name, how, str(BLUEPRINT)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def tier_overhead(device: str) -> list[Row]:
    rows = []
    for i, strategy in enumerate(TIERS):
        if strategy is CompilationStrategy.AGGRESSIVE and device.startswith("cpu"):
            continue  # the same generated code as STANDARD on a CPU (see compiler/tiers.py), only slower
        order = ("bare", "ours") if i % 2 == 0 else ("ours", "bare")
        took = {how: _one_compile(strategy, how) for how in order}
        rows.append(Row(f"bare torch.compile {strategy.name} fwd+bwd, fresh process [{device}]", took["bare"], "s"))
        rows.append(
            ratio_row(
                f"compile_and_check {strategy.name}, fresh process [{device}]", took["ours"], "s", "bare", took["bare"]
            )
        )
    return rows


def graft_first_step(device: str) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="esper-bench-graft-"))
    ring = KeyRing(root / "keys")
    ring.generate()
    store = LocalStore(root / "store")
    validated = SecurityValidator().validate(load_blueprint(BLUEPRINT))
    with SandboxExecutor(1) as executor:
        report = compile_blueprint(
            validated, CompilationStrategy.STANDARD, executor=executor, store=store, ring=ring, sink=NullSink()
        )
    artifact = report.artifact.artifact_id
    base = [sys.executable, str(REPO / "tests" / "graft_probe.py"), "--store", str(store.root)]
    base += ["--keys", str(ring.directory), "--artifact", artifact]
    warm: list[float] = []
    cold: list[float] = []
    hits = 0
    for i in range(GRAFT_ROUNDS):  # alternating, so that drift hits both alike
        for mode in (["--cold"], []) if i % 2 else ([], ["--cold"]):
            out = json.loads(subprocess.run([*base, *mode], capture_output=True, text=True, check=True).stdout)
            (cold if mode else warm).append(out["first_step_s"])
            hits += 0 if mode else int(out["fxgraph_cache_hit"])
    w, c = statistics.median(warm), statistics.median(cold)
    return [
        Row(f"cold compile STANDARD, first fwd+bwd, fresh process [{device}]", c, "s"),
        ratio_row(f"grafted STANDARD artifact, first fwd+bwd, fresh process [{device}]", w, "s", "cold", c),
        Row(f"graph cache hits per graft (forward and backward) [{device}]", hits / GRAFT_ROUNDS, "graphs"),
    ]


def run() -> list[Row]:
    device = device_name()
    return tier_overhead(device) + graft_first_step(device)


if __name__ == "__main__":
    from common import print_table

    print_table(run(), "Tezzeret compile and graft")
