"""Secrets (fields the contract marks `[(leyline.secret) = true]`) never leave for the dead letters or errors."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from confluent_kafka import Message
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from esper.proto import leyline_pb2 as pb
from esper.streams.deadletter import dead_letter_for
from esper.streams.envelope import JSON, PROTOBUF, encode, new_envelope
from esper.streams.redact import REDACTED, SECRET_FIELD_NAMES, redact_message, redact_text
from esper.streams.topics import CONTROL_PAUSE

TOKEN = "tok-5f2a9c"


def record(value: bytes, headers: list[tuple[str, Any]], topic: str = CONTROL_PAUSE.name) -> Message:
    fields = {"value": value, "key": b"k1", "headers": headers, "topic": topic, "partition": 0, "offset": 7}
    fake = SimpleNamespace(**{name: (lambda v=v: v) for name, v in fields.items()}, timestamp=lambda: (1, 5))
    return cast(Message, fake)


def test_the_contract_names_its_secrets() -> None:
    assert {"authorization_token", "authorizationToken"} <= SECRET_FIELD_NAMES


def test_a_message_copy_loses_its_secret_and_the_original_keeps_it() -> None:
    cmd = pb.PauseCommand(target_instance="k1", authorization_token=TOKEN)
    clean = redact_message(cmd)
    assert clean is not None and clean.authorization_token == REDACTED and clean.target_instance == "k1"
    assert cmd.authorization_token == TOKEN
    assert redact_message(pb.PauseCommand(target_instance="k1")) is None  # nothing to remove: no copy


def test_nested_secrets_are_found() -> None:
    req = pb.EmergencyCompile(request_id="r", authorization_token=TOKEN)
    clean = redact_message(req)
    assert clean is not None and TOKEN not in str(clean)


def test_dead_letters_of_decodable_commands_carry_no_token() -> None:
    cmd = pb.PauseCommand(target_instance="k1", authorization_token=TOKEN, reason="ops")
    for content_type in (JSON, PROTOBUF):
        value, headers = encode(cmd, new_envelope(cmd, content_type=content_type))
        letter = dead_letter_for(record(value, headers), ValueError(f"refused: token {TOKEN!r}"))
        assert TOKEN.encode() not in letter.SerializeToString()
        assert letter.origin_value_redacted
        assert b"ops" in letter.origin_value  # the rest of the record is still there to read


def test_undecodable_json_and_error_texts_are_masked() -> None:
    broken = json.dumps({"action": "PAUSE_ENTER", "authorization_token": TOKEN})[:-1] + ", oops"
    letter = dead_letter_for(record(broken.encode(), [("content-type", b"application/json")]), ValueError("bad"))
    assert TOKEN.encode() not in letter.origin_value and letter.origin_value_redacted
    assert TOKEN not in redact_text(f'Failed to parse authorization_token field: "{TOKEN}"')
    assert TOKEN not in redact_text(f"authorizationToken={TOKEN}, next")


def test_credential_headers_are_masked() -> None:
    value = json_format.MessageToJson(pb.PauseCommand(target_instance="k1")).encode()
    letter = dead_letter_for(record(value, [("Authorization", f"Bearer {TOKEN}".encode())]), ValueError("x"))
    assert TOKEN.encode() not in letter.SerializeToString()
    assert not letter.origin_value_redacted  # the value itself held no secret


@given(token=st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\'), min_size=6, max_size=40))
def test_any_token_in_a_json_command_is_removed(token: str) -> None:
    cmd = pb.PauseCommand(target_instance="k1", authorization_token=token)
    value, headers = encode(cmd, new_envelope(cmd, content_type=JSON))
    letter = dead_letter_for(record(value, headers), ValueError("refused"))
    parsed = json.loads(letter.origin_value)
    assert parsed["authorization_token"] == REDACTED
