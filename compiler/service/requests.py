"""The three ways to ask Tezzeret for a compile, as one shape: `Work`. Pure: decoding is the envelope codec's, this
module only reads the decoded message (and says who may send an emergency compile).

  leyline.blueprints             BlueprintIR: a submission, compiled at the configured default tier; its request
                                 id is the record's leyline-message-id (or its coordinates when it has none)
  leyline.compilation.requests   CompilationRequest: tier (or none: dynamic selection), priority, requestor,
                                 deadline; the blueprint inline, or by id from what the service read of
                                 leyline.blueprints
  leyline.compilation.emergency  EmergencyCompile: its own lane, authorised requestors only

`deadline_ms` on the wire is a budget in milliseconds from `requested_at` (or the record's timestamp when that is
unset); 0 means none.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from esper.compiler.service_config import AuthorizationSettings
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy, RequestKind
from esper.streams.consumer import Record
from esper.streams.topics import BLUEPRINTS, COMPILATION_EMERGENCY, COMPILATION_REQUESTS

__all__ = ["Work", "WorkError", "authorized", "work_from_record"]

MAX_ID_CHARS = 256  # request ids and requestors are echoed into results and audit records


class WorkError(ValueError):
    """A record that decoded but cannot be taken as asked (the answer is a typed failure, not a dead letter)."""


@dataclass(frozen=True)
class Work:
    kind: RequestKind
    request_id: str
    requestor: str
    blueprint_id: str
    blueprint: pb.BlueprintIR | None  # None: named by id, resolved from leyline.blueprints
    strategy: CompilationStrategy | None  # None: dynamic selection
    priority: int
    deadline_at_ms: int | None  # wall clock (epoch ms) by which it must be answered
    device: str
    authorization_token: str = ""


def _strategy(value: int) -> CompilationStrategy | None:
    if value == 0:
        return None
    try:
        return CompilationStrategy(value)
    except ValueError:  # proto3 enums are open: any int32 decodes
        raise WorkError(f"the strategy {value} is not a compilation tier") from None


def _deadline(requested_at: Timestamp, deadline_ms: int, record_ms: int) -> int | None:
    if deadline_ms <= 0:
        return None
    if not (requested_at.seconds or requested_at.nanos):
        return record_ms + deadline_ms
    try:
        return requested_at.ToMilliseconds() + deadline_ms
    except ValueError as e:  # seconds or nanos outside the Timestamp's range
        raise WorkError(f"requested_at: {e}") from None


def _id(value: str, what: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise WorkError(f"{what} is {len(value)} characters, over {MAX_ID_CHARS}")
    return value


def work_from_record(record: Record) -> Work:
    """The work a decoded record asks for (WorkError when its fields contradict each other or are out of
    bounds). A record of an unknown topic is a programming error: the service subscribes to three."""
    msg, coordinates = record.message, f"{record.topic}:{record.partition}:{record.offset}"
    if record.topic == BLUEPRINTS.name:
        assert isinstance(msg, pb.BlueprintIR)
        return Work(
            kind=RequestKind.BLUEPRINT,
            request_id=_id(record.envelope.message_id or coordinates, "the message id"),
            requestor=_id(msg.author or record.envelope.producer, "the author"),
            # a blueprint without an id is known by its record's key (`esper blueprint submit` keys by content)
            blueprint_id=_id(msg.blueprint_id or _record_key(record), "the blueprint id"),
            blueprint=msg,
            strategy=None,
            priority=0,
            deadline_at_ms=None,
            device="cpu",
        )
    if record.topic == COMPILATION_REQUESTS.name:
        assert isinstance(msg, pb.CompilationRequest)
        return Work(
            kind=RequestKind.COMPILATION,
            request_id=_id(msg.request_id or record.envelope.message_id or coordinates, "the request id"),
            requestor=_id(msg.requestor, "the requestor"),
            blueprint_id=_id(_blueprint_id(msg.blueprint_id, _inline(msg), _record_key(record)), "the blueprint id"),
            blueprint=_inline(msg),
            strategy=_strategy(msg.strategy),
            priority=msg.priority,
            deadline_at_ms=_deadline(msg.requested_at, msg.deadline_ms, record.timestamp_ms),
            device=msg.device or "cpu",
        )
    if record.topic == COMPILATION_EMERGENCY.name:
        assert isinstance(msg, pb.EmergencyCompile)
        return Work(
            kind=RequestKind.EMERGENCY,
            request_id=_id(msg.request_id or record.envelope.message_id or coordinates, "the request id"),
            requestor=_id(msg.requestor, "the requestor"),
            blueprint_id=_id(_blueprint_id(msg.blueprint_id, _inline(msg), _record_key(record)), "the blueprint id"),
            blueprint=_inline(msg),
            strategy=CompilationStrategy.EMERGENCY,
            priority=1 << 30,
            deadline_at_ms=_deadline(msg.requested_at, msg.deadline_ms, record.timestamp_ms),
            device=msg.device or "cpu",
            authorization_token=msg.authorization_token,
        )
    raise AssertionError(f"no work is read from {record.topic}")


def _inline(msg: pb.CompilationRequest | pb.EmergencyCompile) -> pb.BlueprintIR | None:
    return msg.blueprint if msg.HasField("blueprint") else None


def _record_key(record: Record) -> str:
    return (record.key or b"").decode("utf-8", "replace")


def _blueprint_id(named: str, inline: pb.BlueprintIR | None, key: str) -> str:
    """The request's blueprint id: named, inline, or both when they agree; an inline blueprint without an id is
    known by the record's key, as a submission is."""
    if inline is None:
        if not named:
            raise WorkError("the request names no blueprint and carries none")
        return named
    if named and inline.blueprint_id and named != inline.blueprint_id:
        raise WorkError(f"the request names blueprint {named!r} but carries {inline.blueprint_id!r}")
    found = named or inline.blueprint_id or key
    if not found:
        raise WorkError(
            "the request's inline blueprint has no id, and neither the request nor its record key names one"
        )
    return found


def authorized(work: Work, settings: AuthorizationSettings) -> tuple[bool, str]:
    """Whether `work` may be done, and why not. Only emergency compiles are restricted (the spec's role-based
    access): the requestor must hold the emergency role, and prove it with its token when one is configured."""
    if work.kind != RequestKind.EMERGENCY:
        return True, ""
    roles: Mapping[str, tuple[str, ...]] = settings.roles
    if settings.emergency_role not in roles.get(work.requestor, ()):
        return False, f"requestor {work.requestor!r} does not hold the {settings.emergency_role!r} role"
    expected = settings.token_sha256.get(work.requestor)
    if expected is not None:
        digest = hashlib.sha256(work.authorization_token.encode()).hexdigest()
        if not hmac.compare_digest(digest, expected):
            return False, f"requestor {work.requestor!r} did not present its token"
    return True, ""
