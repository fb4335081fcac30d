"""A sample message of every Leyline contract, shared by the codec's unit tests and the broker round trip."""

from __future__ import annotations

from esper.proto import leyline_pb2 as pb
from esper.streams.topics import ALL_TOPICS


def samples() -> dict[type, object]:
    """A message of each contract with a few fields set (nested ones included), keyed by its class. Written by hand,
    not derived from the topic registry: a contract a topic carries without a sample here fails the coverage test."""
    return {
        pb.BlueprintIR: pb.BlueprintIR(
            blueprint_id="bp-1",
            name="mlp",
            ir_version=1,
            input=pb.TensorSpec(shape=[-1, 64], dtype=pb.DTYPE_FLOAT32),
            nodes=[
                pb.OpNode(id="fc", op="linear", inputs=["input"], attributes=[pb.Attribute(key="out_features", i=128)])
            ],
            output="fc",
            metadata=[pb.KeyValue(key="author", value="karn")],
        ),
        pb.CompilationRequest: pb.CompilationRequest(
            request_id="r1", blueprint_id="bp-1", strategy=pb.STRATEGY_FAST, priority=5, requestor="karn"
        ),
        pb.EmergencyCompile: pb.EmergencyCompile(
            request_id="e1", blueprint_id="bp-1", requestor="tamiyo", authorization_token="tok", deadline_ms=500
        ),
        pb.CompilationResult: pb.CompilationResult(
            request_id="r1", blueprint_id="bp-1", success=False, failure_reason=pb.FAILURE_TIMEOUT, compile_ms=1234
        ),
        pb.CompilationComplete: pb.CompilationComplete(blueprint_id="bp-1", artifact_id="a" * 64),
        pb.CompiledKernelArtifact: pb.CompiledKernelArtifact(
            artifact_id="a" * 64,
            sha256="a" * 64,
            signature=b"\x00\x01sig",
            store_uri="file:///tmp/a",
            compile_options=[pb.KeyValue(key="mode", value="default")],
            has_backward=True,
        ),
        pb.TelemetryPacket: pb.TelemetryPacket(
            packet_id="p1",
            source_subsystem="kasmina",
            events=[
                pb.TelemetryEvent(
                    event_name="circuit_breaker_state_transition",
                    severity=pb.TELEMETRY_WARN,
                    attributes={"old_state": "closed"},
                )
            ],
            metrics=[
                pb.MetricPoint(
                    name="forward_pass_time_ms", value=1.5, type=pb.METRIC_GAUGE, labels={"subsystem": "kasmina"}
                )
            ],
        ),
        pb.SafetyEvent: pb.SafetyEvent(
            event_id="s1",
            subsystem="kasmina",
            breaker_transition=pb.BreakerTransition(
                from_state=pb.CIRCUIT_CLOSED, to_state=pb.CIRCUIT_OPEN, stats=pb.BreakerStats(name="kernel_loading")
            ),
        ),
        pb.PauseCommand: pb.PauseCommand(
            command_id="c1", action=pb.PAUSE_ENTER, target_instance="k1", target_slots=["s0"], quota_ms=500
        ),
        pb.DeadLetter: pb.DeadLetter(
            origin_topic="leyline.telemetry",
            origin_offset=7,
            origin_value=b"\xff\x00",
            error_type="MalformedPayloadError",
        ),
        pb.AuditRecord: pb.AuditRecord(
            request_id="r1",
            kind=pb.REQUEST_EMERGENCY,
            requestor="tamiyo",
            origin_topic="leyline.compilation.emergency",
            authorized=False,
            failure_reason=pb.FAILURE_UNAUTHORIZED,
        ),
    }


def sample(cls: type) -> object:
    """A fresh sample of one contract."""
    return samples()[cls]


CONTRACTS = sorted({t for spec in ALL_TOPICS for t in spec.message_types}, key=lambda t: t.DESCRIPTOR.full_name)
SAFETY_KINDS = [f.name for f in pb.SafetyEvent.DESCRIPTOR.oneofs_by_name["detail"].fields]


def safety_event(kind: str) -> pb.SafetyEvent:
    """A SafetyEvent of one kind (the oneof case set, its detail empty)."""
    event = pb.SafetyEvent(event_id=f"s-{kind}", subsystem="kasmina", severity=pb.TELEMETRY_WARN)
    getattr(event, kind).SetInParent()
    return event


def every_sample() -> list[object]:
    """One message of each contract, and one SafetyEvent of each kind."""
    return [sample(cls) for cls in CONTRACTS] + [safety_event(kind) for kind in SAFETY_KINDS]


def topic_of(cls: type) -> str:
    return next(spec.name for spec in ALL_TOPICS if cls in spec.message_types)
