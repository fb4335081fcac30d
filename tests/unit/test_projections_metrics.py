"""The projections' Prometheus metrics, over tables the real reducers fold from events of the real controllers, and
the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from esper.compiler.conservative import ConservativeModeController
from esper.compiler.service.metrics import TezzeretMetrics
from esper.projections.facts import Fact
from esper.projections.metrics import METRICS, ProjectionMetrics, samples
from esper.projections.reducers import Tables, fold, fold_all
from esper.projections.store import RocksTables
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CircuitState, SeedStage
from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig
from esper.safety.clock import ManualClock
from esper.safety.pause import PauseController, PauseQuota
from esper.streams.topics import AUDIT, COMPILATION_REQUESTS, COMPILATION_RESULTS, DEADLETTER, SAFETY
from tests.projection_facts import Log
from tests.sinks import MemorySink

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "esper-projections.json"


def scraped(metrics: ProjectionMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The exposition parsed back: metric -> sorted label pairs -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def mixed_log() -> Log:
    """A log with every projection the metrics read: a Kasmina breaker opened by a real breaker, a Tezzeret one,
    conservative mode from the real controller, pauses and a quota from the real controllers, seeds, compilations
    settled three ways and one pending, dead letters from two origins."""
    log, clock, sink = Log(), ManualClock(), MemorySink()
    breaker = CircuitBreaker(
        "graft", CircuitBreakerConfig(failure_threshold=2, timeout_ms=1000), clock=clock, sink=sink, source_id="k1"
    )
    for _ in range(2):
        with pytest.raises(RuntimeError):
            breaker.call(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert breaker.state is CircuitState.OPEN
    ConservativeModeController(clock=clock, sink=sink, source_id="t1").observe_breaker("compile", CircuitState.OPEN)
    quota = PauseQuota(clock=clock, sink=sink, source_id="k1")
    granted = quota.request_pause_quota(300).granted
    assert PauseController("k1", "slot-a", clock=clock, sink=sink).enter_pause_with_identity_kernel(
        "operator", quota_ms=granted
    )
    b = PauseController("k1", "slot-b", clock=clock, sink=sink)
    assert b.enter_pause_with_identity_kernel("operator", quota_ms=granted)
    assert b.exit_pause(command_id="c2")
    for e in sink.events:
        log.event(e)
    tezzeret = pb.BreakerStats(name="compile", state=pb.CIRCUIT_HALF_OPEN, state_transition_count=2)
    log.safety(
        pb.BreakerTransition(stats=tezzeret, from_state=pb.CIRCUIT_OPEN, to_state=pb.CIRCUIT_HALF_OPEN),
        subsystem="tezzeret",
        source_id="t1",
    )
    for slot, to in (("s1", pb.SEED_GERMINATED), ("s2", pb.SEED_GERMINATED), ("s3", pb.SEED_TRAINING)):
        log.safety(pb.SeedTransition(instance_id="k1", slot_id=slot, from_stage=pb.SEED_DORMANT, to_stage=to))
    for rid, success, reason, cache in (
        ("r1", True, pb.FAILURE_REASON_UNSPECIFIED, pb.CACHE_L1),
        ("r2", True, pb.FAILURE_REASON_UNSPECIFIED, pb.CACHE_L1),
        ("r3", False, pb.FAILURE_TIMEOUT, pb.CACHE_LEVEL_UNSPECIFIED),
    ):
        log.append(COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id=rid, blueprint_id="bp1"), "bp1")
        result = pb.CompilationResult(
            request_id=rid,
            blueprint_id="bp1",
            success=success,
            strategy=pb.STRATEGY_FAST,
            failure_reason=reason,
            cache_level=cache,
        )
        log.append(COMPILATION_RESULTS.name, result, "bp1")
    log.append(COMPILATION_REQUESTS.name, pb.CompilationRequest(request_id="r4", blueprint_id="bp2"), "bp2")
    rejected = pb.AuditRecord(request_id="r5", success=False, failure_reason=pb.FAILURE_UNAUTHORIZED)
    log.append(AUDIT.name, rejected, "r5")  # settled by its audit alone: no tier, no cache level
    for origin, offset in ((SAFETY.name, 3), (SAFETY.name, 4), (COMPILATION_REQUESTS.name, 9)):
        log.append(DEADLETTER.name, pb.DeadLetter(origin_topic=origin, origin_offset=offset, error_type="X"), origin)
    return log


def test_every_projection_becomes_its_gauges() -> None:
    metrics = ProjectionMetrics()
    metrics.update(fold_all(mixed_log().facts))
    got = scraped(metrics)
    kasmina = (("breaker", "graft"), ("source", "k1"), ("subsystem", "kasmina"))
    tezzeret = (("breaker", "compile"), ("source", "t1"), ("subsystem", "tezzeret"))
    assert got["esper_projection_breaker_state"] == {kasmina: CircuitState.OPEN, tezzeret: CircuitState.HALF_OPEN}
    assert got["esper_projection_breaker_failures"] == {kasmina: 2, tezzeret: 0}
    assert got["esper_projection_breaker_transitions"] == {kasmina: 1, tezzeret: 1}
    assert got["esper_projection_conservative_mode_active"] == {(("service", "tezzeret"), ("source", "t1")): 1}
    assert got["esper_projection_pauses_active"] == {(("instance", "k1"),): 1}
    assert got["esper_projection_pause_quota_max_ms"][(("instance", "k1"),)] > 0
    remaining = got["esper_projection_pause_quota_remaining_ms"][(("instance", "k1"),)]
    assert remaining == got["esper_projection_pause_quota_max_ms"][(("instance", "k1"),)] - 300
    seeds = {labels[0][1]: v for labels, v in got["esper_projection_seeds"].items()}
    assert seeds == {**{s.name: 0 for s in SeedStage}, "GERMINATED": 2, "TRAINING": 1}
    assert got["esper_projection_compilations"] == {
        (("status", "done"),): 2,
        (("status", "failed"),): 2,
        (("status", "pending"),): 1,
    }
    assert got["esper_projection_compile_outcomes"] == {
        (("cache_level", "L1"), ("outcome", "success"), ("tier", "FAST")): 2,
        (("cache_level", "none"), ("outcome", "TIMEOUT"), ("tier", "FAST")): 1,
        (("cache_level", "none"), ("outcome", "UNAUTHORIZED"), ("tier", "none")): 1,
    }
    assert got["esper_projection_dead_letters"] == {
        (("origin_topic", SAFETY.name),): 2,
        (("origin_topic", COMPILATION_REQUESTS.name),): 1,
    }
    entities = {labels[0][1]: v for labels, v in got["esper_projection_entities"].items()}
    assert entities["breakers"] == 2 and entities["compilations"] == 5 and entities["seeds"] == 3


def test_the_same_log_read_in_another_order_or_from_rocksdb_gives_the_same_exposition(tmp_path: Path) -> None:
    facts = mixed_log().facts
    live = ProjectionMetrics()
    live.update(fold_all(facts))
    # Another reading: partitions interleaved differently, so every table's entities arrive in another order.
    by_partition: dict[tuple[str, int], list[Fact]] = {}
    for f in facts:
        by_partition.setdefault((f.topic, f.partition), []).append(f)
    streams = list(by_partition.values())
    random.Random(7).shuffle(streams)
    with RocksTables.create(tmp_path / "store") as store:
        tables = {name: store.table(name) for name in fold_all([])}
        for stream in streams:
            for f in stream:
                fold(tables, f)  # type: ignore[arg-type]  # a store's tables serve as the fold's dicts
        replayed = ProjectionMetrics()
        replayed.update(tables)
        assert replayed.exposition() == live.exposition()
    # The same entities inserted in the opposite order (RocksDB iterates by key, a dict by insertion).
    backwards = ProjectionMetrics()
    backwards.update({name: dict(reversed(table.items())) for name, table in fold_all(facts).items()})
    assert backwards.exposition() == live.exposition()


def test_an_update_replaces_every_series() -> None:
    metrics = ProjectionMetrics()
    metrics.update(fold_all(mixed_log().facts))
    assert metrics.current["esper_projection_breaker_state"]
    metrics.update({})
    got = scraped(metrics)
    assert "esper_projection_breaker_state" not in got and "esper_projection_dead_letters" not in got
    assert got["esper_projection_compilations"] == {(("status", s),): 0 for s in ("done", "failed", "pending")}


def test_unspecified_and_unknown_breaker_states_are_not_exported() -> None:
    log = Log()
    for name, state in (("a", 0), ("b", 99), ("c", pb.CIRCUIT_FORCED_OPEN)):
        log.safety(pb.BreakerFailure(stats=pb.BreakerStats(name=name, state=state)))  # type: ignore[arg-type]
    states = samples(fold_all(log.facts))["esper_projection_breaker_state"]
    assert states == {("kasmina", "k1", "c"): float(CircuitState.FORCED_OPEN)}
    assert len(samples(fold_all(log.facts))["esper_projection_breaker_failures"]) == 3


def test_registries_are_separate() -> None:
    a, b = ProjectionMetrics(), ProjectionMetrics()
    a.update(fold_all(mixed_log().facts))
    assert b"esper_projection_breaker_state{" in a.exposition()
    assert b"esper_projection_breaker_state{" not in b.exposition()


# ---------------------------------------------------------------- the Grafana dashboard


def _known_metric_names() -> set[str]:
    tables: Tables = fold_all(mixed_log().facts)
    projections = ProjectionMetrics()
    projections.update(tables)
    tezzeret = TezzeretMetrics()
    tezzeret.set_cache_hit_rates({"L1": 0.5})  # a labelled gauge exports no series before its first value
    names = set()
    for registry in (projections.registry, tezzeret.registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
    return names


def _exprs(dashboard: dict[str, object]) -> list[str]:
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            expr = value.get("expr")
            if isinstance(expr, str):
                found.append(expr)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(dashboard)
    return found


def test_the_grafana_dashboard_reads_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    exprs = _exprs(dashboard)
    assert exprs
    known = _known_metric_names()
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\b(?:esper_projection|tezzeret)_[a-z0-9_]+", expr))
        assert names, f"{expr!r} names no Esper metric"
        assert names <= known, f"{expr!r} names {sorted(names - known)}, which no metrics class exports"
        used |= names
    assert {m.name for m in METRICS} <= used, "a projection metric has no panel"
    for tezzeret in (
        "tezzeret_compilation_duration_ms_bucket",
        "tezzeret_cache_hit_rate",
        "tezzeret_queue_depth",
        "tezzeret_conservative_mode_active",
    ):
        assert tezzeret in used
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
