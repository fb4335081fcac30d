"""The demo training run of `esper run`: a small host model with one seed slot, driven through the seed lifecycle
while the Kasmina client publishes telemetry and safety events and obeys pause commands from Kafka.

The seed is a plain module unless an artifact is given: then Tezzeret's compiled module is verified and grafted into
the slot before training (a refused or missing artifact leaves the plain module, and says why). The performance gate
(G4) compares the loss of the last steps with the seed blended in against the loss of the steps before blending.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from esper.compiler.artifacts.keys import KeyRing
from esper.compiler.artifacts.store import ArtifactStore
from esper.compiler.exceptions import ArtifactError
from esper.compiler.graft import GraftReport, graft_artifact
from esper.safety.client import KasminaClient
from esper.safety.config import GraftingConfig
from esper.safety.exceptions import IllegalTransitionError
from esper.safety.seed import SeedSlot, SeedStage
from esper.safety.timing import StandardizedPerformanceMetrics

__all__ = ["SLOT_WIDTH", "DemoArtifact", "DemoResult", "run_demo"]

SLOT_WIDTH = 64  # the seed slot sees batch x SLOT_WIDTH float32 activations
StepCallback = Callable[[int, float, SeedStage, bool], None]  # step, loss, stage, paused


@dataclass(frozen=True)
class DemoArtifact:
    """A compiled seed for the slot: an artifact in a store, verified against the key ring before it is grafted."""

    store: ArtifactStore
    artifact_id: str
    ring: KeyRing


@dataclass(frozen=True)
class DemoResult:
    steps: int
    first_loss: float
    last_loss: float
    final_stage: SeedStage
    telemetry_queued: int
    dropped: int
    pause_commands_applied: int
    refused: tuple[str, ...]  # transitions a gate refused (each also a safety event)
    graft: GraftReport | None = None  # the artifact grafted into the slot; None: the plain module
    graft_error: str = ""  # why an artifact given was not grafted


def _plan(config: GraftingConfig) -> dict[int, SeedStage]:
    """Step -> stage to enter: germinate early, train, blend over fixed_steps, shadow, then the G4 decisions."""
    train_at = 20
    blend_at = train_at + max(config.stabilization_epochs, 60)
    shadow_at = blend_at + config.fixed_steps
    return {
        train_at - 1: SeedStage.GERMINATED,
        train_at: SeedStage.TRAINING,
        blend_at: SeedStage.BLENDING,
        shadow_at: SeedStage.SHADOWING,
        shadow_at + 40: SeedStage.PROBATIONARY,
        shadow_at + 80: SeedStage.FOSSILIZED,
    }


def run_demo(
    bootstrap_servers: str,
    *,
    steps: int = 300,
    instance_id: str = "kasmina-demo",
    pace_ms: float = 0.0,
    on_step: StepCallback | None = None,
    artifact: DemoArtifact | None = None,
) -> DemoResult:
    """Train for `steps`; `pace_ms` waits between steps so that a person can follow the run (and pause it). With an
    `artifact`, its module is grafted into the slot first (refusals are safety events on the client's sink)."""
    torch.manual_seed(0)
    config = GraftingConfig(fixed_steps=30)
    teacher = torch.randn(32, 1) * 0.2  # a smooth target the small host can learn
    plan = _plan(config)
    losses: list[float] = []
    refused: list[str] = []
    report: GraftReport | None = None
    graft_error = ""
    with KasminaClient(bootstrap_servers, instance_id) as client:
        slot = SeedSlot(
            "slot-0",
            nn.Sequential(nn.Linear(SLOT_WIDTH, SLOT_WIDTH), nn.GELU(), nn.Linear(SLOT_WIDTH, SLOT_WIDTH)),
            instance_id=instance_id,
            config=config,
            safety=client.safety,
            sink=client,
        )
        client.add_slot(slot)
        if artifact is not None:
            try:
                report = graft_artifact(slot, artifact.store, artifact.artifact_id, artifact.ring, client)
            except ArtifactError as e:  # verified or nothing: the slot keeps its plain module
                graft_error = f"{type(e).__name__}: {e}"
        host = nn.Sequential(nn.Linear(32, SLOT_WIDTH), nn.GELU(), slot, nn.Linear(SLOT_WIDTH, 1))
        # built after the graft, so that the grafted seed's parameters are the optimizer's too
        optimizer = torch.optim.Adam(host.parameters(), lr=1e-2)
        performance = StandardizedPerformanceMetrics({"instance": instance_id, "slot": slot.slot_id})
        client.wait_ready(30)
        for step in range(steps):
            target = plan.get(step)
            if target is not None and slot.stage not in (SeedStage.EMBARGOED, SeedStage.CULLED):
                _enter(slot, target, losses, plan, refused)
            x = torch.randn(128, 32)
            y = torch.sin(x @ teacher)
            with performance.timed("training_step_time_ms"):
                with performance.timed("forward_pass_time_ms"):
                    loss = nn.functional.mse_loss(host(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            slot.advance()
            losses.append(loss.item())
            client.publish_metrics(
                {"loss": losses[-1], "alpha_blending_value": slot.metrics().alpha},
                {"slot": slot.slot_id, "stage": slot.stage.name},
            )
            if step % config.telemetry_reporting_frequency == 0:
                client.publish_performance(performance)
            if on_step is not None:
                on_step(step, losses[-1], slot.stage, slot.is_paused)
            if pace_ms:
                time.sleep(pace_ms / 1000)
        client.flush(10)
        stats = client.stats()
    return DemoResult(
        steps=steps,
        first_loss=statistics.fmean(losses[:10]),
        last_loss=statistics.fmean(losses[-10:]),
        final_stage=slot.stage,
        telemetry_queued=stats.queued,
        dropped=stats.dropped,
        pause_commands_applied=stats.commands_applied,
        refused=tuple(refused),
        graft=report,
        graft_error=graft_error,
    )


def _enter(
    slot: SeedSlot, target: SeedStage, losses: list[float], plan: dict[int, SeedStage], refused: list[str]
) -> None:
    improvement = None
    if target in (SeedStage.PROBATIONARY, SeedStage.FOSSILIZED):
        blend_at = next(step for step, stage in plan.items() if stage is SeedStage.BLENDING)
        before = statistics.fmean(losses[blend_at - 20 : blend_at])
        improvement = before - statistics.fmean(losses[-20:])
    try:
        slot.transition(target, improvement=improvement)
    except IllegalTransitionError as e:  # the slot reported it; a failed G4 has culled the seed
        refused.append(str(e))
