"""Secrets out of everything that leaves for the dead letters, safety events, logs and `esper tail`.

The contract says which fields hold credentials (`[(leyline.secret) = true]` in leyline.proto). A record that
decodes has those fields replaced and is encoded again in its own content type; one that does not decode (broken
JSON, say) has any `"<secret field>": value` pair in its text masked, and so has error text, which parsers like to
quote. Headers whose names say they carry a credential are masked too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from esper.proto import leyline_pb2 as pb
from esper.streams.envelope import HeaderValue, decode, encode_payload
from esper.streams.exceptions import DecodeError

__all__ = [
    "REDACTED",
    "SECRET_FIELD_NAMES",
    "is_secret",
    "redact_header",
    "redact_message",
    "redact_text",
    "redact_value",
]

REDACTED = "[redacted]"
_SECRET_HEADER = re.compile(r"authori[sz]ation|token|secret|password|credential", re.IGNORECASE)


def is_secret(field: FieldDescriptor) -> bool:
    """Whether the contract marks this field `[(leyline.secret) = true]`."""
    return bool(field.GetOptions().Extensions[pb.secret])  # type: ignore[index]  # the stub types it loosely


def _secret_fields(descriptor: Descriptor) -> Iterable[FieldDescriptor]:
    return [f for f in descriptor.fields if is_secret(f)]


def _all_messages(descriptors: Iterable[Descriptor]) -> Iterable[Descriptor]:
    for d in descriptors:
        yield d
        yield from _all_messages(d.nested_types)


SECRET_FIELD_NAMES: frozenset[str] = frozenset(
    name
    for d in _all_messages(pb.DESCRIPTOR.message_types_by_name.values())
    for f in _secret_fields(d)
    for name in (f.name, f.json_name)
)
# `"authorization_token": "abc"`, `authorizationToken: abc`, `authorization_token=abc` in any text.
_NAMES = "|".join(sorted(map(re.escape, SECRET_FIELD_NAMES)))
_SECRET_PAIR = re.compile(
    r"""(["']?\b(?:"""
    + _NAMES
    + r""")\b["']?(?:\s+field)?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;}\]"']+)"""
)


def redact_message(message: Message) -> Message | None:
    """A copy of `message` with every non-empty secret field (at any depth) replaced; None when it holds none."""
    return _redacted(message)[0]


def _redacted(message: Message) -> tuple[Message | None, list[str]]:
    """A redacted copy (None when there was nothing to redact) and the secret values it held."""
    copy = type(message)()
    copy.CopyFrom(message)
    found: list[str] = []
    return (copy if _redact_in_place(copy, found) else None), found


def _redact_in_place(message: Message, found: list[str]) -> bool:
    """Replace the secrets of `message`, appending their values to `found`; whether there were any."""
    changed = False
    for field, value in message.ListFields():  # set fields only: an empty secret is no secret
        if is_secret(field):
            found.append(value if isinstance(value, str) else value.decode("utf-8", errors="replace"))
            setattr(message, field.name, REDACTED if field.type == FieldDescriptor.TYPE_STRING else b"")
            changed = True
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            children = value if field.is_repeated else [value]
            for child in children:
                changed = _redact_in_place(child, found) or changed
    return changed


def redact_text(text: str, known: Iterable[str] = ()) -> str:
    """Mask the value of every `secret field: value` pair in free text (error messages, undecodable JSON), and
    every occurrence of a `known` secret value."""
    for secret in known:
        if secret:
            text = text.replace(secret, REDACTED)
    return _SECRET_PAIR.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)


def redact_value(
    value: bytes, headers: Iterable[tuple[str, HeaderValue]] | None, topic: str | None
) -> tuple[bytes | None, list[str]]:
    """The record's value without its secrets (None when it had none to remove), and the secret values found (to
    mask them wherever else they may turn up, such as a handler's error text)."""
    try:
        decoded = decode(value, list(headers or []), topic)
    except DecodeError:
        text = value.decode("utf-8", errors="surrogateescape")
        masked = redact_text(text)
        return (None if masked == text else masked.encode("utf-8", errors="surrogateescape")), []
    clean, found = _redacted(decoded.message)
    return (None, []) if clean is None else (encode_payload(clean, decoded.envelope.content_type), found)


def redact_header(name: str, value: bytes) -> bytes:
    """A header's value, masked when its name says it carries a credential."""
    return REDACTED.encode() if _SECRET_HEADER.search(name) else value
