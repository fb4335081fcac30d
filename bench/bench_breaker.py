"""Breaker overhead per call when closed: against the bare call, against pybreaker, and under 8-thread contention.

Fairness: both breakers use the same rule (5 consecutive failures, 60 s open) and wrap the same call, sampled in
alternating rounds so that a noisy neighbour hits both alike; each figure is a median. The difference that remains
is by design: pybreaker holds its (re-entrant) lock for the whole protected call, ours only around its bookkeeping
(and not at all to admit a call while CLOSED). For a trivial call that costs pybreaker nothing; the last rows time a
call that blocks for 200 us, where holding the lock serialises every caller.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pybreaker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, print_table, ratio_row

from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig, WindowType

CALLS = 50_000
ROUNDS = 7
THREADS = 8
BLOCKING_CALLS = 40  # per thread, for the 200 us call
HOLDS = "pybreaker holds its lock during the call"


def work() -> int:
    return 1


def blocking() -> None:
    time.sleep(0.0002)


def one_thread_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def contended_ns(fn: Callable[[], object], calls: int) -> float:
    """Wall time per call with THREADS threads calling fn concurrently, `calls` each."""
    barrier = threading.Barrier(THREADS + 1)

    def loop() -> None:
        barrier.wait()
        for _ in range(calls):
            fn()

    pool = [threading.Thread(target=loop) for _ in range(THREADS)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for t in pool:
        t.join()
    return (time.perf_counter_ns() - start) / (THREADS * calls)


def medians(sample: Callable[[Callable[[], object]], float], fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median of ROUNDS samples per fn, the fns taking turns within each round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            samples[name].append(sample(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def run() -> list[Row]:
    ours = CircuitBreaker("bench", CircuitBreakerConfig())
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    # Configurations off the fast path, for scale: a time window, and a slow-call rule (a second clock read).
    timed = CircuitBreaker("time window", CircuitBreakerConfig(window_type=WindowType.TIME, window_size=60))
    slow_rule = CircuitBreaker("slow rule", CircuitBreakerConfig(slow_call_rate_threshold=50))

    one = medians(
        lambda fn: one_thread_ns(fn, CALLS),
        {
            "bare": work,
            "ours": lambda: ours.call(work),
            "theirs": lambda: theirs.call(work),
            "time window": lambda: timed.call(work),
            "slow rule": lambda: slow_rule.call(work),
        },
    )
    many = medians(
        lambda fn: contended_ns(fn, CALLS // THREADS),
        {"bare": work, "ours": lambda: ours.call(work), "theirs": lambda: theirs.call(work)},
    )
    blocked = medians(
        lambda fn: contended_ns(fn, BLOCKING_CALLS),
        {"bare": blocking, "ours": lambda: ours.call(blocking), "theirs": lambda: theirs.call(blocking)},
    )
    bare, closed = one["bare"], one["ours"]
    return [
        Row("bare call", bare, "ns/call"),
        ratio_row("breaker.call, closed", closed, "ns/call", "bare call", bare),
        Row("breaker overhead, closed", closed - bare, "ns/call"),
        ratio_row(f"pybreaker.call, closed ({HOLDS})", one["theirs"], "ns/call", "esper breaker", closed),
        ratio_row("breaker.call, closed, time window", one["time window"], "ns/call", "esper breaker", closed),
        ratio_row("breaker.call, closed, slow-call rule", one["slow rule"], "ns/call", "esper breaker", closed),
        ratio_row(
            f"breaker.call, {THREADS} threads", many["ours"], "ns/call", f"bare, {THREADS} threads", many["bare"]
        ),
        ratio_row(
            f"pybreaker.call, {THREADS} threads ({HOLDS})",
            many["theirs"],
            "ns/call",
            f"esper, {THREADS} threads",
            many["ours"],
        ),
        ratio_row(
            f"breaker.call, 200 us call, {THREADS} threads",
            blocked["ours"],
            "ns/call",
            f"bare, {THREADS} threads",
            blocked["bare"],
        ),
        ratio_row(
            f"pybreaker.call, 200 us call, {THREADS} threads ({HOLDS})",
            blocked["theirs"],
            "ns/call",
            f"esper, {THREADS} threads",
            blocked["ours"],
        ),
    ]


if __name__ == "__main__":
    print_table(run(), "circuit breaker")
