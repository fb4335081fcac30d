"""Breaker overhead per call when closed: against the bare call, against pybreaker, and under 8-thread contention."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pybreaker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, per_call_ns, print_table, ratio_row

from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig

CALLS = 50_000
THREADS = 8


def work() -> int:
    return 1


def contended_ns(fn: object, threads: int, calls: int) -> float:
    """Wall time per call with `threads` threads calling fn concurrently."""
    barrier = threading.Barrier(threads + 1)

    def loop() -> None:
        barrier.wait()
        for _ in range(calls):
            fn()  # type: ignore[operator]

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for t in pool:
        t.join()
    return (time.perf_counter_ns() - start) / (threads * calls)


def run() -> list[Row]:
    ours = CircuitBreaker("bench", CircuitBreakerConfig())
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    bare = per_call_ns(work, CALLS)
    closed = per_call_ns(lambda: ours.call(work), CALLS)
    pyb = per_call_ns(lambda: theirs.call(work), CALLS)
    per_thread = CALLS // THREADS
    bare_8 = contended_ns(work, THREADS, per_thread)
    ours_8 = contended_ns(lambda: ours.call(work), THREADS, per_thread)
    pyb_8 = contended_ns(lambda: theirs.call(work), THREADS, per_thread)
    return [
        Row("bare call", bare, "ns/call"),
        ratio_row("breaker.call, closed", closed, "ns/call", "bare call", bare),
        Row("breaker overhead, closed", closed - bare, "ns/call"),
        ratio_row("pybreaker.call, closed", pyb, "ns/call", "esper breaker", closed),
        ratio_row(f"breaker.call, {THREADS} threads", ours_8, "ns/call", f"bare, {THREADS} threads", bare_8),
        ratio_row(f"pybreaker.call, {THREADS} threads", pyb_8, "ns/call", f"esper, {THREADS} threads", ours_8),
    ]


if __name__ == "__main__":
    print_table(run(), "circuit breaker")
