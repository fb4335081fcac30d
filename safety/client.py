"""The Kasmina client: connects a training process to Kafka without ever blocking a training step.

Safety events (`emit`: the client is an EventSink) are the facts projections fold, so none may be lost: each is
written to a local outbox (esper.safety.outbox: one write(2), no fsync on the caller's thread) and a background thread
delivers it from there with a producer of its own (no delivery timeout, acks=all, idempotent); an event leaves the
outbox only once the broker acknowledged it. A broker outage of any length, a burst, a fatal producer error (the
producer is recreated and the event sent again) or a `kill -9` loses nothing: the next client of the same instance
delivers what the outbox kept, with the same event ids, so consumers can drop duplicates. `flush`/`close` wait for the
outbox to empty (up to their timeout); what is still undelivered is published as `kasmina_safety_undelivered`.

Telemetry (`publish_metrics` / `publish`) may be lost: a bounded in-memory buffer feeds its own producer
(`try_send`); a full buffer, a full queue or an unacknowledged packet is a counted drop, published as
`kasmina_telemetry_dropped_total`.

Inbound: pause commands from `leyline.control.pause`, read with no consumer group (nothing committed, no group left
behind). At start the client reads the topic from `max_pause_duration_ms` ago and applies what is still in force for
its instance (a pause whose time is not up, for the time it has left); `wait_ready()` returns once that history is
applied, and any command produced after it returns is applied too. A PAUSE_ENTER spends pause quota (server-side
enforcement from the ProductionSafetyConfig: full, partial or denied grants, each a safety event); the grant bounds
the pause. A command that cannot be decoded, is invalid (a bad value, a wrong authorization token, an unknown slot)
or is refused (no quota left, pauses disabled) goes to the dead letters, its secrets redacted, with a
CommandRejected safety event; it never stops the listener.

At start the client publishes the machine's hardware timing profile once (`timing` is its validator).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Message as KafkaMessage
from google.protobuf.message import DecodeError as ProtoDecodeError
from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb
from esper.safety.clock import monotonic_ms
from esper.safety.config import ProductionSafetyConfig
from esper.safety.events import metric_point, safety_event, telemetry_packet
from esper.safety.exceptions import InvalidCommandError, PauseRefusedError
from esper.safety.outbox import SafetyOutbox
from esper.safety.pause import PauseQuota, pause_refusal, pause_request_problems
from esper.safety.seed import SeedSlot
from esper.safety.timing import HardwareAwareTimingValidator, StandardizedPerformanceMetrics
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.exceptions import StreamsError
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY, TELEMETRY

__all__ = ["DROPPED_METRIC", "UNDELIVERED_METRIC", "ClientStats", "KasminaClient"]

log = logging.getLogger(__name__)

DROPPED_METRIC = "kasmina_telemetry_dropped_total"
UNDELIVERED_METRIC = "kasmina_safety_undelivered"

# Telemetry tolerates loss; the training step must never wait. A long linger batches a second's packets into a few
# requests: less CPU beside the training step (measured: 5 ms gave a 1.048 step-time ratio, 100 ms 1.024, with the
# 100 ms publish interval 1.00).
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "queue.buffering.max.messages": 10_000,
    "message.timeout.ms": 30_000,
    "linger.ms": 100,
}
# Safety events: never given up on (no delivery timeout; the outbox keeps them anyway), sent as soon as they come.
_SAFETY_PRODUCER_DEFAULTS: dict[str, Any] = {
    "message.timeout.ms": 0,
    "queue.buffering.max.messages": 100_000,
    "linger.ms": 5,
}
# At most this many safety events in the producer at once; the rest wait in the outbox (memory stays bounded).
SAFETY_IN_FLIGHT = 1_000
# After a failed safety delivery, wait this long before sending again from the first unacknowledged event.
SAFETY_RESEND_BACKOFF_S = 1.0
# The publisher drains the buffer in batches at this interval: fewer GIL hand-offs with the training thread.
PUBLISH_INTERVAL_S = 0.1
# The outbox is synced to disk (power loss) at most this often, from the publisher's thread.
OUTBOX_SYNC_INTERVAL_S = 1.0
_CONSUMER_DEFAULTS: dict[str, Any] = {"fetch.wait.max.ms": 5}
# How long the listener waits between tries to reach the cluster at start.
_LISTENER_RETRY_S = 1.0


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
    safety_emitted: int = 0  # this process
    safety_delivered: int = 0  # acknowledged by the broker, this process (events kept by an earlier one included)
    safety_undelivered: int = 0  # in the outbox, not acknowledged yet
    safety_recovered: int = 0  # left undelivered by an earlier process, found at start
    safety_delivery_errors: int = 0  # failed attempts (each event is sent again)
    outbox_write_errors: int = 0

    @property
    def dropped(self) -> int:
        """Telemetry lost (safety events are never dropped)."""
        return self.buffer_dropped + self.producer_dropped + self.delivery_failed


class KasminaClient:
    """Publishes a training process's telemetry and safety events, and applies pause commands to its slots.

    `safety` drives the pause quota (unless `quota` is given) and the timing validator; slots keep their own
    config (pass the same one): a pause command is refused, before any quota is spent, when this config or the
    config of a slot it would pause refuses pauses. `authorization_tokens`: when given, a command must carry one
    of them; None accepts any command (a broker nobody else can write to). `outbox_dir`: where safety events wait
    for the broker (default `.esper/outbox/<instance_id>`); one process at a time holds it."""

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
        outbox_dir: Path | str | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
        safety_producer_overrides: Mapping[str, Any] | None = None,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._bootstrap = bootstrap_servers
        self._outbox = SafetyOutbox(Path(outbox_dir) if outbox_dir else Path(".esper", "outbox", instance_id))
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
        # The safety pump's state, touched only by the publisher thread (delivery reports run in its poll calls).
        self._sent_upto = self._outbox.acked  # highest seq handed to the safety producer
        self._in_flight: dict[int, bool] = {}  # seq -> acknowledged, in send order
        self._resend_at: float | None = None  # after a failed delivery: when to send again from the oldest unacked
        self._last_sync = time.monotonic()
        self._safety_emitted = self._safety_delivered = self._safety_errors = 0
        self._close_deadline = float("inf")
        self._history_end: dict[tuple[str, int], int] = {}  # pause topic: where the log stood at start
        self._quota = quota or PauseQuota(self.safety, sink=self, source_id=instance_id)
        self._performance = StandardizedPerformanceMetrics({"instance": instance_id})
        self.timing = HardwareAwareTimingValidator(config=self.safety, sink=self, source_id=instance_id)
        self.timing.report_hardware_profile()
        overrides = dict(producer_overrides or {})
        self._producer = LeylineProducer(
            bootstrap_servers, producer_id=f"kasmina-{instance_id}", **{**_PRODUCER_DEFAULTS, **overrides}
        )
        self._safety_producer = LeylineProducer(
            bootstrap_servers,
            producer_id=f"kasmina-{instance_id}-safety",
            **{
                **_SAFETY_PRODUCER_DEFAULTS,
                # the telemetry overrides apply too (client settings), but not over its own delivery settings
                **{k: v for k, v in overrides.items() if k not in _SAFETY_PRODUCER_DEFAULTS},
                **(safety_producer_overrides or {}),
            },
        )
        self._consumer_overrides = {**_CONSUMER_DEFAULTS, **(consumer_overrides or {})}
        self._publisher = threading.Thread(target=self._publish_loop, name=f"kasmina-{instance_id}-pub", daemon=True)
        self._publisher.start()
        self._consumer: LeylineConsumer | None = None
        self._listener: threading.Thread | None = None
        if consume_pause:
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
        """EventSink: keep a safety event in the outbox for leyline.safety (never dropped, never waits)."""
        self._outbox.append(event.SerializeToString())
        self._safety_emitted += 1
        self._wake.set()  # rare and precious: sent now, not at the next interval

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
            self._pump_safety()
            closing = self._stop.is_set() and not self._buffer
            if closing and (not self._safety_undelivered() or time.monotonic() >= self._close_deadline):
                return
            self._wake.wait(PUBLISH_INTERVAL_S)
            self._wake.clear()
            self._producer.poll(0)
            self._safety_producer.poll(0)
            if time.monotonic() - self._last_sync >= OUTBOX_SYNC_INTERVAL_S:
                self._sync_outbox()

    def _sync_outbox(self) -> None:
        self._last_sync = time.monotonic()
        try:
            self._outbox.sync()
        except OSError as e:  # the events stay in the page cache and are still delivered; only power loss is at risk
            log.error("kasmina client could not sync its outbox: %s", e)

    # -- safety events: from the outbox to the broker (publisher thread only) ----------------------------

    def _safety_undelivered(self) -> int:
        return self._outbox.stats().undelivered

    def _pump_safety(self) -> None:
        if self._resend_at is not None:
            if self._in_flight or time.monotonic() < self._resend_at:
                return  # wait for every outstanding report, then start again from the oldest unacknowledged
            self._resend_at = None
            self._sent_upto = self._outbox.acked
        room = SAFETY_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        for seq, payload in self._outbox.read(self._sent_upto, room):
            try:
                event = pb.SafetyEvent.FromString(payload)
            except ProtoDecodeError:  # CRC-checked, so written damaged: nothing to deliver, and it must not block
                log.error("kasmina outbox: event %d does not parse; skipped", seq)
                self._in_flight[seq] = True
                self._sent_upto = seq
                continue
            # The event id is the message id too: a consumer drops a redelivered event by either.
            envelope = dataclasses.replace(self._safety_producer.envelope_for(event), message_id=event.event_id)
            self._in_flight[seq] = False  # before the send: its report may come at once
            sent = self._safety_producer.try_send(
                SAFETY.name,
                event,
                f"kasmina/{self.instance_id}",
                envelope=envelope,
                on_delivery=functools.partial(self._on_safety_delivery, seq),
            )
            if not sent:
                del self._in_flight[seq]
                return  # the producer's queue is full: the rest waits in the outbox
            self._sent_upto = seq
        self._ack_delivered()

    def _on_safety_delivery(self, seq: int, err: KafkaError | None, msg: KafkaMessage) -> None:
        if seq not in self._in_flight:
            return  # a report from before a resend started
        if err is None:
            self._in_flight[seq] = True
            self._safety_delivered += 1
            self._ack_delivered()
            return
        self._safety_errors += 1
        log.warning("safety event %d not delivered (%s); sent again from the oldest unacknowledged", seq, err)
        del self._in_flight[seq]
        if self._resend_at is None:
            self._resend_at = time.monotonic() + SAFETY_RESEND_BACKOFF_S

    def _ack_delivered(self) -> None:
        """Acknowledge the outbox up to the first event still in flight (acks arrive in order per partition, but the
        outbox must never skip one that is not)."""
        done = 0
        for seq, acked in self._in_flight.items():
            if not acked:
                break
            done = seq
        if done:
            self._in_flight = {s: a for s, a in self._in_flight.items() if s > done}
            self._outbox.ack(done)

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
        stats = self.stats()
        points.append(metric_point(DROPPED_METRIC, float(stats.dropped), "", pb.METRIC_COUNTER))
        points.append(metric_point(UNDELIVERED_METRIC, float(stats.safety_undelivered), "", pb.METRIC_GAUGE))
        return TELEMETRY.name, telemetry_packet(self.instance_id, metrics=points), self.instance_id

    # -- inbound: pause commands ----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Wait until the pause state the log holds for this instance is applied; from then on every command
        produced is applied too. False when that did not happen within timeout_s (the cluster away)."""
        return self._listener is None or self._ready.wait(timeout_s)

    def _listen_loop(self) -> None:
        # librdkafka's consumer is created and used on this thread only (a call from another thread can hang)
        while not self._stop.is_set():
            if self._consumer is None:
                self._consumer = self._open_pause_consumer()
                continue
            if not self._ready.is_set() and self._caught_up(self._consumer):
                self._ready.set()
            try:
                self._consumer.poll_once(self._apply_command, timeout_s=0.05, max_records=1)
            except Exception:  # the broker away, a dead-letter send failing: keep listening
                log.exception("pause consumer poll failed")
                time.sleep(0.1)
            for slot in self._slots.values():
                slot.tick()

    def _open_pause_consumer(self) -> LeylineConsumer | None:
        """The pause topic from max_pause_duration_ms ago (what may still be in force), outside any group; None
        (after a wait) while the cluster cannot say where that is."""
        since_ms = time.time_ns() // 1_000_000 - self.safety.max_pause_duration_ms
        try:
            consumer = LeylineConsumer.from_time(
                self._bootstrap,
                f"kasmina-{self.instance_id}-{uuid.uuid4().hex[:8]}",
                CONTROL_PAUSE.name,
                since_ms,
                on_dead_letter=self._on_rejected,
                **self._consumer_overrides,
            )
        except (KafkaException, StreamsError) as e:
            log.warning("pause listener of %s cannot start yet: %s", self.instance_id, e)
            self._stop.wait(_LISTENER_RETRY_S)
            return None
        self._history_end = consumer.history_end
        return consumer

    def _caught_up(self, consumer: LeylineConsumer) -> bool:
        """The history read at start is applied: every partition's position has reached where the log ended."""
        position = consumer.position()
        return all(position.get(tp, -1) >= end for tp, end in self._history_end.items())

    def _on_rejected(self, letter: pb.DeadLetter, error: BaseException) -> None:
        """A command was dead-lettered (undecodable, or invalid here): count it and report it as a safety event."""
        self.commands_rejected += 1
        text = letter.error  # redacted: a command's error text may quote its token
        rejected = pb.CommandRejected(
            error_type=type(error).__name__,
            error=text,
            origin_topic=letter.origin_topic,
            origin_partition=letter.origin_partition,
            origin_offset=letter.origin_offset,
        )
        self.emit(
            safety_event(pb.TELEMETRY_ERROR, f"pause command rejected: {text}", rejected, source_id=self.instance_id)
        )

    def _apply_command(self, record: Record) -> None:
        cmd = record.message
        if not isinstance(cmd, pb.PauseCommand):
            raise InvalidCommandError(f"expected a PauseCommand, got {cmd.DESCRIPTOR.full_name}")
        if cmd.target_instance != self.instance_id:
            return
        start = monotonic_ms()
        # A command from before the start counts its time from when it was produced (the log's timestamp).
        history = record.offset < self._history_end.get((record.topic, record.partition), -1)
        elapsed_ms = max(0, time.time_ns() // 1_000_000 - record.timestamp_ms) if history else 0
        # an InvalidCommandError or PauseRefusedError dead-letters the record, then _on_rejected reports it
        self._apply_pause(cmd, elapsed_ms)
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

    def _apply_pause(self, cmd: pb.PauseCommand, elapsed_ms: int = 0) -> None:
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
        max_duration: float | None = cmd.max_duration_ms or None
        wanted = min(max_duration or configured, configured)  # the pause time it asks for (capped by the config)
        requested = int(cmd.quota_ms or wanted)  # the quota asked for: the command's, else that pause time
        if elapsed_ms:  # from the log read at start: only what is left of it
            wanted -= elapsed_ms
            if wanted <= 0:
                log.debug("pause command %r from the log has run its time", cmd.command_id)
                return
            max_duration, requested = wanted, int(min(requested, wanted))
        decision = self._quota.request_pause_quota(requested)
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
        outbox = self._outbox.stats()
        return ClientStats(
            queued=self._queued,
            buffer_dropped=self._buffer_dropped,
            producer_dropped=p.dropped,
            delivery_failed=p.failed,
            delivered=p.delivered,
            commands_applied=self.commands_applied,
            commands_rejected=self.commands_rejected,
            safety_emitted=self._safety_emitted,
            safety_delivered=self._safety_delivered,
            safety_undelivered=outbox.undelivered,
            safety_recovered=outbox.recovered,
            safety_delivery_errors=self._safety_errors,
            outbox_write_errors=outbox.write_errors,
        )

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait until everything queued so far is handed over and delivered, safety events acknowledged; returns
        what is still queued (telemetry in the buffer or the producer, safety events in the outbox)."""
        deadline = time.monotonic() + timeout_s
        target = self._queued
        self._wake.set()
        while (self._settled < target or self._safety_undelivered()) and time.monotonic() < deadline:
            time.sleep(0.005)
        unsettled = max(0, target - self._settled)
        return unsettled + self._producer.flush(max(0.0, deadline - time.monotonic())) + self._safety_undelivered()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop listening, deliver what is queued (up to timeout_s), release the Kafka clients and the outbox;
        safety events still undelivered stay in the outbox for the next client of this instance."""
        if self._stop.is_set():
            return
        for slot in self._slots.values():
            slot.pause_exit("shutdown")
        self._close_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.join(timeout_s)
            if self._consumer is not None:
                self._consumer.close()
        self._publisher.join(max(0.0, self._close_deadline - time.monotonic()) + 1.0)
        self._producer.close(max(0.0, self._close_deadline - time.monotonic()))
        self._safety_producer.close(0)  # what it still holds is in the outbox
        left = self._safety_undelivered()
        self._outbox.close()
        if left:
            log.warning(
                "%d safety events of %s kept in %s for the next start", left, self.instance_id, self._outbox.directory
            )

    def __enter__(self) -> KasminaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
