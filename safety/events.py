"""One way to build a safety event, one way to build telemetry, and the sinks every component reports through.

Components never build packets by hand and never send them: they call `safety_event` / `telemetry_event` and hand
the result to an `EventSink`, whose `emit` must never block (the Kasmina client queues; tests collect).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb

__all__ = [
    "SUBSYSTEM",
    "EventSink",
    "Listeners",
    "NullSink",
    "Reporter",
    "detail_kind",
    "metric_point",
    "notify",
    "safety_event",
    "telemetry_event",
    "telemetry_packet",
]

log = logging.getLogger(__name__)

SUBSYSTEM = "kasmina"

# detail message type -> name of its field in SafetyEvent's `detail` oneof
_DETAIL_FIELDS: dict[str, str] = {
    f.message_type.full_name: f.name
    for f in pb.SafetyEvent.DESCRIPTOR.oneofs_by_name["detail"].fields
    if f.message_type is not None
}


class EventSink(Protocol):
    """Where safety events go. `emit` must return at once: it runs on training and breaker paths."""

    def emit(self, event: pb.SafetyEvent) -> None: ...


def _now_ns() -> int:
    return time.time_ns()


def detail_kind(event: pb.SafetyEvent) -> str:
    """The name of the event's detail (e.g. "breaker_transition"), or "" for a bare event."""
    return event.WhichOneof("detail") or ""


def safety_event(
    severity: pb.TelemetryLevel,
    message: str,
    detail: Message | None = None,
    *,
    source_id: str = "",
    subsystem: str = SUBSYSTEM,
) -> pb.SafetyEvent:
    """Build a SafetyEvent; the detail's type picks its place in the oneof (unknown types are a TypeError)."""
    event = pb.SafetyEvent(
        event_id=uuid.uuid4().hex,
        subsystem=subsystem,
        source_id=source_id,
        severity=severity,
        message=message,
    )
    event.timestamp.FromNanoseconds(_now_ns())
    if detail is not None:
        name = _DETAIL_FIELDS.get(detail.DESCRIPTOR.full_name)
        if name is None:
            raise TypeError(f"{detail.DESCRIPTOR.full_name} is not a SafetyEvent detail")
        getattr(event, name).CopyFrom(detail)
    return event


def telemetry_event(
    name: str,
    severity: pb.TelemetryLevel,
    message: str,
    attributes: Mapping[str, object] | None = None,
) -> pb.TelemetryEvent:
    """Build a TelemetryEvent; attribute values are rendered as text (the contract's native map is string->string)."""
    event = pb.TelemetryEvent(event_name=name, severity=severity, message=message)
    event.timestamp.FromNanoseconds(_now_ns())
    if attributes:
        event.attributes.update({k: str(v) for k, v in attributes.items()})
    return event


def metric_point(
    name: str,
    value: float,
    unit: str = "",
    kind: pb.MetricType = pb.METRIC_GAUGE,
    labels: Mapping[str, str] | None = None,
) -> pb.MetricPoint:
    """Build a MetricPoint (durations are named *_ms with unit "ms")."""
    point = pb.MetricPoint(name=name, value=value, type=kind, unit=unit)
    point.timestamp.FromNanoseconds(_now_ns())
    if labels:
        point.labels.update(labels)
    return point


def telemetry_packet(
    source_id: str,
    *,
    events: Iterable[pb.TelemetryEvent] = (),
    metrics: Iterable[pb.MetricPoint] = (),
    level: pb.TelemetryLevel = pb.TELEMETRY_INFO,
    subsystem: str = SUBSYSTEM,
) -> pb.TelemetryPacket:
    """Build a TelemetryPacket around events and metric points."""
    packet = pb.TelemetryPacket(
        packet_id=uuid.uuid4().hex, source_subsystem=subsystem, source_id=source_id, level=level
    )
    packet.timestamp.FromNanoseconds(_now_ns())
    packet.events.extend(events)
    packet.metrics.extend(metrics)
    return packet


class NullSink:
    """Discards events: for components used where nobody listens."""

    def emit(self, event: pb.SafetyEvent) -> None:
        del event


class Reporter:
    """How a component reports: each event built by `safety_event`, stamped with the component's source id, handed
    to its sink (one piece instead of a private `_emit` in every component)."""

    __slots__ = ("sink", "source_id")

    def __init__(self, sink: EventSink | None = None, source_id: str = "") -> None:
        self.sink: EventSink = sink or NullSink()
        self.source_id = source_id

    def __call__(self, severity: pb.TelemetryLevel, message: str, detail: Message | None = None) -> None:
        self.sink.emit(safety_event(severity, message, detail, source_id=self.source_id))


class Listeners:
    """Fans events out to listeners; a listener that raises is logged and counted, never propagated to the emitter."""

    def __init__(self, *listeners: EventSink | Callable[[pb.SafetyEvent], None]) -> None:
        self._listeners: list[Callable[[pb.SafetyEvent], None]] = []
        self.errors = 0
        for listener in listeners:
            self.add(listener)

    def add(self, listener: EventSink | Callable[[pb.SafetyEvent], None]) -> None:
        fn = listener.emit if hasattr(listener, "emit") else listener
        self._listeners = [*self._listeners, fn]  # copy-on-write: emit iterates without a lock

    def emit(self, event: pb.SafetyEvent) -> None:
        self.errors += notify(self._listeners, event)


def notify(listeners: Iterable[Callable[..., object]], *args: object) -> int:
    """Call every listener with args; one that raises is logged and skipped (the caller's own work, result and
    exception stay its own). Returns how many raised."""
    errors = 0
    for fn in listeners:
        try:
            fn(*args)
        except Exception:
            errors += 1
            log.exception("listener %r failed", fn)
    return errors
