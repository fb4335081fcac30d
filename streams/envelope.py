"""The envelope codec: a Leyline message plus its envelope, as Kafka value bytes and headers.

The envelope travels in headers so that payload bytes (hashed and signed for some contracts) never change:
  content-type            application/x-protobuf, or application/json (the proto3 JSON mapping, so an operator can
                          type a command into kafka-console-producer)
  leyline-type            full message name, e.g. leyline.PauseCommand (may be omitted on single-type topics)
  leyline-version         schema version MAJOR.MINOR
  leyline-message-id, leyline-correlation-id, leyline-causation-id, leyline-producer, leyline-event-time (ms)
Decoding is strict: a payload with fields unknown to our schema version is malformed unless the record declares a
newer minor version (then the extra fields are a compatible addition).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf import message as pb_message

from esper.streams.exceptions import (
    MalformedPayloadError,
    UnknownMessageTypeError,
    UnsupportedContentTypeError,
    UnsupportedVersionError,
)
from esper.streams.topics import ALL_TOPICS, topic_spec

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_ALIASES = frozenset({PROTOBUF, "application/protobuf", "application/vnd.google.protobuf"})

SCHEMA_MAJOR, SCHEMA_MINOR = 1, 0
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"

H_CONTENT_TYPE = "content-type"
H_TYPE = "leyline-type"
H_VERSION = "leyline-version"
H_MESSAGE_ID = "leyline-message-id"
H_CORRELATION_ID = "leyline-correlation-id"
H_CAUSATION_ID = "leyline-causation-id"
H_PRODUCER = "leyline-producer"
H_EVENT_TIME = "leyline-event-time"

# What confluent-kafka hands us (a list of pairs) or accepts (pairs or a mapping).
HeaderValue = str | bytes | None
Headers = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue]

# Every contract a topic may carry, by full name.
MESSAGE_TYPES: dict[str, type[pb_message.Message]] = {
    t.DESCRIPTOR.full_name: t for spec in ALL_TOPICS for t in spec.message_types
}


# What the parsers raise on bad bytes or text (deep nesting included); each becomes a MalformedPayloadError.
_PARSE_ERRORS = (json_format.ParseError, pb_message.DecodeError, UnicodeDecodeError, RecursionError, ValueError)


@dataclass(frozen=True)
class Envelope:
    """Who sent a message, why, and when: what DESIGN section 3 asks every message to carry."""

    message_type: str
    message_id: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    producer: str = ""
    schema_version: str = SCHEMA_VERSION
    event_time_ms: int = 0
    content_type: str = PROTOBUF

    def headers(self) -> list[tuple[str, HeaderValue]]:
        pairs = [
            (H_CONTENT_TYPE, self.content_type),
            (H_TYPE, self.message_type),
            (H_VERSION, self.schema_version),
            (H_MESSAGE_ID, self.message_id),
            (H_CORRELATION_ID, self.correlation_id),
            (H_CAUSATION_ID, self.causation_id),
            (H_PRODUCER, self.producer),
            (H_EVENT_TIME, str(self.event_time_ms)),
        ]
        return [(k, v.encode()) for k, v in pairs if v]


@dataclass(frozen=True)
class Decoded:
    message: pb_message.Message
    envelope: Envelope


def new_envelope(
    message: pb_message.Message,
    *,
    correlation_id: str = "",
    causation_id: str = "",
    producer: str = "",
    content_type: str = PROTOBUF,
) -> Envelope:
    return Envelope(
        message_type=message.DESCRIPTOR.full_name,
        message_id=uuid.uuid4().hex,
        correlation_id=correlation_id,
        causation_id=causation_id,
        producer=producer,
        event_time_ms=time.time_ns() // 1_000_000,
        content_type=content_type,
    )


def encode_payload(message: pb_message.Message, content_type: str = PROTOBUF) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None).encode()
    if content_type in _PROTOBUF_ALIASES:
        return message.SerializeToString(deterministic=True)
    raise UnsupportedContentTypeError(f"cannot encode as {content_type!r}")


def encode(message: pb_message.Message, envelope: Envelope) -> tuple[bytes, list[tuple[str, HeaderValue]]]:
    """Value bytes and headers for one record."""
    if envelope.message_type != message.DESCRIPTOR.full_name:
        raise UnknownMessageTypeError(
            f"envelope says {envelope.message_type!r} but the message is {message.DESCRIPTOR.full_name!r}"
        )
    return encode_payload(message, envelope.content_type), envelope.headers()


def decode(value: bytes | None, headers: Headers | None, topic: str | None = None) -> Decoded:
    """Decode one record; raise a DecodeError subclass that says exactly what is wrong."""
    h = _header_dict(headers)
    version = h.get(H_VERSION) or SCHEMA_VERSION
    newer_minor = _check_version(version)
    type_name = _message_type(h.get(H_TYPE), topic)
    cls = MESSAGE_TYPES[type_name]
    if value is None:
        raise MalformedPayloadError(f"record has no value (a tombstone), expected {type_name}")
    content_type = _content_type(h.get(H_CONTENT_TYPE), value)
    message = cls()
    try:
        if content_type == JSON:
            _parse_json(value, message, ignore_unknown_fields=newer_minor)
        else:
            message.ParseFromString(value)
            if not newer_minor and _has_unknown_fields(message):
                raise MalformedPayloadError(f"payload holds fields unknown to {type_name} at schema {SCHEMA_VERSION}")
    except _PARSE_ERRORS as e:
        raise MalformedPayloadError(f"payload is not a valid {type_name} ({content_type}): {e}") from e
    envelope = Envelope(
        message_type=type_name,
        message_id=h.get(H_MESSAGE_ID, ""),
        correlation_id=h.get(H_CORRELATION_ID, ""),
        causation_id=h.get(H_CAUSATION_ID, ""),
        producer=h.get(H_PRODUCER, ""),
        schema_version=version,
        event_time_ms=_small_int(h.get(H_EVENT_TIME, "")) or 0,
        content_type=content_type,
    )
    return Decoded(message, envelope)


def message_from_json(text: str | bytes, cls: type[pb_message.Message]) -> pb_message.Message:
    """A message from its proto3 JSON mapping, at our schema version; MalformedPayloadError says what is wrong."""
    message = cls()
    try:
        _parse_json(text, message, ignore_unknown_fields=False)
    except _PARSE_ERRORS as e:
        raise MalformedPayloadError(f"not a valid {cls.DESCRIPTOR.full_name}: {e}") from e
    return message


def _parse_json(text: str | bytes, message: pb_message.Message, *, ignore_unknown_fields: bool) -> None:
    document = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)  # UTF-8 only, never guessed
    if not isinstance(document, dict):
        raise MalformedPayloadError(f"JSON payload is a {type(document).__name__}, not an object")
    json_format.ParseDict(document, message, ignore_unknown_fields=ignore_unknown_fields)


def _header_dict(headers: Headers | None) -> dict[str, str]:
    return {key.lower(): header_text(raw) for key, raw in header_pairs(headers)}


def header_pairs(headers: Headers | None) -> list[tuple[str, HeaderValue]]:
    """Headers as (key, value) pairs, whichever of the shapes confluent-kafka uses they came in."""
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers or ())


def header_text(raw: HeaderValue) -> str:
    """A header value as text; undecodable bytes are replaced, never raised on."""
    if isinstance(raw, str):
        return raw.strip()
    return (raw or b"").decode("utf-8", errors="replace").strip()


def _small_int(text: str) -> int | None:
    """A header number: ASCII digits only (str.isdigit also takes '²' and other digits int() refuses), 18 at most."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


# The checks below are pure functions of a header value (and the topic), and nearly every record repeats the same
# few values: each is remembered, in a bounded cache so that hostile values only churn it (errors are not cached).
@functools.lru_cache(maxsize=256)
def _check_version(version: str) -> bool:
    """True when the record is of a newer minor version than ours (unknown fields then allowed)."""
    major_s, dot, minor_s = version.partition(".")
    major, minor = _small_int(major_s), _small_int(minor_s) if dot else 0
    if major is None or minor is None:
        raise UnsupportedVersionError(f"leyline-version {version[:40]!r} is not MAJOR[.MINOR]")
    if major != SCHEMA_MAJOR:
        raise UnsupportedVersionError(f"leyline-version {version!r}: this code reads major version {SCHEMA_MAJOR}")
    return minor > SCHEMA_MINOR


@functools.lru_cache(maxsize=256)
def _message_type(declared: str | None, topic: str | None) -> str:
    spec = topic_spec(topic) if topic else None
    if not declared:
        if spec is not None and len(spec.message_types) == 1:
            return spec.type_names[0]
        raise UnknownMessageTypeError(f"no {H_TYPE} header, and topic {topic!r} has no single message type")
    if declared not in MESSAGE_TYPES:
        raise UnknownMessageTypeError(f"unknown {H_TYPE} {declared!r}")
    if spec is not None and declared not in spec.type_names:
        raise UnknownMessageTypeError(f"topic {topic} carries {', '.join(spec.type_names)}, not {declared}")
    return declared


def _content_type(declared: str | None, value: bytes) -> str:
    if not declared:
        # Operators typing into a console producer often forget the header: JSON objects are recognisable.
        return JSON if _is_json_object(value) else PROTOBUF
    return _declared_content_type(declared)


@functools.lru_cache(maxsize=256)
def _declared_content_type(declared: str) -> str:
    media = declared.split(";", 1)[0].strip().lower()
    if media == JSON:
        return JSON
    if media in _PROTOBUF_ALIASES:
        return PROTOBUF
    raise UnsupportedContentTypeError(f"content-type {declared!r} is neither {PROTOBUF} nor {JSON}")


def _is_json_object(value: bytes) -> bool:
    """Whether a header-less value is JSON text. A proto3 payload never starts with '{' (the start-group tag of
    field 15), but whitespace bytes are valid field tags, so a value that starts with them must parse as an object."""
    if value[:1] == b"{":
        return True
    stripped = value.strip()
    if stripped[:1] != b"{" or stripped[-1:] != b"}":
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except (ValueError, RecursionError):
        return False


def _has_unknown_fields(message: pb_message.Message) -> bool:
    """Garbage bytes often parse as unknown fields; at our own schema version that is malformed. Judged by what
    discarding them (recursively) takes off the message's size, not by the wire size, so legal encodings of known
    fields (explicit zeros, repeated fields, unpacked scalars, long varints) are accepted."""
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return message.ByteSize() != size
