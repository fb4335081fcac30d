"""Seed slots: the places in a host model where it may grow, with the Leyline seed lifecycle and its gates.

The lifecycle is a pure function (`decide`) of (stage, target, metrics, config); `SeedSlot` is the nn.Module that
applies it. A slot is static: its seed module is present from the start and every behaviour change (germinate,
train, blend, pause, cull) is a write into one control buffer, so a host under torch.compile never recompiles.

Forward, with x the host's activation at the slot and s = seed(copy of x):
  TRAINING   output x exactly; the seed learns a local reconstruction loss (in float32) on a detached contiguous
             copy of x, whose gradient is attached to the output's backward without touching the host's gradients;
             it is weighted as the host's loss is (`grad_scaler`'s scale / `accumulation_steps`), so the seed learns
             under AMP and gradient accumulation as in fp32;
  BLENDING.. output (1 - alpha) x + alpha s; gradients reach host and seed (alpha ramps over fixed_steps);
  paused     output x (the identity kernel), whatever the stage;
  otherwise  output x.
Only BLENDING, SHADOWING, PROBATIONARY and FOSSILIZED, unpaused, connect the seed to the host's graph: in every other
stage the seed sees a detached copy, so even NaN seed weights leave the host's output and gradients untouched.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper.proto import leyline_pb2 as pb
from esper.proto.enums import SeedStage  # the lifecycle's stages, numbered as on the wire
from esper.safety.breaker import CircuitBreaker, CircuitState, Transition
from esper.safety.clock import Clock, monotonic_ms
from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.events import EventSink, Reporter
from esper.safety.exceptions import IllegalTransitionError
from esper.safety.pause import PauseController

__all__ = [
    "ACTIVE_STAGES",
    "LIFECYCLE",
    "Decision",
    "SeedMetrics",
    "SeedSlot",
    "SeedStage",
    "alpha_at",
    "decide",
]


S = SeedStage
ACTIVE_STAGES = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.SHADOWING, S.PROBATIONARY})

# (from, to) -> the gate that guards it. Culling is possible from every active stage.
LIFECYCLE: dict[tuple[SeedStage, SeedStage], str] = {
    (S.DORMANT, S.GERMINATED): "G0",
    (S.GERMINATED, S.TRAINING): "G1",
    (S.TRAINING, S.BLENDING): "G2",
    (S.BLENDING, S.SHADOWING): "G3",
    (S.SHADOWING, S.PROBATIONARY): "G4",
    (S.PROBATIONARY, S.FOSSILIZED): "G4",
    (S.CULLED, S.EMBARGOED): "embargo",
    (S.EMBARGOED, S.RESETTING): "G5",
    (S.RESETTING, S.DORMANT): "G5",
    (S.DORMANT, S.TERMINATED): "terminate",
    (S.FOSSILIZED, S.TERMINATED): "terminate",
    **{(stage, S.CULLED): "cull" for stage in ACTIVE_STAGES},
}


@dataclass(frozen=True)
class SeedMetrics:
    """What the gates look at."""

    steps_in_stage: int = 0
    params_finite: bool = True
    shape_ok: bool = True
    alpha: float = 0.0
    improvement: float | None = None  # the performance delta the host measured with the seed (G4)


@dataclass(frozen=True)
class Decision:
    """A lifecycle verdict: allowed or not, under which gate, and why."""

    allowed: bool
    gate: str
    reason: str


def decide(stage: SeedStage, target: SeedStage, metrics: SeedMetrics, config: GraftingConfig) -> Decision:
    """Whether `stage -> target` is legal and its gate passes."""
    gate = LIFECYCLE.get((stage, target))
    if gate is None:
        return Decision(False, "", f"{stage.name} -> {target.name} is not a lifecycle transition")
    failure = _gate_failure(gate, stage, metrics, config)
    return Decision(failure is None, gate, failure or f"{gate} passed")


def _gate_failure(gate: str, stage: SeedStage, m: SeedMetrics, c: GraftingConfig) -> str | None:
    if gate == "G0":
        if not m.shape_ok:
            return "G0 sanity: the seed's output shape differs from its input's"
        return None if m.params_finite else "G0 sanity: non-finite seed parameters"
    if gate == "G1":
        return None if m.params_finite else "G1: non-finite seed parameters"
    if gate == "G2":
        if not m.params_finite:
            return "G2: non-finite seed parameters"
        if m.steps_in_stage < c.stabilization_epochs:
            return f"G2: {m.steps_in_stage} training steps < stabilization_epochs {c.stabilization_epochs}"
        return None
    if gate == "G3":
        return None if m.alpha >= 1.0 else f"G3: blending incomplete (alpha {m.alpha:.3f})"
    if gate == "G4":
        if m.improvement is None:
            return "G4: no performance measurement"
        if m.improvement < c.performance_gate:
            return f"G4: improvement {m.improvement:.4g} < performance_gate {c.performance_gate}"
        return None
    if gate == "G5" and stage is S.EMBARGOED and m.steps_in_stage < c.embargo_duration:
        return f"G5: embargo {m.steps_in_stage}/{c.embargo_duration} steps"
    return None


# The sigmoid schedule: a logistic curve of this steepness in t - 1/2, rescaled by its values at t = 0 and t = 1 so
# that it runs from exactly 0 to exactly 1 (constants: computed once, not per call).
_SIGMOID_STEEPNESS = 10.0
_SIGMOID_LO = 1 / (1 + math.exp(_SIGMOID_STEEPNESS / 2))
_SIGMOID_SPAN = 1 / (1 + math.exp(-_SIGMOID_STEEPNESS / 2)) - _SIGMOID_LO


def alpha_at(step: int, config: GraftingConfig) -> float:
    """Blend weight after `step` blending steps: 0 -> 1 over fixed_steps, exactly 1 from fixed_steps on.

    The schedule (linear, cosine, or a sigmoid of steepness 10) gives u in [0, 1]; isolation_temperature T then
    tempers it as a temperature tempers a logit: alpha = sigmoid(logit(u) / T) = u^(1/T) / (u^(1/T) + (1-u)^(1/T)).
    T = 1 is the schedule itself; T < 1 keeps the seed isolated longer and switches sharply around u = 1/2 (a step
    as T -> 0); T > 1 brings the seed in sooner and flattens the middle. Endpoints, monotony and symmetry stay."""
    t = min(1.0, max(0.0, step / config.fixed_steps))
    if t >= 1.0:
        return 1.0
    if config.alpha_schedule == "cosine":
        u = 0.5 * (1.0 - math.cos(math.pi * t))
    elif config.alpha_schedule == "sigmoid":
        u = (1 / (1 + math.exp(-_SIGMOID_STEEPNESS * (t - 0.5))) - _SIGMOID_LO) / _SIGMOID_SPAN
    else:
        u = t
    if u <= 0.0:
        return 0.0
    inv_temperature = 1 / config.isolation_temperature
    a, b = u**inv_temperature, (1 - u) ** inv_temperature
    return a / (a + b)


# Slots by handle, for the op below (a custom op is given tensors and numbers, not objects). A slot cannot be
# copied or pickled (it holds locks), so a handle names one slot for the slot's lifetime.
_SLOTS: weakref.WeakValueDictionary[int, SeedSlot] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


def _weight_now(like: torch.Tensor, slot: int) -> torch.Tensor:
    """The gradient a slot's local loss gets in this backward: its host's loss factor now (float32, on like's
    device)."""
    found = _SLOTS[slot]
    weight = torch.full((), 1 / found.accumulation_steps, dtype=torch.float32, device=like.device)
    # GradScaler.scale multiplies by its scale tensor on the device (no host sync), and is the identity disabled
    return weight if found.grad_scaler is None else found.grad_scaler.scale(weight)


# The same as an opaque op, for compiled graphs: it runs at every backward, so the scale it reads is the
# GradScaler's at that backward (update() changes it in place), never a value baked into a graph or guarded on.
_local_loss_weight = torch.library.custom_op("esper::local_loss_weight", _weight_now, mutates_args=())


@_local_loss_weight.register_fake
def _(like: torch.Tensor, slot: int) -> torch.Tensor:
    return like.new_empty((), dtype=torch.float32)


class _AttachLoss(torch.autograd.Function):
    """Returns y unchanged; in the backward it passes y's gradient through untouched and gives `loss` the gradient
    its slot's host loss gets (see `_local_loss_weight`), so the seed's local loss trains it within the host's own
    backward pass, scaled and averaged as the host's loss is."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, loss: torch.Tensor, slot: int) -> torch.Tensor:
        ctx.slot = slot
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        # Compiled, the op; eager, the function itself (the op's dispatch would cost each backward some 20 us).
        weigh = _local_loss_weight if torch.compiler.is_compiling() else _weight_now
        return grad, weigh(grad, ctx.slot), None


# Indices into the control buffer.
_TRAIN, _BLEND, _ALPHA, _PAUSED = range(4)


class SeedSlot(nn.Module):
    """One growth point in a host model: holds a seed module and drives it through the lifecycle with tensors.

    A training seed's local loss is weighted as the host's loss: tell the slot how the training loop scales it.
    `grad_scaler`: the torch.amp.GradScaler whose `scaler.scale(loss).backward()` the loop runs (its scale is read at
    each backward, on the device); `accumulation_steps`: k when the host's loss is divided by k and k micro-batches'
    gradients are accumulated before a step. With both, the local loss is multiplied by scale / k in the backward,
    and after `scaler.unscale_` the seed's gradient is its fp32 gradient of the whole batch. Either may be set at
    any time (the next backward uses it) without recompiling a compiled host."""

    seed: nn.Module
    _runner: Callable[[torch.Tensor], torch.Tensor]  # how the seed is called: itself, or its compiled form
    control: torch.Tensor
    grad_scaler: torch.amp.GradScaler | None

    def __init__(
        self,
        slot_id: str,
        seed: nn.Module,
        *,
        instance_id: str = "",
        config: GraftingConfig | None = None,
        safety: ProductionSafetyConfig | None = None,
        sink: EventSink | None = None,
        clock: Clock = monotonic_ms,
        grad_scaler: torch.amp.GradScaler | None = None,
        accumulation_steps: int = 1,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.instance_id = instance_id
        self.seed = seed
        self._set_runner(seed)
        self.config = config or GraftingConfig()
        self.grad_scaler = grad_scaler
        self.accumulation_steps = accumulation_steps
        self._handle = next(_HANDLES)
        _SLOTS[self._handle] = self
        self._report = Reporter(sink, instance_id)
        # train flag, blend flag, alpha, paused: one buffer, one in-place write per change, no recompiles
        self.register_buffer("control", torch.zeros(4))
        self.stage = SeedStage.DORMANT
        self.steps_in_stage = 0
        self._lock = threading.RLock()
        self.pause = PauseController(
            instance_id, slot_id, config=safety, clock=clock, sink=self._report.sink, on_change=self._write_paused
        )

    # -- forward (no Python state read here: everything comes from the control buffer) ---------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctl = self.control.clone()  # a snapshot: a write from another thread cannot change this step's backward
        # The seed runs in every stage (a static graph), but it is connected to the host only where it contributes
        # (blending on, not paused). Elsewhere the host's gradient is selected by torch.where, never multiplied by
        # zero: a broken seed's NaN/inf would survive 0 * NaN and poison the host.
        paused = ctl[_PAUSED] > 0
        contributes = (ctl[_BLEND] > 0) & ~paused
        seed_in = torch.where(contributes, x, x.detach()).contiguous()
        s = self._run_seed(seed_in)
        # In float32 under autocast too: its gradient is the loss scale (65536 overflows float16).
        reconstruction = (s.float() - seed_in.detach().float()).pow(2).mean()
        local_loss = torch.where(ctl[_TRAIN] > 0, reconstruction, 0.0)
        y = torch.where(contributes, torch.lerp(x, s, ctl[_ALPHA].to(s.dtype)), x)
        return _AttachLoss.apply(y, local_loss, self._handle)

    @torch.compiler.disable
    def _run_seed(self, x: torch.Tensor) -> torch.Tensor:
        """The seed behind a graph boundary: a compiled host never traces into it, so a seed grafted later (with its
        own compiled code) recompiles nothing of the host. Inside, the seed runs its own compiled graph or eager."""
        return self._runner(x)

    def _set_runner(self, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
        # Not a submodule: a compiled runner wraps the seed, whose parameters and state are the seed's alone.
        object.__setattr__(self, "_runner", runner)

    def install_seed(self, seed: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Put a new seed module into a DORMANT slot (before `germinate`), called through `runner` (its compiled
        form) or itself. The host's optimizer must be told of the new parameters."""
        with self._lock:
            if self.stage is not SeedStage.DORMANT:
                raise IllegalTransitionError(
                    self.slot_id, self.stage.name, SeedStage.GERMINATED.name, "a seed is installed in a DORMANT slot"
                )
            self.seed = seed
            self._set_runner(seed if runner is None else runner)

    @property
    def accumulation_steps(self) -> int:
        return self._accumulation_steps

    @accumulation_steps.setter
    def accumulation_steps(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {steps}")
        self._accumulation_steps = steps

    # -- lifecycle -----------------------------------------------------------------------------------------

    def metrics(self, improvement: float | None = None, example: torch.Tensor | None = None) -> SeedMetrics:
        with torch.no_grad():
            finite = all(bool(torch.isfinite(p).all()) for p in self.seed.parameters())
            shape_ok = example is None or self.seed(example).shape == example.shape
        return SeedMetrics(
            steps_in_stage=self.steps_in_stage,
            params_finite=finite,
            shape_ok=shape_ok,
            alpha=float(self.control[_ALPHA]),
            improvement=improvement,
        )

    def transition(
        self, target: SeedStage, *, improvement: float | None = None, example: torch.Tensor | None = None
    ) -> Decision:
        """Move to `target` through its gate; an illegal move or a failed gate raises IllegalTransitionError
        (and is reported). A failed G4 performance gate culls the seed instead."""
        with self._lock:
            source = self.stage
            decision = decide(source, target, self.metrics(improvement, example), self.config)
            if not decision.allowed:
                self._report_transition(
                    source, target, decision.gate, f"refused: {decision.reason}", pb.TELEMETRY_ERROR
                )
                if decision.gate == "G4":
                    self.cull(decision.reason)
                raise IllegalTransitionError(self.slot_id, source.name, target.name, decision.reason)
            self._enter(target)
        self._report_transition(source, target, decision.gate, decision.reason, pb.TELEMETRY_INFO)
        return decision

    def germinate(self, state_dict: Mapping[str, Any] | None = None, example: torch.Tensor | None = None) -> None:
        """DORMANT -> GERMINATED (G0), loading weights into the seed in place when given."""
        if state_dict is not None:
            self.seed.load_state_dict(state_dict)
        self.transition(SeedStage.GERMINATED, example=example)

    def cull(self, reason: str) -> bool:
        """Cull an active seed (-> CULLED -> EMBARGOED); False when the seed is not active."""
        with self._lock:
            source = self.stage
            if source not in ACTIVE_STAGES:
                return False
            self._enter(SeedStage.CULLED)
            self._report_transition(source, SeedStage.CULLED, "cull", reason, pb.TELEMETRY_WARN)
            self._enter(SeedStage.EMBARGOED)
        self._report_transition(SeedStage.CULLED, SeedStage.EMBARGOED, "embargo", reason, pb.TELEMETRY_INFO)
        return True

    def reset(self) -> None:
        """EMBARGOED -> RESETTING (G5: embargo served) -> DORMANT with freshly initialised seed parameters."""
        self.transition(SeedStage.RESETTING)
        with torch.no_grad():
            for module in self.seed.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
        self.transition(SeedStage.DORMANT)

    def watch(self, breaker: CircuitBreaker) -> None:
        """Cull this slot's seed when `breaker` opens."""

        def on_transition(b: CircuitBreaker, t: Transition) -> None:
            if t.to_state in (CircuitState.OPEN, CircuitState.FORCED_OPEN):
                self.cull(f"breaker {b.name} opened: {t.reason}")

        breaker.add_listener(on_transition)

    def advance(self) -> None:
        """One training step done: count it, ramp alpha while blending, end an expired pause.

        A step that ends paused counts as one identity call (`pause.identity_calls`), however many forwards it
        ran (micro-batches, recomputation under activation checkpointing); a pause entered or ended by another
        thread during the step counts by its state at the step's end."""
        with self._lock:
            self.steps_in_stage += 1
            if self.stage is SeedStage.BLENDING:
                self.control[_ALPHA] = alpha_at(self.steps_in_stage, self.config)
        # Counted here, not in the forward: in the graph a count costs every slot a kernel launch per step and is
        # repeated by recomputation (activation checkpointing). Before tick, which may end this step's pause.
        self.pause.count_step()
        self.tick()

    def _enter(self, stage: SeedStage) -> None:
        self.stage = stage
        self.steps_in_stage = 0
        blending = stage in (S.BLENDING, S.SHADOWING, S.PROBATIONARY, S.FOSSILIZED)
        alpha = 0.0 if stage is S.BLENDING or not blending else 1.0
        with torch.no_grad():
            self.control[_TRAIN] = float(stage is S.TRAINING)
            self.control[_BLEND] = float(blending)
            self.control[_ALPHA] = alpha

    def _report_transition(
        self, source: SeedStage, target: SeedStage, gate: str, reason: str, severity: pb.TelemetryLevel
    ) -> None:
        detail = pb.SeedTransition(
            instance_id=self.instance_id,
            slot_id=self.slot_id,
            from_stage=int(source),  # type: ignore[arg-type]
            to_stage=int(target),  # type: ignore[arg-type]
            gate=gate,
            reason=reason,
        )
        message = f"slot {self.slot_id}: {source.name} -> {target.name} ({reason})"
        self._report(severity, message, detail)

    # -- pause ---------------------------------------------------------------------------------------------

    @property
    def is_paused(self) -> bool:
        return self.pause.is_paused

    def pause_enter(
        self, reason: str, quota_ms: int | None = None, max_duration_ms: float | None = None, command_id: str = ""
    ) -> bool:
        """The identity kernel from the next forward on, for at most the smallest of max_duration_ms, quota_ms and
        the configured max_pause_duration_ms; False when already paused (see PauseController)."""
        return self.pause.enter_pause_with_identity_kernel(reason, quota_ms, max_duration_ms, command_id)

    def pause_exit(self, cause: str = "command", command_id: str = "") -> bool:
        return self.pause.exit_pause(cause, command_id)

    def tick(self) -> None:
        """End the pause when its maximum duration has passed (called each step and by the client)."""
        self.pause.expire_if_due()

    def _write_paused(self, paused: bool) -> None:
        # The controller calls this under its lock with each change: the buffer cannot fall behind the state
        # (written after the state's lock was released, a write from another thread could land in between).
        with torch.no_grad():
            self.control[_PAUSED] = float(paused)

    def extra_repr(self) -> str:
        return f"slot_id={self.slot_id!r}, stage={self.stage.name}"
