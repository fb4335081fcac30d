"""A test double kept out of the wheel: an event sink that remembers."""

from __future__ import annotations

import threading

from esper.proto import leyline_pb2 as pb
from esper.safety.events import detail_kind

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps every event in memory (thread-safe): for tests and in-process inspection."""

    def __init__(self) -> None:
        self._events: list[pb.SafetyEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: pb.SafetyEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[pb.SafetyEvent]:
        with self._lock:
            return list(self._events)

    def of_kind(self, kind: str) -> list[pb.SafetyEvent]:
        return [e for e in self.events if detail_kind(e) == kind]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
