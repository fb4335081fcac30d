"""The seed lifecycle projection against a real SeedSlot (apart from the other reducer tests: it imports torch)."""

from __future__ import annotations

import pytest
import torch

from esper.projections.reducers import fold_all
from esper.safety.exceptions import IllegalTransitionError
from esper.safety.seed import SeedSlot, SeedStage
from tests.projection_facts import Log
from tests.sinks import MemorySink


def test_seed_lifecycle_from_a_real_slot_germinated_refused_and_culled() -> None:
    sink = MemorySink()
    slot = SeedSlot("s1", torch.nn.Linear(4, 4), instance_id="k1", sink=sink)
    slot.germinate(example=torch.zeros(2, 4))
    slot.transition(SeedStage.TRAINING)
    with pytest.raises(IllegalTransitionError):
        slot.transition(SeedStage.BLENDING)  # G2: too few training steps
    log = Log()
    for e in sink.events:
        log.event(e)
    (s,) = fold_all(log.facts)["seeds"].values()
    assert s["stage"] == slot.stage.name == "TRAINING"
    assert s["last_gate"]["gate"] == "G2" and s["last_gate"]["passed"] is False and s["refusals"] == 1
    slot.cull("operator")
    for e in sink.events[len(log.facts) :]:
        log.event(e)
    (s,) = fold_all(log.facts)["seeds"].values()
    assert s["stage"] == slot.stage.name == "EMBARGOED" and s["previous"] == "CULLED"
    assert s["transitions"] == 4 and s["last_gate"]["gate"] == "embargo"
