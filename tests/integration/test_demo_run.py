"""The main job's demo training run, end to end on the real broker: lifecycle, telemetry, and a live pause."""

from __future__ import annotations

import threading
import time

import pytest

from esper.proto import leyline_pb2 as pb
from esper.safety.demo import run_demo
from esper.safety.seed import SeedStage
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY

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
