"""Run in a fresh process by the graft tests and bench: graft an artifact into a host's seed slot and time the first
training step; or, with --cold, compile the same module cold at the same tier. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--store")
parser.add_argument("--keys")
parser.add_argument("--artifact")
parser.add_argument("--cold", action="store_true")
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()
# A cache directory of this process alone: nothing left by another run can make it warm.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="esper-probe-")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from esper.compiler.artifacts.keys import KeyRing  # noqa: E402
from esper.compiler.artifacts.store import LocalStore  # noqa: E402
from esper.compiler.artifacts.verify import load_verified  # noqa: E402
from esper.compiler.graft import graft  # noqa: E402
from esper.compiler.ir.build import BlueprintModule  # noqa: E402
from esper.compiler.ir.validate import SecurityValidator  # noqa: E402
from esper.compiler.tiers import TIERS  # noqa: E402
from esper.proto import leyline_pb2 as pb  # noqa: E402
from esper.safety.events import NullSink  # noqa: E402
from esper.safety.seed import SeedSlot  # noqa: E402

if args.threads:
    torch.set_num_threads(args.threads)
start = time.perf_counter()
artifact = load_verified(LocalStore(args.store), args.artifact, KeyRing(args.keys), NullSink())
width = artifact.manifest.reuse_key.input_shape[-1]
x = torch.randn(8, width, requires_grad=True)
if args.cold:
    module = BlueprintModule(SecurityValidator().validate(pb.BlueprintIR.FromString(artifact.ir)))
    step = TIERS[artifact.manifest.tier].compile(module, dynamic=None)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    loaded = time.perf_counter()
    step(x).sum().backward()
    report = None
else:
    slot = SeedSlot("s0", nn.Linear(width, width))  # the placeholder seed a host is built with
    host = nn.Sequential(nn.Linear(width, width), slot, nn.Linear(width, width))
    compiled_host = torch.compile(host, backend="aot_eager")
    compiled_host(x).sum().backward()  # the host's own compile, before the graft
    host_graphs = counters["stats"]["unique_graphs"]
    loaded = time.perf_counter()
    report = graft(slot, artifact, NullSink())
    slot.germinate()
    step_start = time.perf_counter()
    compiled_host(x).sum().backward()  # the first step with the grafted seed (training: it runs and learns)
loaded_s = loaded - start
first_step_s = time.perf_counter() - (loaded if args.cold else step_start)
print(
    json.dumps(
        {
            "load_s": loaded_s,
            "first_step_s": first_step_s,
            "graft_s": None if args.cold else step_start - loaded,
            "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
            "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
            "host_graphs_before": None if args.cold else host_graphs,
            "unique_graphs": counters["stats"]["unique_graphs"],
            "mismatches": None if report is None else list(report.mismatches),
            "installed": None if report is None else list(report.installed),
        }
    )
)
