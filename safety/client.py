"""The Kasmina client: connects a training process to Kafka without ever blocking a training step.

Outbound: `emit` (safety events, so the client is an EventSink) and `publish_metrics` / `publish` (telemetry)
append to a bounded in-memory buffer and return; a background thread builds packets and hands them to
`LeylineProducer.try_send`. A full buffer or a full producer queue is a counted drop, and so is a message the
broker never acknowledged; the total is published as the `kasmina_telemetry_dropped_total` metric.

Inbound: a background consumer of `leyline.control.pause`, in its own consumer group (every instance sees every
command) starting at the end of the topic, applies PAUSE_ENTER / PAUSE_EXIT to the targeted slots within
milliseconds and ends pauses whose time is up. A PAUSE_ENTER spends pause quota (server-side enforcement from the
ProductionSafetyConfig: full, partial or denied grants, each a safety event); the grant bounds the pause. A command
that cannot be decoded, is invalid (a bad value, a wrong authorization token, an unknown slot) or is refused (no
quota left, pauses disabled) goes to the dead letters with a CommandRejected safety event; it never stops the
consumer.

At start the client publishes the machine's hardware timing profile once (`timing` is its validator).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb
from esper.safety.clock import monotonic_ms
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import metric_point, safety_event, telemetry_packet
from esper.safety.exceptions import InvalidCommandError, PauseRefusedError
from esper.safety.pause import PauseQuota, pause_refusal, pause_request_problems
from esper.safety.seed import SeedSlot
from esper.safety.timing import HardwareAwareTimingValidator, StandardizedPerformanceMetrics
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY, TELEMETRY

__all__ = ["DROPPED_METRIC", "ClientStats", "KasminaClient"]

log = logging.getLogger(__name__)

DROPPED_METRIC = "kasmina_telemetry_dropped_total"

# Telemetry tolerates loss; the training step must never wait. Safety events share the producer (acks=all).
# A long linger batches a second's packets into a few requests: less CPU beside the training step (measured:
# 5 ms gave a 1.048 step-time ratio, 100 ms 1.024, with the 100 ms publish interval 1.00).
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "queue.buffering.max.messages": 10_000,
    "message.timeout.ms": 30_000,
    "linger.ms": 100,
}
# The publisher drains the buffer in batches at this interval: fewer GIL hand-offs with the training thread.
PUBLISH_INTERVAL_S = 0.1
_CONSUMER_DEFAULTS: dict[str, Any] = {"fetch.wait.max.ms": 5, "session.timeout.ms": 10_000}


@dataclass(frozen=True)
class ClientStats:
    """What the client has done so far."""

    queued: int
    buffer_dropped: int
    producer_dropped: int
    delivery_failed: int
    delivered: int
    commands_applied: int
    commands_rejected: int

    @property
    def dropped(self) -> int:
        return self.buffer_dropped + self.producer_dropped + self.delivery_failed


class KasminaClient:
    """Publishes a training process's telemetry and safety events, and applies pause commands to its slots.

    `safety` drives the pause quota (unless `quota` is given) and the timing validator; slots keep their own
    config (pass the same one): a pause command is refused, before any quota is spent, when this config or the
    config of a slot it would pause refuses pauses. `authorization_tokens`: when given, a command must carry one
    of them; None accepts any command (a broker nobody else can write to)."""

    def __init__(
        self,
        bootstrap_servers: str,
        instance_id: str,
        *,
        safety: ProductionSafetyConfig | None = None,
        slots: Iterable[SeedSlot] = (),
        quota: PauseQuota | None = None,
        authorization_tokens: Iterable[str] | None = None,
        buffer_size: int = 10_000,
        consume_pause: bool = True,
        producer_overrides: Mapping[str, Any] | None = None,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.safety = safety or ProductionSafetyConfig()
        self._slots: dict[str, SeedSlot] = {s.slot_id: s for s in slots}
        self._tokens = None if authorization_tokens is None else [t.encode() for t in authorization_tokens]
        self._buffer_size = buffer_size
        self._buffer: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()  # the pause consumer holds its partition
        self._queued = 0
        self._settled = 0  # items the publisher has handed to the producer or dropped
        self._buffer_dropped = 0
        self.commands_applied = 0
        self.commands_rejected = 0
        self._quota = quota or PauseQuota(self.safety, sink=self, source_id=instance_id)
        self._performance = StandardizedPerformanceMetrics({"instance": instance_id})
        self.timing = HardwareAwareTimingValidator(config=self.safety, sink=self, source_id=instance_id)
        self.timing.report_hardware_profile()
        self._producer = LeylineProducer(
            bootstrap_servers,
            producer_id=f"kasmina-{instance_id}",
            **{**_PRODUCER_DEFAULTS, **(producer_overrides or {})},
        )
        self._publisher = threading.Thread(target=self._publish_loop, name=f"kasmina-{instance_id}-pub", daemon=True)
        self._publisher.start()
        self._consumer: LeylineConsumer | None = None
        self._listener: threading.Thread | None = None
        if consume_pause:
            self._consumer = LeylineConsumer(
                bootstrap_servers,
                f"kasmina-{instance_id}-{uuid.uuid4().hex[:8]}",
                [CONTROL_PAUSE.name],
                from_beginning=False,
                on_dead_letter=self._on_rejected,
                **{**_CONSUMER_DEFAULTS, **(consumer_overrides or {})},
            )
            self._listener = threading.Thread(
                target=self._listen_loop, name=f"kasmina-{instance_id}-pause", daemon=True
            )
            self._listener.start()

    # -- slots ---------------------------------------------------------------------------------------------

    def add_slot(self, slot: SeedSlot) -> None:
        self._slots = {**self._slots, slot.slot_id: slot}  # copy-on-write: the listener thread reads without a lock

    @property
    def slots(self) -> Mapping[str, SeedSlot]:
        return self._slots

    # -- outbound (called on the training thread: append and return) ----------------------------------------

    def emit(self, event: pb.SafetyEvent) -> None:
        """EventSink: queue a safety event for leyline.safety."""
        self._enqueue("safety", event)

    def publish(self, packet: pb.TelemetryPacket) -> None:
        """Queue a ready-made telemetry packet."""
        self._enqueue("packet", packet)

    def publish_metrics(self, values: Mapping[str, float], labels: Mapping[str, str] | None = None) -> None:
        """Queue metric values; the packet (with the drop counter) is built on the background thread."""
        self._enqueue("metrics", (dict(values), dict(labels) if labels else None))

    def publish_performance(self, metrics: StandardizedPerformanceMetrics) -> None:
        """Queue the latest value of each standardized `_ms` metric as one packet (with the drop counter)."""
        self._enqueue("points", metrics.metric_points())

    def _enqueue(self, kind: str, item: Any) -> None:
        if len(self._buffer) >= self._buffer_size:
            self._buffer_dropped += 1
            return
        self._buffer.append((kind, item))
        self._queued += 1
        # Wake the publisher only when the buffer fills up; otherwise it drains in batches every
        # PUBLISH_INTERVAL_S, which keeps its GIL and CPU use away from the training step.
        if len(self._buffer) >= self._buffer_size // 2 and not self._wake.is_set():
            self._wake.set()

    # -- background publishing ------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        while True:
            self._drain()
            if self._stop.is_set() and not self._buffer:
                return
            self._wake.wait(PUBLISH_INTERVAL_S)
            self._wake.clear()
            self._producer.poll(0)

    def _drain(self) -> None:
        while self._buffer:
            kind, item = self._buffer.popleft()
            try:
                topic, message, key = self._render(kind, item)
                self._producer.try_send(topic, message, key)
            except Exception:  # a bad item must not stop telemetry; it is counted like any other loss
                self._buffer_dropped += 1
                log.exception("kasmina client could not publish a %s", kind)
            finally:
                self._settled += 1  # only now is it in the producer's queue (or lost): flush waits for this

    def _render(self, kind: str, item: Any) -> tuple[str, Message, str]:
        if kind == "safety":
            return SAFETY.name, item, f"kasmina/{self.instance_id}"
        if kind == "packet":
            return TELEMETRY.name, item, self.instance_id
        if kind == "points":
            points = list(item)
        else:
            values, labels = item
            points = [
                metric_point(name, float(v), "ms" if name.endswith("_ms") else "", labels=labels)
                for name, v in values.items()
            ]
        points.append(metric_point(DROPPED_METRIC, float(self.stats().dropped), "", pb.METRIC_COUNTER))
        return TELEMETRY.name, telemetry_packet(self.instance_id, metrics=points), self.instance_id

    # -- inbound: pause commands ----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Wait until the pause consumer holds its partition (commands produced before that are not seen)."""
        return self._consumer is None or self._ready.wait(timeout_s)

    def _listen_loop(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            # librdkafka's consumer is used from this thread only (assignment() from another thread can hang)
            if not self._ready.is_set() and self._consumer.assignment():
                self._ready.set()
            try:
                self._consumer.poll_once(self._apply_command, timeout_s=0.05, max_records=1)
            except Exception:  # the broker away, a dead-letter send failing: keep listening
                log.exception("pause consumer poll failed")
                time.sleep(0.1)
            for slot in self._slots.values():
                slot.tick()

    def _on_rejected(self, letter: pb.DeadLetter, error: BaseException) -> None:
        """A command was dead-lettered (undecodable, or invalid here): count it and report it as a safety event."""
        self.commands_rejected += 1
        rejected = pb.CommandRejected(
            error_type=type(error).__name__,
            error=str(error),
            origin_topic=letter.origin_topic,
            origin_partition=letter.origin_partition,
            origin_offset=letter.origin_offset,
        )
        self.emit(
            safety_event(pb.TELEMETRY_ERROR, f"pause command rejected: {error}", rejected, source_id=self.instance_id)
        )

    def _apply_command(self, record: Record) -> None:
        cmd = record.message
        if not isinstance(cmd, pb.PauseCommand):
            raise InvalidCommandError(f"expected a PauseCommand, got {cmd.DESCRIPTOR.full_name}")
        if cmd.target_instance != self.instance_id:
            return
        start = monotonic_ms()
        # an InvalidCommandError or PauseRefusedError dead-letters the record, then _on_rejected reports it
        self._apply_pause(cmd)
        self.commands_applied += 1
        self._performance.record("command_processing_time_ms", monotonic_ms() - start)
        self.publish_performance(self._performance)

    def _command_problems(self, cmd: pb.PauseCommand) -> list[str]:
        problems = []
        if self._tokens is not None:
            token = cmd.authorization_token.encode()
            if not any(hmac.compare_digest(token, t) for t in self._tokens):
                problems.append("authorization_token missing or not accepted")
        if cmd.action not in (pb.PAUSE_ENTER, pb.PAUSE_EXIT):
            problems.append(f"no valid action ({cmd.action})")
        unknown = [s for s in cmd.target_slots if s not in self._slots]
        if unknown:
            problems.append(f"unknown slot(s) {', '.join(unknown)} on {self.instance_id}")
        # proto3 cannot tell 0 from absent: 0 means "not given"; a negative value is an error
        return problems + pause_request_problems(cmd.quota_ms or None, cmd.max_duration_ms or None)

    def _apply_pause(self, cmd: pb.PauseCommand) -> None:
        problems = self._command_problems(cmd)
        if problems:
            raise InvalidCommandError(f"pause command {cmd.command_id!r}: {'; '.join(problems)}")
        targets = [self._slots[s] for s in cmd.target_slots] if cmd.target_slots else list(self._slots.values())
        if cmd.action == pb.PAUSE_EXIT:
            for slot in targets:
                slot.pause_exit("command", cmd.command_id)
            return
        to_pause = [slot for slot in targets if not slot.is_paused]
        if not to_pause:
            return  # already paused: the pause in force is kept and no quota is spent
        # Every refusal before any quota is spent or any slot paused: a command pauses all its targets or none.
        refusals = self._pause_refusals(to_pause)
        if refusals:
            raise PauseRefusedError(f"pause command {cmd.command_id!r} refused: {'; '.join(refusals)}")
        configured = self.safety.max_pause_duration_ms
        max_duration = cmd.max_duration_ms or None
        # the quota asked for: the command's, else the pause time it asks for (capped by the configuration)
        decision = self._quota.request_pause_quota(cmd.quota_ms or min(max_duration or configured, configured))
        if decision.granted <= 0:
            raise PauseRefusedError(f"pause command {cmd.command_id!r} refused: no pause quota left")
        for slot in to_pause:
            slot.pause_enter(cmd.reason or "pause command", decision.granted, max_duration, cmd.command_id)

    def _pause_refusals(self, slots: Iterable[SeedSlot]) -> list[str]:
        """Why this client's config, or the own config of one of `slots`, refuses pauses (empty: none does)."""
        configs = [(self.instance_id, self.safety), *((f"slot {s.slot_id}", s.pause.config) for s in slots)]
        return [f"{where}: {why}" for where, config in configs if (why := pause_refusal(config)) is not None]

    # -- lifecycle ------------------------------------------------------------------------------------------

    def stats(self) -> ClientStats:
        p = self._producer.stats
        return ClientStats(
            queued=self._queued,
            buffer_dropped=self._buffer_dropped,
            producer_dropped=p.dropped,
            delivery_failed=p.failed,
            delivered=p.delivered,
            commands_applied=self.commands_applied,
            commands_rejected=self.commands_rejected,
        )

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait until everything queued so far is handed over and the producer has delivered; returns what is still
        queued (in the buffer, being handed over, or in the producer)."""
        deadline = time.monotonic() + timeout_s
        target = self._queued
        self._wake.set()
        while self._settled < target and time.monotonic() < deadline:
            time.sleep(0.005)
        unsettled = target - self._settled
        return max(0, unsettled) + self._producer.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop listening, flush what is queued (up to timeout_s), release the Kafka clients."""
        if self._stop.is_set():
            return
        for slot in self._slots.values():
            slot.pause_exit("shutdown")
        self._stop.set()
        self._wake.set()
        self._publisher.join(timeout_s)
        self._producer.flush(timeout_s)
        if self._listener is not None and self._consumer is not None:
            self._listener.join(timeout_s)
            self._consumer.close()

    def __enter__(self) -> KasminaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
