"""What `esper status` shows of each projection: every view reads the fields the reducers really produce."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from rich.console import Console

from esper.projections import reducers
from esper.projections.cli import VIEWS, state_table
from esper.projections.facts import Fact
from esper.projections.replay import ReplayError, select
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event


def _fact(topic: str, offset: int, message: Message, key: str = "k") -> Fact:
    return Fact(topic, 0, offset, 1_764_583_200_000 + offset, key, f"m{offset}", message)


def _facts() -> list[Fact]:
    stats = pb.BreakerStats(name="graft", state=pb.CIRCUIT_OPEN)
    details: list[Message] = [
        pb.BreakerTransition(stats=stats, from_state=pb.CIRCUIT_CLOSED, to_state=pb.CIRCUIT_OPEN, reason="r"),
        pb.BreakerFailure(stats=stats, error_type="E", error="boom"),
        pb.ConservativeModeChanged(service="tezzeret", active=True, reasons=["timeout"]),
        pb.PauseEntered(instance_id="k1", slot_id="s0", reason="why", quota_ms=10),
        pb.QuotaDecision(outcome=pb.QUOTA_FULL, requested=5, granted=5, remaining=5, max_quota=10),
        pb.SeedTransition(instance_id="k1", slot_id="s0", from_stage=pb.SEED_DORMANT, to_stage=pb.SEED_GERMINATED),
    ]
    facts = [
        _fact("leyline.safety", i, safety_event(pb.TELEMETRY_WARN, "m", d, source_id="k1"))
        for i, d in enumerate(details)
    ]
    packet = pb.TelemetryPacket(packet_id="p1", source_id="k1")
    packet.metrics.add(name="step_ms", value=1.5)
    facts += [
        _fact("leyline.compilation.requests", 0, pb.CompilationRequest(request_id="r1", blueprint_id="bp")),
        _fact("leyline.compilation.results", 0, pb.CompilationResult(request_id="r1", blueprint_id="bp", success=True)),
        _fact("leyline.telemetry", 0, packet),
        _fact("leyline.deadletter", 0, pb.DeadLetter(origin_topic="leyline.safety", error_type="X", error="bad")),
    ]
    return facts


def test_every_view_renders_the_reducers_states() -> None:
    tables = reducers.fold_all(_facts())
    assert set(VIEWS) == {p.name for p in reducers.PROJECTIONS}
    for name, state in tables.items():
        assert state, f"the sample facts leave {name} empty"
        console = Console(record=True, width=200)
        console.print(state_table(name, state))
        text = console.export_text()
        assert VIEWS[name][0] in text
        assert all(key in text for key in state)
    console = Console(record=True, width=200)
    console.print(state_table("breakers", tables["breakers"]))
    text = console.export_text()
    assert "OPEN" in text and "CLOSED -> OPEN: r" in text


def test_a_table_longer_than_its_limit_shows_the_last_keys_and_counts_the_rest() -> None:
    state = {f"k{i:02d}": {"count": i} for i in range(30)}
    console = Console(record=True, width=200)
    console.print(state_table("unviewed", state, limit=5))
    text = console.export_text()
    assert "k29" in text and "k25" in text and "k24" not in text and "25 more" in text


def test_projections_are_chosen_by_name() -> None:
    assert [p.name for p in select(None)] == [p.name for p in reducers.PROJECTIONS]
    assert [p.name for p in select(["pauses", "breakers"])] == ["breakers", "pauses"]  # registry order
    with pytest.raises(ReplayError, match="nope"):
        select(["breakers", "nope"])
