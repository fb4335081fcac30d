"""Typed errors of Kasmina's safety layer: every failure a caller can act on has its own class."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CallNotPermittedError",
    "CheckpointOverheadError",
    "ConfigError",
    "IllegalTransitionError",
    "InvalidCommandError",
    "InvalidPauseError",
    "NotPausedError",
    "OutboxLockedError",
    "PauseRefusedError",
    "RecompilationLimitError",
    "SafetyError",
    "TeacherMemoryExceededError",
    "UnknownBreakerError",
]


class SafetyError(Exception):
    """Base of every error raised by esper.safety."""


class CallNotPermittedError(SafetyError):
    """A breaker rejected the call (OPEN, FORCED_OPEN, or HALF_OPEN with no permit left); the call did not run."""

    def __init__(self, breaker: str, state: str) -> None:
        super().__init__(f"circuit breaker {breaker!r} is {state}: call not permitted")
        self.breaker = breaker
        self.state = state


class UnknownBreakerError(SafetyError, KeyError):
    """The registry holds no breaker of that name."""


class ConfigError(SafetyError):
    """A configuration violates one or more rules; `violations` lists every one of them."""

    def __init__(self, config_name: str, violations: Sequence[str]) -> None:
        self.config_name = config_name
        self.violations = tuple(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"invalid {config_name} ({len(self.violations)} violation(s)):\n{lines}")


class IllegalTransitionError(SafetyError):
    """A seed-lifecycle transition that the lifecycle does not allow, or whose gate failed."""

    def __init__(self, slot_id: str, from_stage: str, to_stage: str, reason: str) -> None:
        super().__init__(f"slot {slot_id!r}: {from_stage} -> {to_stage} refused: {reason}")
        self.slot_id = slot_id
        self.from_stage = from_stage
        self.to_stage = to_stage
        self.reason = reason


class PauseRefusedError(SafetyError):
    """A pause could not be entered (no quota left, or pause semantics are disabled)."""


class InvalidPauseError(SafetyError, ValueError):
    """A pause asked with values out of range (a quota or maximum duration that is not positive)."""


class NotPausedError(SafetyError):
    """The identity kernel was asked for outside a pause."""


class RecompilationLimitError(SafetyError, RuntimeError):
    """A compiled module recompiled more often than `max_recompilations` allows (recorded by the breaker)."""


class CheckpointOverheadError(SafetyError, RuntimeError):
    """Activation checkpointing costs more than the critical 30% overhead (recorded by the breaker)."""


class TeacherMemoryExceededError(SafetyError, MemoryError):
    """The teacher model's memory is above its limit (recorded by the breaker)."""


class InvalidCommandError(SafetyError):
    """A control command that cannot be applied (unknown action, no target, unknown slot): it is dead-lettered."""


class OutboxLockedError(SafetyError):
    """Another process holds this safety-event outbox (two clients of one Kasmina instance on one machine)."""
