"""Grafting verified artifacts into seed slots: warm in a fresh process (every compiled graph a cache hit), the host
never recompiled, a process the artifact was not built for recompiling locally (counted and reported), a refused
artifact changing nothing, and only dormant slots taking a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.compile import compile_blueprint
from esper.compiler.exceptions import ArtifactRefusedError
from esper.compiler.graft import graft, graft_artifact, local_recompiles
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import SandboxExecutor
from esper.proto.enums import CompilationStrategy as S
from esper.safety.exceptions import IllegalTransitionError
from esper.safety.seed import SeedSlot, SeedStage
from tests.sinks import MemorySink

REPO = Path(__file__).resolve().parents[2]
MLP = REPO / "examples" / "blueprints" / "mlp.yaml"
WIDTH = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStore, KeyRing, dict[S, str]]]:
    """An EMERGENCY and a STANDARD artifact of the MLP example, compiled once for the module."""
    root = tmp_path_factory.mktemp("graft")
    ring = KeyRing(root / "keys")
    ring.generate()
    store = LocalStore(root / "store")
    validated = SecurityValidator().validate(load_blueprint(MLP))
    with SandboxExecutor(1) as executor:
        ids = {
            s: compile_blueprint(
                validated, s, executor=executor, store=store, ring=ring, sink=MemorySink()
            ).artifact.artifact_id
            for s in (S.EMERGENCY, S.STANDARD)
        }
    yield store, ring, ids


def probe(store: LocalStore, ring: KeyRing, artifact: str, *extra: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "graft_probe.py"), "--store", str(store.root), "--keys",
         str(ring.directory), "--artifact", artifact, *extra],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_standard_artifact_grafts_warm_in_a_fresh_process_without_recompiling_the_host(
    built: tuple[LocalStore, KeyRing, dict[S, str]],
) -> None:
    store, ring, ids = built
    got = probe(store, ring, ids[S.STANDARD])
    assert got["mismatches"] == [] and set(got["installed"]) == {"inductor-cache.tar.gz", "megacache.bin"}  # type: ignore[arg-type]
    assert got["fxgraph_cache_hit"] == 2 and got["fxgraph_cache_miss"] == 0  # forward and backward from the artifact
    assert got["unique_graphs"] == got["host_graphs_before"] + 1  # type: ignore[operator]  # the seed's graph alone


def test_a_process_the_artifact_was_not_built_for_recompiles_it_here_and_says_so(
    built: tuple[LocalStore, KeyRing, dict[S, str]],
) -> None:
    store, ring, ids = built
    got = probe(store, ring, ids[S.STANDARD], "--threads", "1")  # the thread count is in inductor's CPU key
    mismatches = got["mismatches"]
    assert isinstance(mismatches, list) and len(mismatches) == 1 and mismatches[0].startswith("num_threads: ")
    assert got["installed"] == [] and got["fxgraph_cache_hit"] == 0


def test_a_grafted_seed_trains_in_its_slot_and_reports(built: tuple[LocalStore, KeyRing, dict[S, str]]) -> None:
    store, ring, ids = built
    sink = MemorySink()
    slot = SeedSlot("s0", nn.Linear(WIDTH, WIDTH), instance_id="k-graft", sink=sink)
    host = nn.Sequential(nn.Linear(WIDTH, WIDTH), slot, nn.Linear(WIDTH, WIDTH))
    compiled_host = torch.compile(host, backend="aot_eager")
    x = torch.randn(8, WIDTH)
    compiled_host(x).sum().backward()
    before = counters["stats"]["unique_graphs"]
    report = graft_artifact(slot, store, ids[S.EMERGENCY], ring, sink)
    assert report.warm and report.tier == "EMERGENCY"
    slot.germinate()
    slot.transition(SeedStage.TRAINING)
    opt = torch.optim.SGD(slot.seed.parameters(), lr=0.1)  # the new parameters, told to an optimizer
    start = [p.detach().clone() for p in slot.seed.parameters()]
    for _ in range(5):
        opt.zero_grad()
        compiled_host(x).sum().backward()
        grads = [p.grad for p in slot.seed.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)  # the local loss trains it
        opt.step()
        slot.advance()
    assert any(not torch.equal(a, b) for a, b in zip(start, slot.seed.parameters(), strict=True))
    assert counters["stats"]["unique_graphs"] == before + 1  # the seed's own graph; the host's were kept
    assert any("grafted artifact" in e.message for e in sink.events)


def test_a_refused_artifact_changes_nothing(built: tuple[LocalStore, KeyRing, dict[S, str]], tmp_path: Path) -> None:
    store, ring, ids = built
    import shutil

    copy = LocalStore(tmp_path / "store")
    shutil.copytree(store.root / ids[S.EMERGENCY], copy.root / ids[S.EMERGENCY])
    weights = copy.root / ids[S.EMERGENCY] / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    placeholder = nn.Linear(WIDTH, WIDTH)
    slot = SeedSlot("s0", placeholder)
    with pytest.raises(ArtifactRefusedError):
        graft_artifact(slot, copy, ids[S.EMERGENCY], ring, MemorySink())
    assert slot.seed is placeholder and slot.stage is SeedStage.DORMANT


def test_only_a_dormant_slot_takes_a_seed(built: tuple[LocalStore, KeyRing, dict[S, str]]) -> None:
    store, ring, ids = built
    slot = SeedSlot("s0", nn.Linear(WIDTH, WIDTH))
    slot.germinate()
    from esper.compiler.artifacts.verify import load_verified

    artifact = load_verified(store, ids[S.EMERGENCY], ring, MemorySink())
    before = local_recompiles()
    with pytest.raises(IllegalTransitionError, match="DORMANT"):
        graft(slot, artifact, MemorySink())
    assert local_recompiles() == before
