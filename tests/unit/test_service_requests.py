"""Records to Work: each topic's message as the one shape the lanes schedule, what is refused as a WorkError, the
deadline's clock, and who may send an emergency compile."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.compiler.service.requests import MAX_ID_CHARS, Work, WorkError, authorized, work_from_record
from esper.compiler.service_config import AuthorizationSettings
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CompilationStrategy, RequestKind
from esper.streams.consumer import Record
from esper.streams.envelope import Decoded, Envelope
from esper.streams.topics import BLUEPRINTS, COMPILATION_EMERGENCY, COMPILATION_REQUESTS

RECORD_MS = 1_700_000_000_000


def record(
    topic: str, msg: Message, *, message_id: str = "m-1", producer: str = "p", key: bytes | None = None
) -> Record:
    envelope = Envelope(msg.DESCRIPTOR.full_name, message_id=message_id, producer=producer)
    return Record(topic, 3, 41, key, RECORD_MS, Decoded(msg, envelope))


def bp(blueprint_id: str = "bp-1", author: str = "") -> pb.BlueprintIR:
    return pb.BlueprintIR(blueprint_id=blueprint_id, name="tiny", ir_version=1, author=author)


# ---------------------------------------------------------------- each topic


def test_a_blueprint_is_compiled_at_the_default_tier_with_its_message_id_and_author() -> None:
    work = work_from_record(record(BLUEPRINTS.name, bp("bp-9", author="karn")))
    assert work == Work(
        kind=RequestKind.BLUEPRINT,
        request_id="m-1",
        requestor="karn",
        blueprint_id="bp-9",
        blueprint=bp("bp-9", author="karn"),
        strategy=None,
        priority=0,
        deadline_at_ms=None,
        device="cpu",
    )
    anonymous = work_from_record(record(BLUEPRINTS.name, bp(), message_id="", producer="submit-cli"))
    assert anonymous.request_id == f"{BLUEPRINTS.name}:3:41" and anonymous.requestor == "submit-cli"


def test_a_compilation_request_carries_tier_priority_device_and_the_inline_blueprint() -> None:
    msg = pb.CompilationRequest(
        request_id="r-1",
        blueprint_id="bp-1",
        strategy=int(CompilationStrategy.FAST),  # type: ignore[arg-type]
        priority=7,
        requestor="tamiyo",
        blueprint=bp("bp-1"),
        device="cuda:1",
    )
    work = work_from_record(record(COMPILATION_REQUESTS.name, msg))
    assert (work.kind, work.request_id, work.requestor, work.blueprint_id) == (
        RequestKind.COMPILATION,
        "r-1",
        "tamiyo",
        "bp-1",
    )
    assert work.strategy is CompilationStrategy.FAST and work.priority == 7 and work.device == "cuda:1"
    assert work.blueprint == bp("bp-1") and work.deadline_at_ms is None and work.authorization_token == ""


def test_a_request_by_id_only_and_one_with_no_tier_is_dynamic_selection() -> None:
    work = work_from_record(record(COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint_id="bp-2")))
    assert work.blueprint is None and work.blueprint_id == "bp-2" and work.strategy is None
    assert work.request_id == "m-1" and work.device == "cpu"  # the envelope's id, the default device
    inline_only = work_from_record(record(COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint=bp("bp-3"))))
    assert inline_only.blueprint_id == "bp-3"


def test_an_emergency_compile_is_its_own_kind_at_the_emergency_tier_with_its_token() -> None:
    msg = pb.EmergencyCompile(
        request_id="e-1", blueprint=bp("bp-4"), requestor="tamiyo", reason="loss spike", authorization_token="t0k"
    )
    work = work_from_record(record(COMPILATION_EMERGENCY.name, msg))
    assert work.kind is RequestKind.EMERGENCY and work.strategy is CompilationStrategy.EMERGENCY
    assert work.blueprint_id == "bp-4" and work.authorization_token == "t0k"
    assert work.priority > 10**6  # ahead of any CompilationRequest's int32 priority that matters


@pytest.mark.parametrize("topic", [COMPILATION_REQUESTS.name, COMPILATION_EMERGENCY.name])
def test_a_request_naming_no_blueprint_or_another_than_it_carries_is_refused(topic: str) -> None:
    kind = pb.CompilationRequest if topic == COMPILATION_REQUESTS.name else pb.EmergencyCompile
    with pytest.raises(WorkError, match="names no blueprint"):
        work_from_record(record(topic, kind(request_id="x")))
    with pytest.raises(WorkError, match="names blueprint 'bp-a' but carries 'bp-b'"):
        work_from_record(record(topic, kind(blueprint_id="bp-a", blueprint=bp("bp-b"))))
    agreeing = work_from_record(record(topic, kind(blueprint_id="bp-a", blueprint=bp("bp-a"))))
    assert agreeing.blueprint_id == "bp-a"
    unnamed_inline = work_from_record(record(topic, kind(blueprint_id="bp-a", blueprint=bp(""))))
    assert unnamed_inline.blueprint_id == "bp-a"


@pytest.mark.parametrize(
    "topic,msg",
    [
        (BLUEPRINTS.name, bp("b" * (MAX_ID_CHARS + 1))),
        (BLUEPRINTS.name, bp(author="a" * (MAX_ID_CHARS + 1))),
        (COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id="r" * (MAX_ID_CHARS + 1), blueprint_id="b")),
        (COMPILATION_REQUESTS.name, pb.CompilationRequest(requestor="q" * (MAX_ID_CHARS + 1), blueprint_id="b")),
        (COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint_id="b" * (MAX_ID_CHARS + 1))),
        (COMPILATION_EMERGENCY.name, pb.EmergencyCompile(request_id="r" * (MAX_ID_CHARS + 1), blueprint_id="b")),
        (COMPILATION_EMERGENCY.name, pb.EmergencyCompile(blueprint=bp("b" * (MAX_ID_CHARS + 1)))),
    ],
)
def test_over_long_ids_are_refused(topic: str, msg: Message) -> None:
    with pytest.raises(WorkError, match=f"over {MAX_ID_CHARS}"):
        work_from_record(record(topic, msg))


def test_ids_of_exactly_the_limit_pass() -> None:
    limit = "x" * MAX_ID_CHARS
    work = work_from_record(
        record(COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id=limit, blueprint_id=limit))
    )
    assert work.request_id == work.blueprint_id == limit


# ---------------------------------------------------------------- deadlines


@pytest.mark.parametrize("topic", [COMPILATION_REQUESTS.name, COMPILATION_EMERGENCY.name])
def test_a_deadline_is_a_budget_from_requested_at_else_from_the_records_timestamp(topic: str) -> None:
    kind = pb.CompilationRequest if topic == COMPILATION_REQUESTS.name else pb.EmergencyCompile
    asked = kind(blueprint_id="b", deadline_ms=5000)
    asked.requested_at.FromMilliseconds(RECORD_MS - 60_000)
    assert work_from_record(record(topic, asked)).deadline_at_ms == RECORD_MS - 55_000
    unset = kind(blueprint_id="b", deadline_ms=5000)
    assert work_from_record(record(topic, unset)).deadline_at_ms == RECORD_MS + 5000
    for none in (0, -1):
        assert work_from_record(record(topic, kind(blueprint_id="b", deadline_ms=none))).deadline_at_ms is None


def test_a_requested_at_of_nanoseconds_only_counts_as_set() -> None:
    msg = pb.CompilationRequest(blueprint_id="b", deadline_ms=10)
    msg.requested_at.nanos = 5_000_000  # 1970-01-01T00:00:00.005Z
    assert work_from_record(record(COMPILATION_REQUESTS.name, msg)).deadline_at_ms == 15


# ---------------------------------------------------------------- authorisation


def emergency(requestor: str, token: str = "") -> Work:
    msg = pb.EmergencyCompile(blueprint_id="b", requestor=requestor, authorization_token=token)
    return work_from_record(record(COMPILATION_EMERGENCY.name, msg))


def test_only_emergency_compiles_are_restricted() -> None:
    closed = AuthorizationSettings(roles={})
    for work in (
        work_from_record(record(BLUEPRINTS.name, bp())),
        work_from_record(record(COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint_id="b", requestor="x"))),
    ):
        assert authorized(work, closed) == (True, "")


def test_an_emergency_compile_needs_the_emergency_role() -> None:
    settings_ = AuthorizationSettings(roles={"tamiyo": ("emergency",), "kasmina": ("observer",)})
    assert authorized(emergency("tamiyo"), settings_) == (True, "")
    for who in ("kasmina", "stranger", ""):
        ok, why = authorized(emergency(who), settings_)
        assert not ok and f"{who!r} does not hold the 'emergency' role" in why
    renamed = AuthorizationSettings(emergency_role="oncall", roles={"tamiyo": ("emergency",), "urza": ("oncall",)})
    assert not authorized(emergency("tamiyo"), renamed)[0] and authorized(emergency("urza"), renamed)[0]


def test_a_configured_token_must_be_presented_and_match_its_digest() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    settings_ = AuthorizationSettings(
        roles={"tamiyo": ("emergency",), "urza": ("emergency",)}, token_sha256={"tamiyo": digest}
    )
    assert authorized(emergency("tamiyo", "s3cret"), settings_) == (True, "")
    for token in ("", "s3cre", "S3CRET", digest):  # missing, wrong, and the digest itself
        ok, why = authorized(emergency("tamiyo", token), settings_)
        assert not ok and "did not present its token" in why and "s3cret" not in why
    assert authorized(emergency("urza"), settings_) == (True, "")  # no digest configured: the role suffices
    no_role = AuthorizationSettings(roles={}, token_sha256={"tamiyo": digest})
    assert not authorized(emergency("tamiyo", "s3cret"), no_role)[0]  # a token does not grant the role


# ---------------------------------------------------------------- hostile fields

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)  # protobuf strings are valid Unicode
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[int, int] | None:
    return draw(st.none() | st.tuples(INT64, INT32))


@st.composite
def inline(draw: st.DrawFn) -> pb.BlueprintIR | None:
    return draw(st.none() | st.builds(bp, TEXT, TEXT))


def _fill(
    msg: pb.CompilationRequest | pb.EmergencyCompile, ts: tuple[int, int] | None, blueprint: pb.BlueprintIR | None
) -> None:
    if ts is not None:
        msg.requested_at.seconds, msg.requested_at.nanos = ts
    if blueprint is not None:
        msg.blueprint.CopyFrom(blueprint)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {
            "request_id": TEXT,
            "blueprint_id": TEXT,
            "strategy": INT32,
            "priority": INT32,
            "requestor": TEXT,
            "device": TEXT,
            "deadline_ms": INT64,
        }
    ),
    ts=timestamps(),
    blueprint=inline(),
    record_ms=INT64,
    message_id=TEXT,
)
def test_any_compilation_request_is_work_or_a_work_error(
    fields: dict[str, object],
    ts: tuple[int, int] | None,
    blueprint: pb.BlueprintIR | None,
    record_ms: int,
    message_id: str,
) -> None:
    msg = pb.CompilationRequest(**fields)  # type: ignore[arg-type]
    _fill(msg, ts, blueprint)
    rec = record(COMPILATION_REQUESTS.name, msg, message_id=message_id)
    try:
        work = work_from_record(Record(rec.topic, rec.partition, rec.offset, rec.key, record_ms, rec.decoded))
    except WorkError:
        return
    assert work.kind is RequestKind.COMPILATION and work.blueprint_id
    assert max(len(work.request_id), len(work.requestor), len(work.blueprint_id)) <= MAX_ID_CHARS
    assert work.strategy is None or work.strategy in CompilationStrategy
    assert authorized(work, AuthorizationSettings(roles={})) == (True, "")


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {
            "request_id": TEXT,
            "blueprint_id": TEXT,
            "requestor": TEXT,
            "reason": TEXT,
            "authorization_token": TEXT,
            "device": TEXT,
            "deadline_ms": INT64,
        }
    ),
    ts=timestamps(),
    blueprint=inline(),
    record_ms=INT64,
)
def test_any_emergency_compile_is_work_or_a_work_error(
    fields: dict[str, object], ts: tuple[int, int] | None, blueprint: pb.BlueprintIR | None, record_ms: int
) -> None:
    msg = pb.EmergencyCompile(**fields)  # type: ignore[arg-type]
    _fill(msg, ts, blueprint)
    rec = record(COMPILATION_EMERGENCY.name, msg)
    try:
        work = work_from_record(Record(rec.topic, rec.partition, rec.offset, rec.key, record_ms, rec.decoded))
    except WorkError:
        return
    assert work.kind is RequestKind.EMERGENCY and work.strategy is CompilationStrategy.EMERGENCY
    digest = hashlib.sha256(b"k").hexdigest()
    ok, _ = authorized(
        work, AuthorizationSettings(roles={work.requestor: ("emergency",)}, token_sha256={work.requestor: digest})
    )
    assert ok == (work.authorization_token == "k")


@pytest.mark.parametrize("strategy", [5, 99, -1])
def test_an_unknown_strategy_number_is_a_work_error(strategy: int) -> None:
    with pytest.raises(WorkError, match="strategy"):
        work_from_record(record(COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint_id="b", strategy=strategy)))  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds,nanos", [(2**62, 0), (-(2**40), 0), (0, -1), (0, 10**9)])
def test_a_requested_at_out_of_the_timestamp_range_is_a_work_error(seconds: int, nanos: int) -> None:
    msg = pb.CompilationRequest(blueprint_id="b", deadline_ms=1000)
    msg.requested_at.seconds, msg.requested_at.nanos = seconds, nanos
    with pytest.raises(WorkError, match="requested_at"):
        work_from_record(record(COMPILATION_REQUESTS.name, msg))
