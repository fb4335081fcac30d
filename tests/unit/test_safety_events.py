"""One builder for safety events and telemetry, and sinks that never let a listener break the emitter."""

from __future__ import annotations

import pytest

from esper.proto import leyline_pb2 as pb
from esper.safety.events import (
    Listeners,
    detail_kind,
    metric_point,
    safety_event,
    telemetry_event,
    telemetry_packet,
)
from tests.sinks import MemorySink


def test_safety_event_places_the_detail_in_the_oneof() -> None:
    e = safety_event(pb.TELEMETRY_WARN, "hot", pb.TimingViolation(operation="x", actual_ms=3), source_id="k1")
    assert detail_kind(e) == "timing_violation" and e.timing_violation.actual_ms == 3
    assert (e.subsystem, e.source_id, e.severity) == ("kasmina", "k1", pb.TELEMETRY_WARN)
    assert e.event_id and e.timestamp.seconds > 0
    assert detail_kind(safety_event(pb.TELEMETRY_INFO, "bare")) == ""
    with pytest.raises(TypeError):
        safety_event(pb.TELEMETRY_INFO, "bad", pb.PauseCommand())


def test_telemetry_builders() -> None:
    ev = telemetry_event("x_happened", pb.TELEMETRY_INFO, "msg", {"n": 3, "ok": True})
    assert dict(ev.attributes) == {"n": "3", "ok": "True"}
    m = metric_point("forward_pass_time_ms", 1.5, "ms", labels={"slot": "s0"})
    p = telemetry_packet("k1", events=[ev], metrics=[m])
    assert p.source_id == "k1" and p.metrics[0].labels["slot"] == "s0" and p.events[0].event_name == "x_happened"
    assert p.ByteSize() < 280


def test_listener_errors_are_counted_not_raised() -> None:
    sink = MemorySink()

    def broken(_: pb.SafetyEvent) -> None:
        raise RuntimeError("listener bug")

    fan = Listeners(broken, sink)
    fan.emit(safety_event(pb.TELEMETRY_INFO, "m"))
    assert fan.errors == 1 and len(sink.events) == 1
