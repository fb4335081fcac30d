"""The envelope codec: every contract round-trips, hostile bytes only ever raise typed DecodeErrors."""

from __future__ import annotations

import inspect
import json
import math

import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import Descriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.proto import leyline_pb2 as pb
from esper.streams import envelope as env
from esper.streams.exceptions import (
    DecodeError,
    MalformedPayloadError,
    UnknownMessageTypeError,
    UnsupportedContentTypeError,
    UnsupportedVersionError,
)
from esper.streams.topics import ALL_TOPICS, COMPILATION_REQUESTS, COMPILATION_RESULTS, CONTROL_PAUSE, TELEMETRY
from tests.contract_samples import CONTRACTS, SAFETY_KINDS, safety_event, sample, samples, topic_of


@pytest.mark.parametrize("cls", CONTRACTS, ids=lambda c: c.DESCRIPTOR.name)
@pytest.mark.parametrize("content_type", [env.PROTOBUF, env.JSON])
def test_every_contract_round_trips_with_its_envelope(cls: type, content_type: str) -> None:
    message = sample(cls)
    envelope = env.new_envelope(
        message, correlation_id="bp-1", causation_id="m0", producer="test", content_type=content_type
    )
    value, headers = env.encode(message, envelope)
    decoded = env.decode(value, headers, topic_of(cls))
    assert decoded.message == message
    assert decoded.envelope == envelope


@pytest.mark.parametrize("kind", SAFETY_KINDS)
@pytest.mark.parametrize("content_type", [env.PROTOBUF, env.JSON])
def test_every_kind_of_safety_event_round_trips(kind: str, content_type: str) -> None:
    message = safety_event(kind)
    value, headers = env.encode(message, env.new_envelope(message, content_type=content_type))
    decoded = env.decode(value, headers, "leyline.safety").message
    assert decoded == message and decoded.WhichOneof("detail") == kind


def test_every_topic_contract_is_covered_by_the_samples() -> None:
    """Three sources, none derived from another: the .proto, the topic registry and the hand-written samples."""
    declared = {m.full_name for m in pb.DESCRIPTOR.message_types_by_name.values()}
    contained = {
        f.message_type.full_name
        for m in pb.DESCRIPTOR.message_types_by_name.values()
        for f in m.fields
        if f.message_type
    }
    carried = {name for spec in ALL_TOPICS for name in spec.type_names}
    # a message no other message contains exists only to be sent as a record: some topic must carry it
    assert declared - contained <= carried <= declared
    assert {cls.DESCRIPTOR.full_name for cls in samples()} == carried


def test_hashed_and_signed_contracts_have_no_map_fields() -> None:
    for cls in (pb.BlueprintIR, pb.CompilationRequest, pb.CompiledKernelArtifact, pb.EmergencyCompile):
        stack = [cls.DESCRIPTOR]
        while stack:
            d = stack.pop()
            for f in d.fields:
                assert not (f.message_type and f.message_type.GetOptions().map_entry), f"{d.full_name}.{f.name}"
                if f.message_type and f.message_type.full_name.startswith("leyline."):
                    stack.append(f.message_type)


def test_a_console_typed_json_command_decodes_without_version_or_type_headers() -> None:
    text = b'{"action": "PAUSE_ENTER", "target_instance": "k1", "quota_ms": 250}'
    decoded = env.decode(text, [("content-type", b"application/json")], CONTROL_PAUSE.name)
    assert decoded.message == pb.PauseCommand(action=pb.PAUSE_ENTER, target_instance="k1", quota_ms=250)
    # and with no headers at all: a JSON object is recognised, the topic names the type
    assert env.decode(text, None, CONTROL_PAUSE.name).message == decoded.message


def test_json_with_charset_parameter_is_json() -> None:
    decoded = env.decode(
        b'{"target_instance": "k"}', [("content-type", "application/json; charset=utf-8")], CONTROL_PAUSE.name
    )
    assert decoded.message.target_instance == "k"


def test_multi_type_topic_needs_the_type_header() -> None:
    value = pb.CompilationResult(request_id="r").SerializeToString()
    with pytest.raises(UnknownMessageTypeError, match="no single message type"):
        env.decode(value, [], COMPILATION_RESULTS.name)


def test_a_type_the_topic_does_not_carry_is_rejected() -> None:
    value, headers = env.encode(sample(pb.PauseCommand), env.new_envelope(sample(pb.PauseCommand)))
    with pytest.raises(UnknownMessageTypeError, match="carries"):
        env.decode(value, headers, TELEMETRY.name)


def test_unknown_type_header_is_rejected() -> None:
    with pytest.raises(UnknownMessageTypeError):
        env.decode(b"", [("leyline-type", b"leyline.Nope")], None)


@pytest.mark.parametrize("version", ["2.0", "0.9", "x", "1.x", ""])
def test_unsupported_versions_are_rejected(version: str) -> None:
    headers = [("leyline-version", version.encode()), ("leyline-type", b"leyline.PauseCommand")]
    if version == "":
        env.decode(b"", headers, CONTROL_PAUSE.name)  # an empty header means the current version
        return
    with pytest.raises(UnsupportedVersionError):
        env.decode(b"", headers, CONTROL_PAUSE.name)


def test_unknown_fields_are_malformed_at_our_version_but_allowed_from_a_newer_minor() -> None:
    value = pb.PauseCommand(target_instance="k").SerializeToString() + b"\xf8\x3e\x01"  # field 999 = 1
    with pytest.raises(MalformedPayloadError, match="unknown"):
        env.decode(value, [("leyline-type", b"leyline.PauseCommand")], CONTROL_PAUSE.name)
    newer = [("leyline-type", b"leyline.PauseCommand"), ("leyline-version", b"1.7")]
    assert env.decode(value, newer, CONTROL_PAUSE.name).message.target_instance == "k"
    as_json = json.dumps({"target_instance": "k", "added_in_1_7": True}).encode()
    with pytest.raises(MalformedPayloadError):
        env.decode(as_json, [("content-type", b"application/json")], CONTROL_PAUSE.name)
    assert (
        env.decode(
            as_json, [("content-type", b"application/json"), ("leyline-version", b"1.7")], CONTROL_PAUSE.name
        ).message.target_instance
        == "k"
    )


def test_legal_encodings_of_known_fields_are_not_mistaken_for_unknown_fields() -> None:
    """Other producers may write explicit zeros, repeat a field, or send repeated scalars unpacked."""
    pause = [("leyline-type", b"leyline.PauseCommand")]
    explicit_zero = b"\x30\x00"  # PauseCommand.quota_ms = 0, written out
    assert env.decode(explicit_zero, pause, CONTROL_PAUSE.name).message == pb.PauseCommand()
    twice = b"\x1a\x01a\x1a\x01k"  # target_instance written twice: the last one wins
    assert env.decode(twice, pause, CONTROL_PAUSE.name).message.target_instance == "k"
    unpacked_shape = b"\x22\x06\x08\x02\x08\x40\x08\x40"  # BlueprintIR.input.shape [2, 64, 64] unpacked
    blueprint = env.decode(unpacked_shape, [("leyline-type", b"leyline.BlueprintIR")], "leyline.blueprints")
    assert list(blueprint.message.input.shape) == [2, 64, 64]


def test_unknown_fields_deep_inside_a_message_are_malformed() -> None:
    inner = pb.TensorSpec(shape=[1]).SerializeToString() + b"\xf8\x3e\x01"
    value = b"\x22" + bytes([len(inner)]) + inner  # BlueprintIR.input with an unknown field 999
    with pytest.raises(MalformedPayloadError, match="unknown"):
        env.decode(value, [("leyline-type", b"leyline.BlueprintIR")], "leyline.blueprints")


def test_headerless_protobuf_that_starts_like_json_is_protobuf() -> None:
    command = pb.PauseCommand(command_id="{" + "x" * 122)  # field 1, length 123: the bytes begin b"\n{"
    value = command.SerializeToString()
    assert value[:2] == b"\n{"
    assert env.decode(value, None, CONTROL_PAUSE.name).message == command


@pytest.mark.parametrize("text", [b"[]", b"3", b'"pause"', b"null"])
def test_json_that_is_not_an_object_is_malformed(text: bytes) -> None:
    with pytest.raises(MalformedPayloadError, match="not an object"):
        env.decode(text, [("content-type", b"application/json")], CONTROL_PAUSE.name)


@pytest.mark.parametrize("number", ["\u00b2", "\u0663", "1" * 5000, "-1", "1e3"])
def test_odd_numbers_in_headers_are_typed_errors_or_ignored(number: str) -> None:
    """str.isdigit() accepts superscripts and Arabic-Indic digits; int() refuses some and limits digit counts."""
    value, headers = env.encode(sample(pb.PauseCommand), env.new_envelope(sample(pb.PauseCommand)))
    with pytest.raises(UnsupportedVersionError):
        env.decode(value, [*headers, ("leyline-version", number.encode())], CONTROL_PAUSE.name)
    odd_time = [(k, v) for k, v in headers if k != env.H_EVENT_TIME] + [(env.H_EVENT_TIME, number.encode())]
    assert env.decode(value, odd_time, CONTROL_PAUSE.name).envelope.event_time_ms == 0


def test_tombstones_and_odd_content_types_are_typed_errors() -> None:
    with pytest.raises(MalformedPayloadError, match="tombstone"):
        env.decode(None, [], CONTROL_PAUSE.name)
    with pytest.raises(UnsupportedContentTypeError):
        env.decode(b"<xml/>", [("content-type", b"text/xml")], CONTROL_PAUSE.name)


def test_envelope_type_must_match_the_message() -> None:
    with pytest.raises(UnknownMessageTypeError):
        env.encode(pb.PauseCommand(), env.new_envelope(pb.TelemetryPacket()))


header_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Po"]), max_size=30).map(str.encode),
    st.integers(min_value=1, max_value=6000).map(lambda n: b"1" * n),
    st.sampled_from(
        [b"application/json", b"application/x-protobuf", b"leyline.PauseCommand", b"leyline.DeadLetter", b"1.0", b"9"]
    ),
)
header_keys = st.sampled_from(["content-type", "leyline-type", "leyline-version", "leyline-event-time", "x"])


@settings(max_examples=400, deadline=None)
@given(
    value=st.one_of(st.none(), st.binary(max_size=512), st.text(max_size=200).map(str.encode)),
    headers=st.lists(st.tuples(header_keys, header_values), max_size=5),
    topic=st.sampled_from([t.name for t in ALL_TOPICS] + ["other", None]),
)
def test_hostile_records_only_raise_typed_decode_errors(value: bytes | None, headers: list, topic: str | None) -> None:
    try:
        decoded = env.decode(value, headers, topic)
    except DecodeError:
        return
    # What decodes re-encodes to a message of the declared type (nothing half-parsed slips through).
    assert decoded.message.DESCRIPTOR.full_name == decoded.envelope.message_type


def message_depth(descriptor: Descriptor, outer: tuple[str, ...] = ()) -> float:
    """How many messages deep one of this type can nest in JSON (infinite when it contains itself)."""
    if descriptor.full_name in outer:
        return math.inf
    inner = (message_depth(f.message_type, (*outer, descriptor.full_name)) for f in descriptor.fields if f.message_type)
    return 1 + max(inner, default=0)


@pytest.mark.parametrize("depth", [100_000, 1_000_000])
def test_json_nested_deeper_than_the_reader_recurses_is_a_typed_recursion_error(depth: int) -> None:
    """No Leyline message contains itself, so legal fields end five messages down (CompilationRequest, BlueprintIR,
    OpNode, Attribute, IntList); the nesting goes on in arrays under the last of them, so that what is refused is
    the depth, not an unknown field."""
    path = '{"blueprint": {"nodes": [{"attributes": [{"ints": {"values": %s}}]}]}}'
    json_headers = [("content-type", b"application/json")]
    shallow = env.decode((path % "[7]").encode(), json_headers, COMPILATION_REQUESTS.name).message
    assert list(shallow.blueprint.nodes[0].attributes[0].ints.values) == [7]  # every field on the path is legal
    with pytest.raises(MalformedPayloadError) as raised:
        env.decode((path % ("[" * depth + "]" * depth)).encode(), json_headers, COMPILATION_REQUESTS.name)
    assert isinstance(raised.value.__cause__, RecursionError)  # the JSON reader's limit, not a field it rejected
    assert str(raised.value.__cause__) in str(raised.value)  # and the decode error says so


def test_protobufs_json_depth_limit_is_beyond_leyline_and_a_named_typed_error_where_a_message_recurses() -> None:
    limit = inspect.signature(json_format.ParseDict).parameters["max_recursion_depth"].default
    assert message_depth(struct_pb2.Struct.DESCRIPTOR) == math.inf  # the walk sees a message that contains itself
    assert max(message_depth(cls.DESCRIPTOR) for cls in CONTRACTS) < limit  # no contract recurses or nears the limit

    # Struct nests two messages a level (Struct, Value); message_from_json parses as decode does
    def nested(levels: int) -> str:
        return '{"a": ' * levels + "{}" + "}" * levels

    assert "a" in env.message_from_json(nested(limit // 2 - 1), struct_pb2.Struct)
    with pytest.raises(MalformedPayloadError, match=f"Max recursion depth is {limit}") as raised:
        env.message_from_json(nested(limit // 2), struct_pb2.Struct)
    assert isinstance(raised.value.__cause__, json_format.ParseError)


def test_json_mapping_is_what_operators_read() -> None:
    message = sample(pb.PauseCommand)
    value = env.encode_payload(message, env.JSON)
    assert json.loads(value)["target_instance"] == "k1"
    assert json_format.Parse(value, pb.PauseCommand()) == message
