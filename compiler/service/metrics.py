"""Tezzeret's Prometheus metrics: the forge spec's names, set through small typed methods the service calls.

Each `TezzeretMetrics` owns its registry (not prometheus_client's global one), so several services in one process
or test never collide. Nothing is exported that was not measured: the GPU utilisation series exists only while a
GPU reading does (`tezzeret_gpu_present` says which), and a cache level's hit rate only once it is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from esper.proto.enums import CacheLevel, CircuitState, CompilationStrategy, FailureReason, RequestKind

__all__ = [
    "COMPILE_BUCKETS_MS",
    "RECOVERY_BUCKETS_MS",
    "TezzeretMetrics",
    "WalRecordType",
]

# The tiers' compile timeouts (EMERGENCY 10 s, FAST 65 s, STANDARD 250 s, AGGRESSIVE 960 s) and conservative mode's
# x1.5 of the tiers it still runs are bucket edges, so "P95 < strategy timeout" reads straight off the histogram.
COMPILE_BUCKETS_MS = (
    50.0,
    250.0,
    1_000.0,
    4_000.0,
    10_000.0,
    15_000.0,
    20_000.0,
    65_000.0,
    97_500.0,
    250_000.0,
    375_000.0,
    960_000.0,
)
# The spec's recovery target is 12 s.
RECOVERY_BUCKETS_MS = (10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 12_000.0, 30_000.0, 60_000.0)

WalRecordType = Literal["begin", "data", "commit", "abort"]
# The spec's label values for the three ways to ask (leyline.blueprints, .compilation.requests, .emergency).
_REQUEST_LABELS = {
    RequestKind.BLUEPRINT: "blueprint",
    RequestKind.COMPILATION: "request",
    RequestKind.EMERGENCY: "emergency",
}
_WAL_TYPES: tuple[str, ...] = get_args(WalRecordType)
_OUTCOMES = ("success", *(r.name for r in FailureReason))
_CACHE_LEVELS = frozenset({CacheLevel.L1.name, CacheLevel.L2.name, CacheLevel.L3.name})


class _GpuCollector(Collector):
    """tezzeret_gpu_present always; tezzeret_gpu_utilization_percent only while there is a reading."""

    def __init__(self) -> None:
        self.percent: float | None = None  # one attribute, replaced whole: readers never see half an update

    def collect(self) -> Iterator[GaugeMetricFamily]:
        percent = self.percent
        yield GaugeMetricFamily(
            "tezzeret_gpu_present",
            "1 while a GPU utilisation reading exists, else 0",
            value=0.0 if percent is None else 1.0,
        )
        if percent is not None:
            yield GaugeMetricFamily(
                "tezzeret_gpu_utilization_percent", "GPU utilisation of the device (every process's work)", percent
            )


class TezzeretMetrics:
    """The service's metrics over one registry (a new one unless given); `exposition()` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._compile = Histogram(
            "tezzeret_compilation_duration_ms",
            "Compile time by strategy, in milliseconds",
            ["strategy"],
            buckets=COMPILE_BUCKETS_MS,
            registry=r,
        )
        self._breaker = Gauge(
            "tezzeret_circuit_breaker_state",
            "Circuit breaker state by breaker: leyline CircuitState (1 CLOSED, 2 OPEN, 3 HALF_OPEN, 4 FORCED_OPEN, "
            "5 DISABLED, 6 METRICS_ONLY)",
            ["breaker"],
            registry=r,
        )
        self._conservative = Gauge(
            "tezzeret_conservative_mode_active", "1 while conservative mode is active, else 0", registry=r
        )
        self._wal = Counter("tezzeret_wal_transactions_total", "WAL records written, by type", ["type"], registry=r)
        self._gpu = _GpuCollector()
        r.register(self._gpu)
        self._concurrency = Gauge("tezzeret_concurrent_compilations", "Compiles running now", registry=r)
        self._memory = Gauge("tezzeret_memory_usage_gb", "Memory in use by the service's budget, in GiB", registry=r)
        self._cache = Gauge(
            "tezzeret_cache_hit_rate", "Cache hit rate by level, a fraction in [0, 1]", ["level"], registry=r
        )
        self._recovery = Histogram(
            "tezzeret_wal_recovery_duration_ms",
            "WAL recovery time at start, in milliseconds",
            buckets=RECOVERY_BUCKETS_MS,
            registry=r,
        )
        self._requests = Counter(
            "tezzeret_requests_total",
            "Requests settled, by kind and outcome (success or a leyline FailureReason name)",
            ["kind", "outcome"],
            registry=r,
        )
        self._queue = Gauge("tezzeret_queue_depth", "Requests waiting to be compiled", registry=r)
        self._dead_letters = Counter("tezzeret_dead_letters_total", "Records sent to the dead-letter topic", registry=r)
        # Every series of a known label value starts at zero, so rates and dashboards see it before its first event.
        for strategy in CompilationStrategy:
            self._compile.labels(strategy.name)
        for kind in _WAL_TYPES:
            self._wal.labels(kind)
        for label in _REQUEST_LABELS.values():
            for outcome in _OUTCOMES:
                self._requests.labels(label, outcome)

    def observe_compile(self, strategy: CompilationStrategy, ms: float) -> None:
        self._compile.labels(CompilationStrategy(strategy).name).observe(ms)

    def set_breaker(self, name: str, state: CircuitState) -> None:
        self._breaker.labels(name).set(int(CircuitState(state)))

    def set_conservative(self, active: bool) -> None:
        self._conservative.set(1 if active else 0)

    def wal_transaction(self, kind: WalRecordType) -> None:
        if kind not in _WAL_TYPES:
            raise ValueError(f"WAL record type {kind!r} is not one of {', '.join(_WAL_TYPES)}")
        self._wal.labels(kind).inc()

    def set_gpu(self, percent: float | None) -> None:
        """A utilisation reading in percent, or None: no GPU (the utilisation series disappears)."""
        self._gpu.percent = None if percent is None else float(percent)

    def set_concurrency(self, n: int) -> None:
        self._concurrency.set(n)

    def set_memory_gb(self, gb: float) -> None:
        self._memory.set(gb)

    def set_cache_hit_rates(self, rates: Mapping[CacheLevel | str, float]) -> None:
        """Hit rates (fractions) by level: CacheLevel.L1..L3 or their names; levels not given keep their value."""
        checked = {}
        for level, rate in rates.items():
            name = level.name if isinstance(level, CacheLevel) else level
            if name not in _CACHE_LEVELS:
                raise ValueError(f"cache level {level!r} is not one of L1, L2, L3")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"hit rate of {name} is a fraction in [0, 1], got {rate}")
            checked[name] = rate
        for name, rate in checked.items():  # all or nothing: a bad entry changes no level
            self._cache.labels(name).set(rate)

    def observe_recovery(self, ms: float) -> None:
        self._recovery.observe(ms)

    def request(self, kind: RequestKind, outcome: FailureReason | None = None) -> None:
        """One request settled: `outcome` None is a success, else why it failed."""
        self._requests.labels(
            _REQUEST_LABELS[RequestKind(kind)], "success" if outcome is None else FailureReason(outcome).name
        ).inc()

    def set_queue_depth(self, n: int) -> None:
        self._queue.set(n)

    def dead_letter(self) -> None:
        self._dead_letters.inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (the /metrics body; CONTENT_TYPE_LATEST is its type)."""
        return generate_latest(self.registry)
