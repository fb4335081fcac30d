"""Prometheus metrics of the projections: gauges computed from the projection tables alone.

`samples(tables)` is a pure function from the reducers' JSON states to every series' value; `ProjectionMetrics`
holds the latest result in a registry of its own (never prometheus_client's global one) and `update(tables)`
replaces it whole. Series are sorted by their labels, so the live app and a replay of the same log, whatever order
their tables iterate in, give the same exposition byte for byte. An entity that left the tables leaves the
exposition with the next update (a labelled Gauge would keep its last value for ever).

Breaker states use one numbering everywhere: leyline CircuitState (CLOSED=1, OPEN=2, HALF_OPEN=3, ...), as
esper.proto.enums.CircuitState and Tezzeret's tezzeret_circuit_breaker_state; a breaker whose state is unspecified
or a number our schema lacks is left out rather than exported under a number no panel knows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from esper.proto.enums import CircuitState, SeedStage

__all__ = ["METRICS", "MetricSpec", "ProjectionMetrics", "Samples", "samples"]

Labels = tuple[str, ...]
Samples = dict[str, dict[Labels, float]]  # metric name -> label values -> value
Tables = Mapping[str, Mapping[str, Mapping[str, Any]]]  # table -> entity key -> state (the reducers' JSON)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    labels: Labels


_P = "esper_projection_"
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(_P + "entities", "Entities in each projection table", ("table",)),
    MetricSpec(
        _P + "breaker_state",
        "Circuit breaker state by (subsystem, source, breaker): leyline CircuitState (1 CLOSED, 2 OPEN, "
        "3 HALF_OPEN, 4 FORCED_OPEN, 5 DISABLED, 6 METRICS_ONLY)",
        ("subsystem", "source", "breaker"),
    ),
    MetricSpec(_P + "breaker_failures", "Breaker failures in the log", ("subsystem", "source", "breaker")),
    MetricSpec(_P + "breaker_transitions", "Breaker state changes in the log", ("subsystem", "source", "breaker")),
    MetricSpec(
        _P + "conservative_mode_active", "1 while a service is in conservative mode, else 0", ("service", "source")
    ),
    MetricSpec(_P + "pauses_active", "Slots paused now, per Kasmina instance", ("instance",)),
    MetricSpec(_P + "pause_quota_remaining_ms", "Pause quota left, per Kasmina instance", ("instance",)),
    MetricSpec(_P + "pause_quota_max_ms", "Pause quota per period, per Kasmina instance", ("instance",)),
    MetricSpec(_P + "seeds", "Seed slots by lifecycle stage (leyline SeedStage name)", ("stage",)),
    MetricSpec(_P + "compilations", "Compilation requests by status (pending, done, failed)", ("status",)),
    MetricSpec(
        _P + "compile_outcomes",
        "Settled compilation requests by outcome (success or a leyline FailureReason name), tier and cache level",
        ("outcome", "tier", "cache_level"),
    ),
    MetricSpec(_P + "dead_letters", "Dead letters per origin topic", ("origin_topic",)),
)
_STATUSES = ("pending", "done", "failed")
_KNOWN_BREAKER_STATES = frozenset(int(s) for s in CircuitState)
_NONE = "none"  # the label value for a field the state leaves empty (a failure has no cache level)


def samples(tables: Tables) -> Samples:
    """Every series' value from the projection tables (missing tables count as empty). Pure; the result's series
    are in label order."""
    out: Samples = {m.name: {} for m in METRICS}

    def put(name: str, labels: Labels, value: float) -> None:
        out[name][labels] = value

    def add(name: str, labels: Labels, value: float = 1.0) -> None:
        out[name][labels] = out[name].get(labels, 0.0) + value

    def table(name: str) -> Iterator[Mapping[str, Any]]:
        return iter(tables.get(name, {}).values())

    for name in sorted(tables):
        put(_P + "entities", (name,), float(len(tables[name])))
    for b in table("breakers"):
        where = (b["subsystem"], b["source_id"], b["breaker"])
        if b["state_number"] in _KNOWN_BREAKER_STATES:
            put(_P + "breaker_state", where, float(b["state_number"]))
        put(_P + "breaker_failures", where, float(b["failures"]))
        put(_P + "breaker_transitions", where, float(b["transitions"]))
    for c in table("conservative"):
        put(_P + "conservative_mode_active", (c["service"], c["source_id"]), 1.0 if c["active"] else 0.0)
    for p in table("pauses"):
        instance = (p["instance_id"],)
        put(_P + "pauses_active", instance, float(p["paused_slots"]))
        if p["quota"] is not None:
            put(_P + "pause_quota_remaining_ms", instance, float(p["quota"]["remaining"]))
            put(_P + "pause_quota_max_ms", instance, float(p["quota"]["max_quota"]))
    for stage in SeedStage:  # every stage from zero, so a panel sees a stage before its first seed
        put(_P + "seeds", (stage.name,), 0.0)
    for s in table("seeds"):
        add(_P + "seeds", (s["stage"],))
    for status in _STATUSES:
        put(_P + "compilations", (status,), 0.0)
    for r in table("compilations"):
        add(_P + "compilations", (r["status"],))
        if r["status"] != "pending":
            outcome = "success" if r["status"] == "done" else r["failure_reason"] or _NONE
            add(_P + "compile_outcomes", (outcome, r["strategy"] or _NONE, r["cache_level"] or _NONE))
    for d in table("deadletters"):
        put(_P + "dead_letters", (d["origin_topic"],), float(d["count"]))
    return {name: dict(sorted(series.items())) for name, series in out.items()}


class _Snapshot(Collector):
    """Yields the last computed samples; `current` is replaced whole, so a scrape never sees half an update."""

    def __init__(self) -> None:
        self.current: Samples = samples({})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.current
        for spec in METRICS:
            family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
            for labels, value in current[spec.name].items():
                family.add_metric(list(labels), value)
            yield family


class ProjectionMetrics:
    """The projections' metrics over one registry (a new one unless given); `exposition()` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def update(self, tables: Tables) -> None:
        """Recompute every series from `tables` (table name -> entity key -> state), replacing the previous ones."""
        self._snapshot.current = samples(tables)

    @property
    def current(self) -> Samples:
        """The series the last update computed."""
        return self._snapshot.current

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (CONTENT_TYPE_LATEST is its type)."""
        return generate_latest(self.registry)
