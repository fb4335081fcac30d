"""Injectable monotonic clocks in milliseconds: production reads time.monotonic_ns, tests advance a manual one."""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "monotonic_ms"]


class Clock(Protocol):
    """A source of monotonic time in milliseconds (float, so sub-millisecond durations survive)."""

    def __call__(self) -> float: ...


def monotonic_ms() -> float:
    """The process's monotonic clock in milliseconds."""
    return time.monotonic_ns() / 1_000_000


class ManualClock:
    """A clock that only moves when told to: makes every time-dependent rule testable without sleeping."""

    def __init__(self, start_ms: float = 0.0) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, ms: float) -> float:
        with self._lock:
            self._now += ms
            return self._now

    def set(self, now_ms: float) -> None:
        with self._lock:
            self._now = now_ms
