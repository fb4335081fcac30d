"""The topic registry: every Leyline topic, the contracts it carries, its key, partitions and retention."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb

DAY_MS = 24 * 60 * 60 * 1000
FOREVER = "-1"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: the message types it may carry (first is the default), what keys it, and its configs."""

    name: str
    message_types: tuple[type[Message], ...]
    key: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    @cached_property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.DESCRIPTOR.full_name for t in self.message_types)


BLUEPRINTS = TopicSpec(
    "leyline.blueprints",
    (pb.BlueprintIR,),
    "blueprint id",
    3,
    {"retention.ms": FOREVER, "cleanup.policy": "delete"},
    "the design history; retained forever",
)
COMPILATION_REQUESTS = TopicSpec(
    "leyline.compilation.requests",
    (pb.CompilationRequest,),
    "blueprint id",
    3,
    {"retention.ms": str(7 * DAY_MS)},
    "strategy, priority, requestor",
)
COMPILATION_EMERGENCY = TopicSpec(
    "leyline.compilation.emergency",
    (pb.EmergencyCompile,),
    "blueprint id",
    1,
    {"retention.ms": str(7 * DAY_MS)},
    "never queued behind normal work; authorised requestors only",
)
COMPILATION_RESULTS = TopicSpec(
    "leyline.compilation.results",
    (pb.CompilationResult, pb.CompilationComplete),
    "blueprint id",
    3,
    {"retention.ms": FOREVER},
    "success or typed failure, durations, strategy, cache level",
)
KERNELS = TopicSpec(
    "leyline.kernels",
    (pb.CompiledKernelArtifact,),
    "artifact id",
    3,
    {"cleanup.policy": "compact"},
    "artifact metadata; bytes live in the artifact store (claim check)",
)
TELEMETRY = TopicSpec(
    "leyline.telemetry",
    (pb.TelemetryPacket,),
    "source id",
    3,
    {"retention.ms": str(3 * DAY_MS), "compression.type": "lz4"},
    "high volume; producers never block training",
)
SAFETY = TopicSpec(
    "leyline.safety",
    (pb.SafetyEvent,),
    "subsystem/breaker",
    3,
    {"retention.ms": FOREVER},
    "the facts projections fold; replayed to rebuild them",
)
CONTROL_PAUSE = TopicSpec(
    "leyline.control.pause",
    (pb.PauseCommand,),
    "Kasmina instance",
    1,
    {"retention.ms": str(7 * DAY_MS)},
    "consumed by Kasmina clients",
)
DEADLETTER = TopicSpec(
    "leyline.deadletter",
    (pb.DeadLetter,),
    "origin key",
    1,
    {"retention.ms": str(30 * DAY_MS), "max.message.bytes": str(2 * 1024 * 1024)},
    "the undecodable record, its origin and the error; nothing is dropped silently",
)

AUDIT = TopicSpec(
    "leyline.audit",
    (pb.AuditRecord,),
    "request id",
    1,
    {"retention.ms": str(90 * DAY_MS)},
    "every compilation request Tezzeret took: requestor, origin, outcome",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    BLUEPRINTS,
    COMPILATION_REQUESTS,
    COMPILATION_EMERGENCY,
    COMPILATION_RESULTS,
    KERNELS,
    TELEMETRY,
    SAFETY,
    CONTROL_PAUSE,
    DEADLETTER,
    AUDIT,
)
TOPICS_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in ALL_TOPICS}


def topic_spec(name: str) -> TopicSpec | None:
    """The registered spec of a topic, or None for a topic outside the registry."""
    return TOPICS_BY_NAME.get(name)
