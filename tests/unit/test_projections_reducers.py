"""Each projection's rules, on facts built as their producers build them."""

from __future__ import annotations

import json
import math

import pytest

from esper.compiler.conservative import ConservativeModeController
from esper.projections.digest import canonical_json
from esper.projections.facts import Fact
from esper.projections.reducers import (
    MAX_ERROR_TYPES,
    MAX_SERIES,
    MAX_SLOTS,
    PROJECTIONS,
    PROJECTIONS_BY_NAME,
    SEEN_WINDOW,
    State,
    Tables,
    fold,
    fold_all,
    routes,
)
from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from esper.safety.clock import ManualClock
from esper.safety.pause import PauseController, PauseQuota
from esper.streams.topics import (
    AUDIT,
    BLUEPRINTS,
    COMPILATION_EMERGENCY,
    COMPILATION_REQUESTS,
    COMPILATION_RESULTS,
    CONTROL_PAUSE,
    DEADLETTER,
    KERNELS,
    TELEMETRY,
)
from tests.projection_facts import Log
from tests.sinks import MemorySink


def tables_of(facts: list[Fact]) -> Tables:
    tables = fold_all(facts)
    for table in tables.values():
        for state in table.values():
            assert json.loads(canonical_json(state)) == state  # every state is plain JSON
    return tables


def one(tables: Tables, name: str) -> State:
    (state,) = tables[name].values()
    return state


def stats(name: str = "compile", state: int = pb.CIRCUIT_CLOSED, **kw: int) -> pb.BreakerStats:
    return pb.BreakerStats(name=name, state=state, **kw)  # type: ignore[arg-type]


def transition(frm: int, to: int, count: int, reason: str = "r", name: str = "compile") -> pb.BreakerTransition:
    return pb.BreakerTransition(
        stats=stats(name, to, state_transition_count=count),
        from_state=frm,  # type: ignore[arg-type]
        to_state=to,  # type: ignore[arg-type]
        reason=reason,
    )


# ---------------------------------------------------------------- breakers


def test_breaker_state_follows_a_real_breaker_through_open_half_open_and_closed() -> None:
    clock, sink = ManualClock(), MemorySink()
    config = CircuitBreakerConfig(failure_threshold=2, timeout_ms=1000, success_threshold=1)
    breaker = CircuitBreaker("compile", config, clock=clock, sink=sink, source_id="k1")
    log = Log()

    def state() -> State:
        return one(tables_of(log.facts), "breakers")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            breaker.call(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    for e in sink.events:
        log.event(e)
    s = state()
    assert breaker.state is CircuitState.OPEN
    assert (s["state"], s["state_number"]) == ("OPEN", 2)
    assert s["failures"] == 2 and s["transitions"] == 1
    assert s["transition"]["from"] == "CLOSED" and s["transition"]["to"] == "OPEN"
    assert s["failure"]["error_type"] == "RuntimeError" and "boom" in s["failure"]["error"]
    assert s["stats"]["total_failures"] == 2
    assert (s["subsystem"], s["source_id"], s["breaker"]) == ("kasmina", "k1", "compile")
    assert list(tables_of(log.facts)["breakers"]) == ["kasmina/k1/compile"]

    sink.clear()
    clock.advance(1001)
    breaker.call(lambda: None)  # half open, then closed after one success
    for e in sink.events:
        log.event(e)
    s = state()
    assert breaker.state is CircuitState.CLOSED
    assert (s["state"], s["state_number"]) == ("CLOSED", 1)
    assert s["transitions"] == 3 and s["transition"]["from"] == "HALF_OPEN"


def test_breaker_keeps_the_newest_stats_whatever_partition_arrives_first() -> None:
    # Tezzeret keys failures and transitions apart, so they may be read in either order.
    log = Log()
    opened = log.safety(transition(1, 2, 1), subsystem="tezzeret", source_id="t1", at_ms=2000, partition=0)
    failure = pb.BreakerFailure(
        stats=stats(state=pb.CIRCUIT_CLOSED, total_failures=2, total_calls=2), error_type="E", error="x"
    )
    failed = log.safety(failure, subsystem="tezzeret", source_id="t1", at_ms=1000, partition=1)
    for order in ([opened, failed], [failed, opened]):
        s = one(tables_of(order), "breakers")
        assert s["state"] == "OPEN" and s["stats"]["at_ms"] == 2000
        assert s["failure"]["error_type"] == "E" and s["failures"] == 1
    assert tables_of([opened, failed]) == tables_of([failed, opened])


def test_one_partition_is_read_in_log_order_even_when_its_clock_stepped_back() -> None:
    log = Log()
    log.safety(transition(1, 2, 1), at_ms=5000)
    log.safety(transition(2, 3, 2), at_ms=1000)  # the wall clock stepped back between the two
    s = one(tables_of(log.facts), "breakers")
    assert s["state"] == "HALF_OPEN" and s["transition"]["from"] == "OPEN"
    assert list(s["logs"]) == [f"leyline.safety:{log.facts[0].partition}"]


def test_breaker_unknown_states_and_nameless_breakers() -> None:
    log = Log()
    log.safety(transition(1, 99, 1))  # a state number our schema lacks
    log.safety(pb.BreakerFailure(stats=pb.BreakerStats(name="")))  # no breaker to file it under
    table = tables_of(log.facts)["breakers"]
    (s,) = table.values()
    assert (s["state"], s["state_number"]) == ("UNKNOWN", 99)


# ---------------------------------------------------------------- conservative mode


def test_conservative_mode_from_the_real_controller() -> None:
    clock, sink = ManualClock(), MemorySink()
    controller = ConservativeModeController(clock=clock, sink=sink, source_id="t1")
    controller.observe_breaker("compile", CircuitState.OPEN)
    log = Log()
    for e in sink.events:
        log.event(e)
    s = one(tables_of(log.facts), "conservative")
    assert s["active"] is True and s["reasons"] and s["entered"] == 1
    assert s["service"] == "tezzeret" and s["source_id"] == "t1"
    assert list(tables_of(log.facts)["conservative"]) == ["tezzeret/t1"]


def test_conservative_mode_remembers_why_it_entered_after_leaving() -> None:
    log = Log()
    entered = log.safety(pb.ConservativeModeChanged(service="tezzeret", active=True, reasons=["gpu hot"]), at_ms=10)
    log.safety(pb.ConservativeModeChanged(service="tezzeret", active=True, reasons=["gpu hot", "oom"]), at_ms=20)
    log.safety(pb.ConservativeModeChanged(service="tezzeret", active=False), at_ms=30)
    s = one(tables_of(log.facts), "conservative")
    assert s["active"] is False and s["reasons"] == [] and s["since_ms"] == 30
    assert s["changes"] == 3 and s["entered"] == 1
    assert s["last_entered"] == {"at_ms": 10, "reasons": ["gpu hot"]}
    s = one(tables_of(log.facts[:2]), "conservative")
    assert s["since_ms"] == 10 and s["reasons"] == ["gpu hot", "oom"]
    assert one(tables_of([entered]), "conservative")["active"] is True


# ---------------------------------------------------------------- pauses


def test_pause_per_slot_with_the_instance_quota_from_real_controllers() -> None:
    clock, sink = ManualClock(), MemorySink()
    quota = PauseQuota(clock=clock, sink=sink, source_id="k1")
    a = PauseController("k1", "slot-a", clock=clock, sink=sink)
    b = PauseController("k1", "slot-b", clock=clock, sink=sink)
    granted = quota.request_pause_quota(500).granted
    assert a.enter_pause_with_identity_kernel("operator", quota_ms=granted, command_id="c1")
    assert b.enter_pause_with_identity_kernel("operator", quota_ms=granted)
    clock.advance(100)
    assert b.exit_pause(command_id="c2")
    log = Log()
    for e in sink.events:
        log.event(e)
    s = one(tables_of(log.facts), "pauses")
    assert s["instance_id"] == "k1" and s["paused_slots"] == 1
    assert s["slots"]["slot-a"]["paused"] is True and s["slots"]["slot-a"]["command_id"] == "c1"
    assert s["slots"]["slot-a"]["quota_ms"] == granted and s["slots"]["slot-a"]["identity_kernel_active"]
    exited = s["slots"]["slot-b"]
    assert exited["paused"] is False and exited["last_exit"]["cause"] == "command"
    assert exited["last_exit"]["duration_ms"] == 100 and exited["pauses"] == 1
    assert s["quota"]["remaining"] == quota.remaining and s["quota"]["last"]["granted"] == granted


def test_quota_denials_and_resets() -> None:
    log = Log()
    log.safety(pb.QuotaDecision(outcome=pb.QUOTA_DENIED, requested=10, remaining=0, used=100, max_quota=100))
    log.safety(pb.QuotaReset(previous_used=100, max_quota=100))
    q = one(tables_of(log.facts), "pauses")["quota"]
    assert q["denied"] == 1 and q["resets"] == 1 and q["remaining"] == 100 and q["used"] == 0
    assert q["last"]["outcome"] == "DENIED"


def test_pause_slots_are_capped() -> None:
    log = Log()
    for i in range(MAX_SLOTS + 3):
        log.safety(pb.PauseEntered(instance_id="k1", slot_id=f"s{i}"))
    s = one(tables_of(log.facts), "pauses")
    assert len(s["slots"]) == MAX_SLOTS and s["dropped_slots"] == 3 and s["paused_slots"] == MAX_SLOTS


# ---------------------------------------------------------------- seeds


def seed(frm: int, to: int, gate: str, reason: str) -> pb.SeedTransition:
    return pb.SeedTransition(instance_id="k1", slot_id="s1", from_stage=frm, to_stage=to, gate=gate, reason=reason)  # type: ignore[arg-type]


def test_seed_lifecycle_with_its_last_gate_and_refusals() -> None:
    log = Log()
    log.safety(seed(pb.SEED_DORMANT, pb.SEED_GERMINATED, "G0", "G0 passed"), at_ms=5)
    log.safety(seed(pb.SEED_GERMINATED, pb.SEED_TRAINING, "G1", "G1 passed"), at_ms=6)
    s = one(tables_of(log.facts), "seeds")
    assert (s["stage"], s["stage_number"], s["previous"]) == ("TRAINING", 3, "GERMINATED")
    assert s["last_gate"]["gate"] == "G1" and s["last_gate"]["passed"] and s["transitions"] == 2
    log.safety(seed(pb.SEED_TRAINING, pb.SEED_BLENDING, "G2", "refused: G2: 3 training steps < 10"), at_ms=7)
    s = one(tables_of(log.facts), "seeds")
    assert s["stage"] == "TRAINING" and s["since_ms"] == 6 and s["refusals"] == 1 and s["transitions"] == 2
    assert s["last_gate"] == {
        "gate": "G2",
        "passed": False,
        "reason": "refused: G2: 3 training steps < 10",
        "from": "TRAINING",
        "to": "BLENDING",
        "at_ms": 7,
    }
    log.safety(seed(pb.SEED_TRAINING, pb.SEED_CULLED, "cull", "nan"), at_ms=8)
    s = one(tables_of(log.facts), "seeds")
    assert s["stage"] == "CULLED" and s["previous"] == "TRAINING"
    assert list(tables_of(log.facts)["seeds"]) == ["k1/s1"]


# ---------------------------------------------------------------- compilations per request


def request(request_id: str = "r1", blueprint_id: str = "bp1") -> pb.CompilationRequest:
    return pb.CompilationRequest(
        request_id=request_id, blueprint_id=blueprint_id, strategy=pb.STRATEGY_FAST, priority=3, requestor="alice"
    )


def result(request_id: str = "r1", success: bool = True, **kw: object) -> pb.CompilationResult:
    fields: dict[str, object] = {
        "request_id": request_id,
        "blueprint_id": "bp1",
        "success": success,
        "strategy": pb.STRATEGY_FAST,
        "queue_ms": 4,
        "compile_ms": 40,
        "total_ms": 45,
        "worker_id": "t1",
    }
    if success:
        fields |= {"artifact_id": "art1", "cache_level": pb.CACHE_L1}
    else:
        fields |= {"failure_reason": pb.FAILURE_TIMEOUT, "error": "took too long"}
    return pb.CompilationResult(**{**fields, **kw})  # type: ignore[arg-type]


def test_compilation_pending_then_done_in_either_order_of_topics() -> None:
    log = Log()
    asked = log.append(COMPILATION_REQUESTS.name, request(), "bp1")
    s = one(tables_of([asked]), "compilations")
    assert s["status"] == "pending" and s["request"]["strategy"] == "FAST" and s["request"]["priority"] == 3
    assert s["requestor"] == "alice" and s["blueprint_id"] == "bp1" and s["kind"] == "COMPILATION"
    answered = log.append(COMPILATION_RESULTS.name, result(), "bp1")
    audited = log.append(AUDIT.name, pb.AuditRecord(request_id="r1", success=True, kind=pb.REQUEST_COMPILATION), "r1")
    done = tables_of([asked, answered, audited])
    assert done == tables_of([audited, answered, asked])
    s = done["compilations"]["r1"]
    assert s["status"] == "done" and s["cache_level"] == "L1" and s["artifact_id"] == "art1"
    assert s["result"]["compile_ms"] == 40 and s["result"]["queue_ms"] == 4 and s["strategy"] == "FAST"
    assert s["answers"] == 1 and s["asked"] == 1


def test_compilation_failure_keeps_its_reason() -> None:
    log = Log()
    log.append(COMPILATION_REQUESTS.name, request(), "bp1")
    log.append(COMPILATION_RESULTS.name, result(success=False), "bp1")
    s = one(tables_of(log.facts), "compilations")
    assert s["status"] == "failed" and s["failure_reason"] == "TIMEOUT" and s["result"]["error"] == "took too long"
    assert s["cache_level"] == "" and s["artifact_id"] == ""


def test_blueprint_and_emergency_records_are_requests_too() -> None:
    log = Log()
    bp = log.append(BLUEPRINTS.name, pb.BlueprintIR(blueprint_id="bp9", author="bob"), "bp9", message_id="m-bp")
    log.append(
        COMPILATION_EMERGENCY.name, pb.EmergencyCompile(request_id="e1", blueprint_id="bp9", reason="nan"), "bp9"
    )
    nameless = log.append(COMPILATION_REQUESTS.name, pb.CompilationRequest(blueprint_id="bp9"), "bp9", message_id="")
    table = tables_of(log.facts)["compilations"]
    assert bp.message_id == "m-bp"
    assert table["m-bp"]["kind"] == "BLUEPRINT" and table["m-bp"]["requestor"] == "bob"
    assert table["e1"]["kind"] == "EMERGENCY" and table["e1"]["strategy"] == "EMERGENCY"
    assert table["e1"]["request"]["reason"] == "nan"
    coordinates = f"{nameless.topic}:{nameless.partition}:{nameless.offset}"
    assert table[coordinates]["status"] == "pending"  # known by its coordinates, as Tezzeret knows it


def test_a_dead_lettered_request_is_failed_by_its_audit() -> None:
    log = Log()
    audit = pb.AuditRecord(
        request_id="leyline.compilation.requests:0:7",
        origin_topic="leyline.compilation.requests",
        origin_offset=7,
        failure_reason=pb.FAILURE_DECODE,
        dead_lettered=True,
    )
    log.append(AUDIT.name, audit, audit.request_id)
    s = one(tables_of(log.facts), "compilations")
    assert s["status"] == "failed" and s["failure_reason"] == "DECODE" and s["audit"]["dead_lettered"]


def test_compilation_complete_without_request_id_is_only_the_blueprints() -> None:
    log = Log()
    log.append(COMPILATION_RESULTS.name, pb.CompilationComplete(blueprint_id="bp1", artifact_id="a"), "bp1")
    tables = tables_of(log.facts)
    assert tables["compilations"] == {} and tables["blueprints"]["bp1"]["compiled"] == 1


# ---------------------------------------------------------------- compilations per blueprint


def artifact(artifact_id: str, created_ms: int, strategy: int = pb.STRATEGY_FAST) -> pb.CompiledKernelArtifact:
    a = pb.CompiledKernelArtifact(artifact_id=artifact_id, blueprint_id="bp1", strategy=strategy, size_bytes=10)  # type: ignore[arg-type]
    a.created_at.FromMilliseconds(created_ms)
    return a


def test_blueprint_counts_latest_result_per_tier_and_newest_artifact() -> None:
    log = Log()
    log.append(BLUEPRINTS.name, pb.BlueprintIR(blueprint_id="bp1", name="mlp", author="bob"), "bp1")
    log.append(COMPILATION_REQUESTS.name, request("r1"), "bp1")
    log.append(COMPILATION_REQUESTS.name, request("r2"), "bp1")
    log.append(COMPILATION_RESULTS.name, result("r1", artifact_id="old"), "bp1")
    log.append(COMPILATION_RESULTS.name, result("r2", artifact_id="new", cache_level=pb.CACHE_MISS), "bp1")
    log.append(COMPILATION_RESULTS.name, result("r3", success=False), "bp1")
    newer, older = artifact("a-new", 2000), artifact("a-old", 1000)
    k_new = log.append(KERNELS.name, newer, "a-new")
    k_old = log.append(KERNELS.name, older, "a-old")
    s = tables_of(log.facts)["blueprints"]["bp1"]
    assert (s["name"], s["author"], s["submitted"], s["requests"]) == ("mlp", "bob", 1, 2)
    assert (s["ok"], s["failed"]) == (2, 1)
    assert s["failures"] == {"TIMEOUT": 1} and s["cache"] == {"L1": 1, "MISS": 1}
    assert s["tiers"]["FAST"]["artifact_id"] == "new" and s["tiers"]["FAST"]["request_id"] == "r2"
    assert s["last_failure"]["request_id"] == "r3"
    assert s["artifacts"]["FAST"]["artifact_id"] == "a-new"
    swapped = [f for f in log.facts if f not in (k_new, k_old)] + [k_old, k_new]
    assert tables_of(swapped)["blueprints"]["bp1"]["artifacts"] == s["artifacts"]


# ---------------------------------------------------------------- metrics


def point(name: str, value: float, at_ms: int, **labels: str) -> pb.MetricPoint:
    p = pb.MetricPoint(name=name, value=value, type=pb.METRIC_GAUGE, unit="ms", labels=labels)
    p.timestamp.FromMilliseconds(at_ms)
    return p


def packet(packet_id: str, *points: pb.MetricPoint, source: str = "k1") -> pb.TelemetryPacket:
    return pb.TelemetryPacket(packet_id=packet_id, source_id=source, source_subsystem="kasmina", metrics=points)


def test_latest_metric_values_per_series() -> None:
    log = Log()
    log.append(TELEMETRY.name, packet("p1", point("step_ms", 5.0, 10), point("loss", 1.0, 10, slot="a")), "k1")
    log.append(TELEMETRY.name, packet("p2", point("step_ms", 7.0, 20)), "k1")
    log.append(TELEMETRY.name, packet("p3", point("step_ms", 3.0, 15)), "k1")  # older than p2's reading
    s = one(tables_of(log.facts), "metrics")
    assert s["packets"] == 3 and s["subsystem"] == "kasmina"
    assert s["series"]["step_ms"]["value"] == 7.0 and s["series"]["step_ms"]["at_ms"] == 20
    assert s["series"]['loss{slot="a"}']["labels"] == {"slot": "a"}


def test_histograms_and_non_finite_values() -> None:
    log = Log()
    h = pb.MetricPoint(
        name="lat_ms", type=pb.METRIC_HISTOGRAM, bucket_bounds=[1, 10], bucket_counts=[3, 4], count=7, sum=30
    )
    log.append(TELEMETRY.name, packet("p1", h, point("x", math.nan, 1), point("y", -math.inf, 1)), "k1")
    series = one(tables_of(log.facts), "metrics")["series"]
    assert series["lat_ms"]["buckets"] == [3, 4] and series["lat_ms"]["count"] == 7
    assert series["x"]["value"] == "nan" and series["y"]["value"] == "-inf"


def test_metric_series_are_capped() -> None:
    log = Log()
    log.append(TELEMETRY.name, packet("p1", *(point(f"m{i}", i, 1) for i in range(MAX_SERIES + 5))), "k1")
    s = one(tables_of(log.facts), "metrics")
    assert len(s["series"]) == MAX_SERIES and s["dropped_series"] == 5


# ---------------------------------------------------------------- dead letters


def letter(origin: str, offset: int, error_type: str = "MalformedPayloadError") -> pb.DeadLetter:
    return pb.DeadLetter(
        origin_topic=origin, origin_partition=offset % 2, origin_offset=offset, error_type=error_type, error="bad"
    )


def test_dead_letters_per_origin_topic() -> None:
    log = Log()
    for offset in (3, 4, 9):
        log.append(DEADLETTER.name, letter("leyline.compilation.requests", offset), "k")
    log.append(DEADLETTER.name, letter("leyline.control.pause", 1, "InvalidCommandError"), "k")
    log.append(DEADLETTER.name, pb.DeadLetter(error="no origin"), "k")
    table = tables_of(log.facts)["deadletters"]
    s = table["leyline.compilation.requests"]
    assert s["count"] == 3 and s["error_types"] == {"MalformedPayloadError": 3}
    assert s["partitions"] == {"0": 4, "1": 9} and s["last"]["offset"] == 9
    assert table["leyline.control.pause"]["last"]["error_type"] == "InvalidCommandError"
    assert table["unknown"]["count"] == 1


def test_error_types_are_capped() -> None:
    log = Log()
    for i in range(MAX_ERROR_TYPES + 4):
        log.append(DEADLETTER.name, letter("t", i, f"E{i}"), "k")
    s = one(tables_of(log.facts), "deadletters")
    assert len(s["error_types"]) == MAX_ERROR_TYPES + 1 and s["error_types"]["other"] == 4


# ---------------------------------------------------------------- the fold, repeats, the window


def test_fold_reports_what_changed_and_a_repeat_changes_nothing() -> None:
    log = Log()
    first = log.safety(transition(1, 2, 1))
    tables: Tables = {}
    assert fold(tables, first) == [("breakers", "kasmina/k1/compile")]
    before = json.dumps(tables, sort_keys=True)
    assert fold(tables, log.redeliver(first)) == []
    assert json.dumps(tables, sort_keys=True) == before


def test_a_repeat_is_recognised_within_the_window_and_not_beyond() -> None:
    log = Log()
    first = log.safety(pb.PauseEntered(instance_id="k1", slot_id="a"))
    for _ in range(SEEN_WINDOW - 2):
        log.safety(pb.PauseExited(instance_id="k1", slot_id="a"))
    inside = fold_all([*log.facts, log.redeliver(first)])["pauses"]["k1"]
    assert inside["slots"]["a"]["pauses"] == 1
    log.safety(pb.PauseExited(instance_id="k1", slot_id="a"))
    log.safety(pb.PauseExited(instance_id="k1", slot_id="a"))
    beyond = fold_all([*log.facts, log.redeliver(first)])["pauses"]["k1"]
    assert beyond["slots"]["a"]["pauses"] == 2  # SEEN_WINDOW events later, the first copy is forgotten
    assert len(beyond["seen"]["leyline.safety:" + str(first.partition)]) == SEEN_WINDOW


def test_facts_no_projection_reads_change_nothing() -> None:
    log = Log()
    log.append(CONTROL_PAUSE.name, pb.PauseCommand(command_id="c", target_instance="k1"), "k1")
    log.safety(None)  # a bare safety event
    log.safety(pb.TimingViolation(operation="step", actual_ms=9))
    log.append(COMPILATION_RESULTS.name, pb.CompilationResult(blueprint_id=""), "")
    assert all(table == {} for table in tables_of(log.facts).values())
    assert all(routes(f) == [] for f in log.facts)


def test_apply_ignores_facts_of_other_topics_and_the_registry_is_complete() -> None:
    log = Log()
    fact = log.safety(transition(1, 2, 1))
    assert PROJECTIONS_BY_NAME["metrics"].apply(None, fact) is None
    assert PROJECTIONS_BY_NAME["breakers"].apply(None, fact) is not None
    assert {p.name for p in PROJECTIONS} == {
        "breakers",
        "conservative",
        "pauses",
        "seeds",
        "compilations",
        "blueprints",
        "metrics",
        "deadletters",
    }
