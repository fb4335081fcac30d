"""A blueprint to a signed artifact through a real sandboxed worker: each tier's artifact holds what grafting needs,
a compile that cannot finish is a typed failure, and `esper compile` does it from a file with no Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.artifacts.verify import load_verified
from esper.compiler.compile import INDUCTOR_BUNDLE, MEGACACHE, compile_blueprint
from esper.compiler.exceptions import CompileFailedError
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator, ValidatedBlueprint
from esper.compiler.sandbox import JobLimits, SandboxExecutor
from esper.proto.enums import CompilationStrategy as S
from esper.proto.enums import FailureReason
from tests.sinks import MemorySink

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blueprints"


@pytest.fixture(scope="module")
def executor() -> Iterator[SandboxExecutor]:
    with SandboxExecutor(1) as ex:
        ex.wait_ready()
        yield ex


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing(tmp_path / "keys")
    ring.generate()
    return ring


def example(name: str) -> ValidatedBlueprint:
    return SecurityValidator().validate(load_blueprint(EXAMPLES / name))


@pytest.mark.parametrize("strategy", [S.EMERGENCY, S.FAST])
@pytest.mark.parametrize("name", ["mlp.yaml", "conv.yaml", "attention.yaml"])
def test_every_example_compiles_at_the_cheap_tiers_into_a_verified_artifact(
    executor: SandboxExecutor, ring: KeyRing, tmp_path: Path, name: str, strategy: S
) -> None:
    store = LocalStore(tmp_path / "store")
    report = compile_blueprint(example(name), strategy, executor=executor, store=store, ring=ring, sink=MemorySink())
    assert report.graphs == 1 and report.max_grad_error <= 1e-4
    again = load_verified(store, report.artifact.artifact_id, ring, MemorySink())
    assert again.manifest.tier is strategy and set(again.weights())  # initial weights, in safetensors
    assert report.phases_ms["compile_forward"] > 0 and report.phases_ms["sandbox_run"] > 0


def test_a_standard_artifact_carries_the_mega_cache_and_the_built_native_code(
    executor: SandboxExecutor, ring: KeyRing, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    report = compile_blueprint(
        example("mlp.yaml"), S.STANDARD, executor=executor, store=store, ring=ring, sink=MemorySink()
    )
    files = report.artifact.files
    assert {f"compiled/{MEGACACHE}", f"compiled/{INDUCTOR_BUNDLE}"} <= set(files)
    assert len(files[f"compiled/{INDUCTOR_BUNDLE}"]) > 10_000  # the .so files of the forward and backward
    key = dict(report.artifact.manifest.reuse_key.compile_options)
    assert key["backend"] == "inductor" and key["fallback_random"] == "true" and key["dynamic"] == "true"


def test_the_same_blueprint_and_seed_is_one_artifact_and_another_seed_another(
    executor: SandboxExecutor, ring: KeyRing, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    ids = {
        compile_blueprint(
            example("mlp.yaml"), S.EMERGENCY, executor=executor, store=store, ring=ring, sink=MemorySink()
        ).artifact.artifact_id
        for _ in range(2)
    }
    assert len(ids) == 1
    other = compile_blueprint(
        example("mlp.yaml"), S.EMERGENCY, executor=executor, store=store, ring=ring, sink=MemorySink(), seed=1
    ).artifact
    assert other.artifact_id not in ids  # another seed, other initial weights: another artifact
    assert dict(other.manifest.reuse_key.compile_options)["seed"] == "1"


def test_a_compile_past_its_time_is_a_typed_failure_and_nothing_is_stored(
    executor: SandboxExecutor, ring: KeyRing, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(CompileFailedError) as info:
        compile_blueprint(
            example("mlp.yaml"),
            S.STANDARD,
            executor=executor,
            store=store,
            ring=ring,
            sink=MemorySink(),
            limits=JobLimits(timeout_s=0.5),
        )
    assert info.value.reason is FailureReason.TIMEOUT
    assert store.ids() == []


def test_esper_compile_from_a_file_then_verify(tmp_path: Path) -> None:
    env = {**os.environ, "ESPER_HOME": str(tmp_path)}
    esper = [sys.executable, "-m", "esper.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*esper, *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)

    refused = run("compile", str(EXAMPLES / "mlp.yaml"), "--strategy", "emergency")
    assert refused.returncode == 1 and "esper keys generate" in refused.stdout  # no signing key yet
    assert run("keys", "generate").returncode == 0
    done = run("compile", str(EXAMPLES / "mlp.yaml"), "--strategy", "emergency")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["tier"] == "EMERGENCY" and report["manifest"]["artifact_id"] == report["artifact_id"]
    verified = run("artifact", "verify", report["artifact_id"], "--store", str(tmp_path / "artifacts"))
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "mlp.yaml").read_text().replace("out_features: 64", "out_features: 65"))
    invalid = run("compile", str(bad))
    assert invalid.returncode == 1 and "residual" in invalid.stdout  # the shapes no longer add up
