"""The app's pure part: a source record routed (by entity key, origin in headers) and un-routed gives back the very
fact the record held, so folding routed records is folding the log; what cannot be routed or un-routed raises the
codec's typed error (the agents count and skip it)."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from esper.projections import digest, reducers
from esper.projections.app import (
    H_TOPIC,
    RoutedRecordError,
    decode_state,
    encode_state,
    route_record,
    unroute_record,
)
from esper.projections.facts import fact_from_record
from esper.proto import leyline_pb2 as pb
from esper.safety.events import safety_event
from esper.streams.envelope import Envelope, encode
from esper.streams.exceptions import DecodeError
from esper.streams.topics import COMPILATION_REQUESTS, COMPILATION_RESULTS, SAFETY, TELEMETRY

Record = tuple[str, int, int, bytes, list[tuple[str, str | bytes | None]], bytes]  # topic, partition, offset, ...


def _record(topic: str, partition: int, offset: int, message: Message, key: str, n: int) -> Record:
    value, headers = encode(message, Envelope(message.DESCRIPTOR.full_name, message_id=f"m-{n}"))
    return topic, partition, offset, value, list(headers), key.encode()


def _log() -> list[Record]:
    stats = pb.BreakerStats(name="graft", state=pb.CIRCUIT_OPEN, total_calls=3)
    opened = pb.BreakerTransition(stats=stats, from_state=pb.CIRCUIT_CLOSED, to_state=pb.CIRCUIT_OPEN)
    event = safety_event(pb.TELEMETRY_WARN, "open", opened, source_id="k1", subsystem="kasmina")
    pause = safety_event(pb.TELEMETRY_INFO, "p", pb.PauseEntered(instance_id="k1", slot_id="s0"), source_id="k1")
    packet = pb.TelemetryPacket(packet_id="pk1", source_id="k1")
    packet.metrics.add(name="step_ms", value=1.5, type=pb.METRIC_GAUGE)
    request = pb.CompilationRequest(request_id="r1", blueprint_id="bp1", requestor="t")
    result = pb.CompilationResult(request_id="r1", blueprint_id="bp1", success=True, artifact_id="a1")
    return [
        _record(SAFETY.name, 1, 0, event, "kasmina/k1", 1),
        _record(SAFETY.name, 1, 1, pause, "kasmina/k1", 2),
        _record(SAFETY.name, 1, 2, event, "kasmina/k1", 3),  # resent: the same event id
        _record(TELEMETRY.name, 0, 0, packet, "k1", 4),
        _record(COMPILATION_REQUESTS.name, 2, 0, request, "bp1", 5),
        _record(COMPILATION_RESULTS.name, 0, 0, result, "bp1", 6),
    ]


def test_a_routed_record_unroutes_to_the_fact_it_came_from() -> None:
    for topic, partition, offset, value, headers, key in _log():
        fact = fact_from_record(value, headers, topic, partition, offset, 1_000 + offset, key)
        routed = route_record(value, headers, topic, partition, offset, 1_000 + offset, key)
        assert [(p.name, k) for p, k in reducers.routes(fact)] == [
            (dict(r.headers)["esper-projection"].decode(), r.key.decode()) for r in routed
        ]
        for r in routed:
            projection, entity, again = unroute_record(r.value, r.headers, r.key)
            assert again == fact and entity == r.key.decode()
            assert (projection, entity) in reducers.routes(fact)


def test_folding_routed_records_equals_folding_the_log() -> None:
    log = _log()
    facts = [fact_from_record(v, h, t, p, o, 7, k) for t, p, o, v, h, k in log]
    tables: dict[str, dict[str, bytes]] = {p.name: {} for p in reducers.PROJECTIONS}
    for topic, partition, offset, value, headers, key in log:
        for r in route_record(value, headers, topic, partition, offset, 7, key):
            projection, entity, fact = unroute_record(r.value, r.headers, r.key)
            old = tables[projection.name].get(entity)
            new = projection.apply_keyed(None if old is None else decode_state(old), fact, entity)
            if new is not None:
                tables[projection.name][entity] = encode_state(new)
    live = {name: {k: decode_state(v) for k, v in t.items()} for name, t in tables.items()}
    assert digest.digests(live) == digest.digests(reducers.fold_all(facts))
    assert live["breakers"]["kasmina/k1/graft"]["transitions"] == 1  # the resent event changed nothing


def test_a_record_cannot_forge_its_origin() -> None:
    topic, partition, offset, value, headers, _ = _log()[0]
    forged = [*headers, (H_TOPIC, b"leyline.audit"), ("esper-origin-offset", b"999"), ("esper-origin-key", b"k")]
    (routed,) = route_record(value, forged, topic, partition, offset, 5, None)
    _, _, fact = unroute_record(routed.value, routed.headers, routed.key)
    assert (fact.topic, fact.partition, fact.offset, fact.key) == (topic, partition, offset, None)


def test_what_cannot_be_routed_or_unrouted_raises_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        route_record(b"\xff garbage", [], SAFETY.name, 0, 0, 0, None)
    topic, partition, offset, value, headers, _ = _log()[0]
    (routed,) = route_record(value, headers, topic, partition, offset, 5, None)
    with pytest.raises(RoutedRecordError):
        unroute_record(routed.value, headers, routed.key)  # no origin headers
    renamed = [(k, b"nonsense" if k == "esper-projection" else v) for k, v in routed.headers]
    with pytest.raises(RoutedRecordError):
        unroute_record(routed.value, renamed, routed.key)
    bad_offset = [(k, b"x" if k == "esper-origin-offset" else v) for k, v in routed.headers]
    with pytest.raises(RoutedRecordError):
        unroute_record(routed.value, bad_offset, routed.key)
    _, _, fact = unroute_record(routed.value, routed.headers, routed.key)
    assert fact.key is None  # a record without a key stays without one


def test_states_round_trip_through_their_canonical_json() -> None:
    state = {"b": [1, 2.5, "inf"], "a": {"seen": {"t:0": ["x"]}}, "c": None}
    assert decode_state(encode_state(state)) == state
    assert encode_state(state) == digest.canonical_json(state)
