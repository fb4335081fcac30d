"""The main job's demo training run, end to end on the real broker: lifecycle, telemetry, and a live pause; and
`esper run`'s whole loop: Tezzeret started, the example seeds compiled, one grafted, the service stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import LocalStore
from esper.compiler.compile import compile_blueprint
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.compiler.sandbox import SandboxExecutor
from esper.compiler.service.health import HealthServer, ServiceSnapshot, fetch_health
from esper.compiler.service.metrics import TezzeretMetrics
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy
from esper.safety.demo import DemoArtifact, run_demo
from esper.safety.seed import SeedStage
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY
from tests.conftest import free_port, own_broker
from tests.sinks import MemorySink

pytestmark = pytest.mark.broker


def test_demo_grows_a_seed_and_obeys_a_pause_command(kafka_bootstrap: str, run_id: str) -> None:
    instance = f"demo-{run_id}"
    paused_steps: list[int] = []
    started = threading.Event()

    def on_step(step: int, loss: float, stage: SeedStage, paused: bool) -> None:
        started.set()
        if paused:
            paused_steps.append(step)

    outcome: list[object] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            run_demo(kafka_bootstrap, steps=300, instance_id=instance, pace_ms=10, on_step=on_step)
        )
    )
    runner.start()
    assert started.wait(60)
    producer = LeylineProducer(kafka_bootstrap)
    producer.send_sync(
        CONTROL_PAUSE.name,
        pb.PauseCommand(action=pb.PAUSE_ENTER, target_instance=instance, reason="test", max_duration_ms=60_000),
        key=instance,
    )
    deadline = time.monotonic() + 30
    while not paused_steps and time.monotonic() < deadline:
        time.sleep(0.01)
    producer.send_sync(
        CONTROL_PAUSE.name, pb.PauseCommand(action=pb.PAUSE_EXIT, target_instance=instance), key=instance
    )
    runner.join(120)
    result = outcome[0]
    assert paused_steps, "the pause command never reached the training loop"
    assert result.final_stage is SeedStage.FOSSILIZED, result.refused
    assert result.last_loss < result.first_loss
    assert result.pause_commands_applied == 2 and result.dropped == 0

    stages: list[int] = []
    grants: list[tuple[int, int]] = []
    consumer = LeylineConsumer(kafka_bootstrap, f"demo-{run_id}", [SAFETY.name])

    def keep(record: Record) -> None:
        event = record.message
        if event.source_id == instance and event.WhichOneof("detail") == "seed_transition":
            stages.append(event.seed_transition.to_stage)
        if event.source_id == instance and event.WhichOneof("detail") == "quota_decision":
            grants.append((event.quota_decision.outcome, event.quota_decision.granted))

    try:
        deadline = time.monotonic() + 60
        while pb.SEED_FOSSILIZED not in stages:
            assert time.monotonic() < deadline, stages
            consumer.poll_once(keep)
    finally:
        consumer.close()
    assert stages == [
        pb.SEED_GERMINATED,
        pb.SEED_TRAINING,
        pb.SEED_BLENDING,
        pb.SEED_SHADOWING,
        pb.SEED_PROBATIONARY,
        pb.SEED_FOSSILIZED,
    ]
    # the pause asked for 60 s, capped at the configured 30 s maximum: more than the spec's 10 s quota per minute
    assert grants == [(pb.QUOTA_PARTIAL, 10_000)]


REPO = Path(__file__).resolve().parents[2]


def test_a_tampered_artifact_is_refused_and_the_demo_trains_its_plain_seed(
    kafka_bootstrap: str, run_id: str, tmp_path: Path
) -> None:
    ring = KeyRing(tmp_path / "keys")
    ring.generate()
    store = LocalStore(tmp_path / "store")
    validated = SecurityValidator().validate(load_blueprint(REPO / "examples" / "blueprints" / "mlp.yaml"))
    with SandboxExecutor(1) as executor:
        built = compile_blueprint(
            validated, CompilationStrategy.EMERGENCY, executor=executor, store=store, ring=ring, sink=MemorySink()
        )
    artifact_id = built.artifact.artifact_id
    weights = store.root / artifact_id / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    result = run_demo(
        kafka_bootstrap, steps=30, instance_id=f"demo-{run_id}", artifact=DemoArtifact(store, artifact_id, ring)
    )
    assert result.graft is None and result.graft_error.startswith("HashMismatchError"), result.graft_error
    assert result.final_stage is SeedStage.TRAINING  # the plain seed went on through the lifecycle


# ---------------------------------------------------------------- `esper run`: the whole loop


@pytest.fixture(scope="module")
def run_broker() -> Iterator[LocalBroker]:
    """A broker of its own: no other Tezzeret answers these blueprints, and no old blueprint waits for ours."""
    with own_broker("run-broker", 130) as broker:
        yield broker


def esper_run(broker: LocalBroker, home: Path, port: int, steps: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ESPER_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "ESPER_HOME": str(home),
        "ESPER_TEZZERET_SERVICE__HTTP_PORT": str(port),
        "ESPER_PROJECTIONS_URL": f"http://127.0.0.1:{free_port()}",  # its own projections app, not a neighbour's
        "ESPER_TEZZERET_COMPILATION__DEFAULT_STRATEGY": "EMERGENCY",  # seconds, not a minute, per blueprint
        "COLUMNS": "300",
    }
    env.pop("ESPER_TEZZERET_HEALTH_URL", None)
    command = [sys.executable, "-m", "esper.cli", "run", "--steps", str(steps), *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_esper_run_starts_tezzeret_grafts_the_seed_it_compiled_and_stops_it(
    run_broker: LocalBroker, tmp_path: Path
) -> None:
    port = free_port()
    done = esper_run(run_broker, tmp_path / "home", port, 200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Tezzeret ready in" in done.stdout and "Tezzeret stopped (exit 0)" in done.stdout
    for name in ("mlp.yaml", "attention.yaml", "conv.yaml"):  # all three fit the slot, all three answered
        assert re.search(rf"{name}: EMERGENCY in [0-9.]+ s \(CACHE_MISS\), artifact [0-9a-f]{{16}}", done.stderr), name
    assert "the dashboard: http://127.0.0.1:" in done.stdout and "projections stopped (exit 0)" in done.stdout
    final = next(line for line in done.stdout.splitlines() if line.startswith("seed: "))
    grafted = re.fullmatch(
        r"seed: artifact ([0-9a-f]{64}) \(mlp.yaml\) grafted, tier EMERGENCY, answered from CACHE_MISS, warm; (\w+)",
        final,
    )
    assert grafted, final
    assert (tmp_path / "home" / "artifacts" / grafted[1]).is_dir()  # from the service's store, in its home
    assert "tezzeret-0 running" in (tmp_path / "home" / "logs" / "tezzeret.log").read_text()
    with pytest.raises(OSError):  # stopped: nothing answers on its port
        fetch_health(f"http://127.0.0.1:{port}/health/tezzeret", 2.0)


def test_esper_run_uses_a_tezzeret_that_answers_already_and_falls_back_when_it_does_not_compile(
    run_broker: LocalBroker, tmp_path: Path
) -> None:
    healthy = ServiceSnapshot(
        instance_id="tz-elsewhere",
        breakers={},
        conservative_active=False,
        conservative_causes=(),
        wal={"usable": True},
        queue={},
        workers=({"ready": True},),
        kafka_ok=True,
        kafka_error="",
        uptime_s=1.0,
    )
    with HealthServer("127.0.0.1", 0, TezzeretMetrics(), lambda: healthy) as elsewhere:  # healthy, answers nothing
        done = esper_run(run_broker, tmp_path / "home", elsewhere.port, 25, "--compile-timeout", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Tezzeret tz-elsewhere already answers" in done.stdout and "none started" in done.stdout
    assert "mlp.yaml: no answer within 3 s" in done.stdout
    seed = next(line for line in done.stdout.splitlines() if line.startswith("seed: "))
    assert seed.startswith("seed: the plain module (Tezzeret compiled none of them)"), seed
    assert done.stdout.strip().splitlines()[-1].startswith("projections stopped (exit 0)")  # the last to stop
    assert not (tmp_path / "home" / "logs" / "tezzeret.log").exists()
