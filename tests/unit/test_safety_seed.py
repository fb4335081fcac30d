"""Seed slots: lifecycle and gates, gradient isolation while training, blending, pause, culling, and no recompiles
of a compiled host when a slot changes behaviour."""

from __future__ import annotations

import copy
import itertools
import math
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from esper.proto import leyline_pb2 as pb
from esper.safety.breaker import CircuitBreaker, CircuitBreakerConfig
from esper.safety.clock import ManualClock
from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.exceptions import IllegalTransitionError
from esper.safety.seed import SeedMetrics, SeedSlot, SeedStage, alpha_at, decide
from tests.sinks import MemorySink

S = SeedStage
CFG = GraftingConfig(fixed_steps=4, stabilization_epochs=2, embargo_duration=3)


class Host(nn.Module):
    def __init__(self, slot: nn.Module | None) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.slot = slot if slot is not None else nn.Identity()
        self.b = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.slot(torch.relu(self.a(x))))


def twin_hosts(slot: SeedSlot) -> tuple[Host, Host]:
    """The same host twice, with the same weights: without the slot (a plain identity there) and with it."""
    plain, with_slot = Host(None), Host(slot)
    with_slot.a.load_state_dict(plain.a.state_dict())
    with_slot.b.load_state_dict(plain.b.state_dict())
    return plain, with_slot


def make_slot(sink: MemorySink | None = None, clock: ManualClock | None = None, **kw: object) -> SeedSlot:
    torch.manual_seed(1)
    return SeedSlot(
        "s0",
        nn.Linear(16, 16),
        instance_id="k1",
        config=CFG,
        sink=sink,
        clock=clock or ManualClock(),
        **kw,  # type: ignore[arg-type]
    )


def to_training(slot: SeedSlot) -> None:
    slot.germinate(example=torch.randn(2, 16))
    slot.transition(S.TRAINING)


def to_blending(slot: SeedSlot) -> None:
    to_training(slot)
    for _ in range(CFG.stabilization_epochs):
        slot.advance()
    slot.transition(S.BLENDING)


def to_full_blend(slot: SeedSlot) -> None:
    """Blending, with alpha ramped all the way to 1 (fixed_steps steps)."""
    to_blending(slot)
    for _ in range(CFG.fixed_steps):
        slot.advance()


def test_decide_follows_the_lifecycle_and_gates() -> None:
    m = SeedMetrics()
    assert decide(S.DORMANT, S.GERMINATED, m, CFG).gate == "G0"
    assert not decide(S.DORMANT, S.BLENDING, m, CFG).allowed
    assert not decide(S.DORMANT, S.GERMINATED, SeedMetrics(shape_ok=False), CFG).allowed
    assert not decide(S.TRAINING, S.BLENDING, SeedMetrics(steps_in_stage=1), CFG).allowed
    assert decide(S.TRAINING, S.BLENDING, SeedMetrics(steps_in_stage=2), CFG).allowed
    assert not decide(S.BLENDING, S.SHADOWING, SeedMetrics(alpha=0.9), CFG).allowed
    assert not decide(S.SHADOWING, S.PROBATIONARY, SeedMetrics(improvement=0.0), CFG).allowed
    assert decide(S.PROBATIONARY, S.FOSSILIZED, SeedMetrics(improvement=0.01), CFG).gate == "G4"
    assert not decide(S.EMBARGOED, S.RESETTING, SeedMetrics(steps_in_stage=2), CFG).allowed
    for stage in (S.GERMINATED, S.TRAINING, S.BLENDING, S.SHADOWING, S.PROBATIONARY):
        assert decide(stage, S.CULLED, m, CFG).allowed
    assert not decide(S.FOSSILIZED, S.CULLED, m, CFG).allowed
    assert not decide(S.TERMINATED, S.DORMANT, m, CFG).allowed


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_alpha_schedules_ramp_from_0_to_1_monotonically(schedule: str) -> None:
    cfg = GraftingConfig(fixed_steps=10, alpha_schedule=schedule, isolation_temperature=0.5)  # type: ignore[arg-type]
    values = [alpha_at(i, cfg) for i in range(12)]
    assert values[0] == pytest.approx(0.0, abs=1e-9) and values[10] == values[11] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_isolation_temperature_tempers_every_schedule(schedule: str) -> None:
    def alphas(temperature: float) -> list[float]:
        cfg = GraftingConfig(fixed_steps=10, alpha_schedule=schedule, isolation_temperature=temperature)  # type: ignore[arg-type]
        return [alpha_at(i, cfg) for i in range(11)]

    plain, cold, hot = alphas(1.0), alphas(0.25), alphas(4.0)
    if schedule == "linear":
        assert plain == pytest.approx([i / 10 for i in range(11)])
    if schedule == "cosine":
        assert plain == pytest.approx([0.5 * (1 - math.cos(math.pi * i / 10)) for i in range(11)])
    for i in range(1, 5):  # before the midpoint a cold blend keeps the seed out longer, a hot one brings it in
        assert cold[i] < plain[i] < hot[i]
        assert cold[10 - i] > plain[10 - i] > hot[10 - i]  # and the mirror image after it
    for values in (cold, hot):
        assert values[0] == 0.0 and values[5] == pytest.approx(0.5) and values[10] == 1.0
        assert all(a <= b for a, b in itertools.pairwise(values))
        assert all(values[i] + values[10 - i] == pytest.approx(1.0) for i in range(11))


def test_illegal_transition_is_a_typed_error_and_an_event() -> None:
    sink = MemorySink()
    slot = make_slot(sink)
    with pytest.raises(IllegalTransitionError) as info:
        slot.transition(S.BLENDING)
    assert (info.value.from_stage, info.value.to_stage) == ("DORMANT", "BLENDING")
    (e,) = sink.of_kind("seed_transition")
    assert e.severity == pb.TELEMETRY_ERROR and "refused" in e.seed_transition.reason
    assert slot.stage is S.DORMANT


def test_full_lifecycle_emits_every_transition() -> None:
    sink = MemorySink()
    slot = make_slot(sink)
    to_full_blend(slot)
    slot.transition(S.SHADOWING)
    slot.transition(S.PROBATIONARY, improvement=0.01)
    slot.transition(S.FOSSILIZED, improvement=0.01)
    stages = [(e.seed_transition.from_stage, e.seed_transition.to_stage) for e in sink.of_kind("seed_transition")]
    assert stages == [
        (pb.SEED_DORMANT, pb.SEED_GERMINATED),
        (pb.SEED_GERMINATED, pb.SEED_TRAINING),
        (pb.SEED_TRAINING, pb.SEED_BLENDING),
        (pb.SEED_BLENDING, pb.SEED_SHADOWING),
        (pb.SEED_SHADOWING, pb.SEED_PROBATIONARY),
        (pb.SEED_PROBATIONARY, pb.SEED_FOSSILIZED),
    ]
    assert [e.seed_transition.gate for e in sink.of_kind("seed_transition")] == ["G0", "G1", "G2", "G3", "G4", "G4"]


def test_failed_performance_gate_culls_then_embargo_and_reset() -> None:
    sink = MemorySink()
    slot = make_slot(sink)
    to_full_blend(slot)
    slot.transition(S.SHADOWING)
    with pytest.raises(IllegalTransitionError):
        slot.transition(S.PROBATIONARY, improvement=-0.5)
    assert slot.stage is S.EMBARGOED
    with pytest.raises(IllegalTransitionError):
        slot.reset()  # embargo not served
    for _ in range(CFG.embargo_duration):
        slot.advance()
    slot.reset()
    assert slot.stage is S.DORMANT
    applied = [e for e in sink.of_kind("seed_transition") if not e.seed_transition.reason.startswith("refused")]
    tail = [e.seed_transition.to_stage for e in applied][-3:]
    assert tail == [pb.SEED_EMBARGOED, pb.SEED_RESETTING, pb.SEED_DORMANT]


def test_breaker_opening_culls_an_active_seed() -> None:
    slot = make_slot()
    breaker = CircuitBreaker("gradient_isolation", CircuitBreakerConfig(failure_threshold=1), clock=ManualClock())
    slot.watch(breaker)
    to_training(slot)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    assert slot.stage is S.EMBARGOED


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_training_seed_changes_neither_host_output_nor_host_gradients_but_learns() -> None:
    torch.manual_seed(0)
    slot = make_slot()
    plain, with_slot = twin_hosts(slot)
    to_training(slot)
    x = torch.randn(5, 8).to(memory_format=torch.contiguous_format)
    out_plain, out_slot = plain(x), with_slot(x)
    assert torch.equal(out_plain, out_slot)
    out_plain.pow(2).sum().backward()
    out_slot.pow(2).sum().backward()
    g_plain, g_slot = grads(plain), grads(with_slot)
    for name in ("a.weight", "a.bias", "b.weight", "b.bias"):
        assert torch.equal(g_plain[name], g_slot[name]), name
    seed_grad = slot.seed.weight.grad
    assert seed_grad is not None and seed_grad.abs().sum() > 0  # the seed learns its local objective


def test_seed_input_is_contiguous_even_for_channels_last_activations() -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.is_contiguous())
            return x * 1.0

    slot = SeedSlot("c", Probe(), config=CFG)
    slot.germinate()
    slot.transition(S.TRAINING)
    x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    assert torch.equal(slot(x), x) and seen == [True]


def test_blending_mixes_by_alpha_and_gradients_reach_host_and_seed() -> None:
    slot = make_slot()
    host = Host(slot)
    to_blending(slot)
    for _ in range(2):
        slot.advance()
    alpha = alpha_at(2, CFG)
    assert 0 < alpha < 1
    h = torch.relu(host.a(torch.randn(3, 8))).detach().requires_grad_()
    with torch.no_grad():
        expected = (1 - alpha) * h + alpha * slot.seed(h)
    out = slot(h)
    assert torch.allclose(out, expected)
    g = torch.randn_like(out)
    out.backward(g)
    # d/dh [(1 - alpha) h + alpha (h W^T + b)] = (1 - alpha) g + alpha g W: the host gets its share through the seed
    # (a host detached from the seed path, the prototype's bug, would get only (1 - alpha) g).
    assert h.grad is not None and torch.allclose(h.grad, (1 - alpha) * g + alpha * g @ slot.seed.weight, atol=1e-6)
    assert slot.seed.weight.grad is not None and slot.seed.weight.grad.abs().sum() > 0


def test_at_full_blend_the_host_learns_through_the_seed_alone() -> None:
    slot = make_slot()
    host = Host(slot)
    to_full_blend(slot)
    assert slot.metrics().alpha == 1.0
    x = torch.randn(3, 8)
    host(x).pow(2).sum().backward()
    got = grads(host)
    # the same computation with the seed spliced in by hand: every host gradient flows through the seed
    host.zero_grad()
    host.b(slot.seed(torch.relu(host.a(x)))).pow(2).sum().backward()
    want = grads(host)
    for name in ("a.weight", "a.bias"):
        assert want[name].abs().sum() > 0 and torch.allclose(got[name], want[name], atol=1e-6), name


def _stage_then_poison(slot: SeedSlot, where: str) -> None:
    """Bring the slot to a stage where its seed does not contribute, then break the seed's weights."""
    if where == "germinated":
        slot.germinate(example=torch.randn(2, 16))
    elif where == "training":
        to_training(slot)
    elif where == "embargoed":
        to_training(slot)
        slot.cull("test")
    elif where == "paused_blending":
        to_blending(slot)
        slot.pause_enter("ops")
    elif where == "paused_fossilized":
        to_full_blend(slot)
        slot.transition(S.SHADOWING)
        slot.transition(S.PROBATIONARY, improvement=0.01)
        slot.transition(S.FOSSILIZED, improvement=0.01)
        slot.pause_enter("ops")
    with torch.no_grad():
        slot.seed.weight.fill_(float("nan"))
        slot.seed.bias.fill_(float("inf"))


@pytest.mark.parametrize(
    "where", ["dormant", "germinated", "training", "embargoed", "paused_blending", "paused_fossilized"]
)
def test_a_broken_seed_cannot_touch_the_host_where_it_does_not_contribute(where: str) -> None:
    torch.manual_seed(0)
    slot = make_slot()
    plain, host = twin_hosts(slot)
    _stage_then_poison(slot, where)
    x = torch.randn(5, 8)
    out_plain, out = plain(x), host(x)
    assert torch.equal(out, out_plain)
    out_plain.pow(2).sum().backward()
    out.pow(2).sum().backward()
    for name, g in grads(plain).items():
        assert torch.isfinite(grads(host)[name]).all() and torch.equal(grads(host)[name], g), name


def test_paused_slot_is_the_identity_and_resumes_by_itself() -> None:
    clock = ManualClock()
    sink = MemorySink()
    slot = make_slot(sink, clock, safety=ProductionSafetyConfig(max_pause_duration_ms=500))
    to_full_blend(slot)
    x = torch.randn(3, 16)
    assert not torch.equal(slot(x), x)
    assert slot.pause_enter("ops")
    assert torch.equal(slot(x), x)
    clock.advance(499)
    slot.advance()
    assert slot.is_paused
    clock.advance(1)
    slot.advance()
    assert not slot.is_paused and not torch.equal(slot(x), x)
    assert sink.of_kind("pause_exited")[0].pause_exited.cause == "expired"


def test_a_slot_counts_the_steps_its_identity_kernel_served() -> None:
    slot = make_slot()
    to_blending(slot)
    x = torch.randn(3, 16)
    slot(x)
    slot.advance()
    slot.pause_enter("ops")
    for _ in range(3):
        slot(x)
        slot(x)  # two micro-batches, one step
        slot.advance()
    slot.pause_exit()
    slot(x)
    slot.advance()
    assert slot.pause.identity_calls == 3 and slot.pause.get_pause_stats()["identity_calls"] == 3


def test_a_paused_step_counts_once_under_activation_checkpointing() -> None:
    slot = make_slot()
    to_blending(slot)
    slot.pause_enter("ops")
    x = torch.randn(3, 16, requires_grad=True)
    out = torch.utils.checkpoint.checkpoint(slot, x, use_reentrant=False)
    out.sum().backward()  # recomputes the slot's forward
    slot.advance()
    assert torch.equal(out, x) and slot.pause.identity_calls == 1


@pytest.mark.parametrize("paused", [False, True])
def test_forward_and_backward_write_nothing_into_the_slot(paused: bool) -> None:
    # no bookkeeping kernel per step, paused or not, and nothing that a recomputed forward would repeat
    slot = make_slot()
    to_blending(slot)
    if paused:
        slot.pause_enter("ops")
    versions = {name: b._version for name, b in slot.named_buffers()}
    slot(torch.randn(3, 16, requires_grad=True)).sum().backward()
    assert {name: b._version for name, b in slot.named_buffers()} == versions


def test_compiled_host_does_not_recompile_when_slots_change_behaviour() -> None:
    torch._dynamo.reset()
    slot = make_slot()
    host = Host(slot)
    compiled = torch.compile(host, backend="aot_eager")
    opt = torch.optim.SGD(host.parameters(), lr=0.01)
    x = torch.randn(4, 8)

    def step() -> torch.Tensor:
        opt.zero_grad()
        out = compiled(x)
        out.pow(2).mean().backward()
        opt.step()
        slot.advance()
        return out

    reference = Host(None)
    reference.load_state_dict({k: v for k, v in host.state_dict().items() if not k.startswith("slot.")})
    first = step()
    assert torch.allclose(first, reference(x))  # dormant: the host's own output
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    slot.germinate(state_dict=copy.deepcopy(slot.seed.state_dict()))
    slot.transition(S.TRAINING)
    for _ in range(CFG.stabilization_epochs):
        step()
    slot.transition(S.BLENDING)
    for _ in range(2):
        step()
    slot.pause_enter("ops")
    without_slot = host.b(torch.relu(host.a(x)))
    assert torch.allclose(step(), without_slot)  # identity at the slot
    assert slot.pause.identity_calls == 1
    slot.pause_exit()
    step()
    slot.cull("test")
    step()
    assert counters["stats"]["unique_graphs"] == graphs


def to_shadowing(slot: SeedSlot) -> None:
    """Fully blended and out of BLENDING: the seed contributes and a step writes nothing but the pause."""
    to_full_blend(slot)
    slot.transition(S.SHADOWING)


def acts_paused(slot: SeedSlot) -> bool:
    """Whether the slot's forward is the identity kernel (a contributing seed's output differs from its input)."""
    x = torch.randn(3, 16)
    return torch.equal(slot(x), x)


class _OtherSideInTheWindow(TorchFunctionMode):
    """At this thread's first tensor write, runs `other` in another thread and waits for it (up to half a second)
    before the write goes on: the other thread gets the window between a pause change and its buffer write."""

    def __init__(self, other: Callable[[], object]) -> None:
        super().__init__()
        self._other = threading.Thread(target=other)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func is torch.Tensor.__setitem__ and self._other.ident is None:
            self._other.start()
            self._other.join(timeout=0.5)
        return func(*args, **(kwargs or {}))

    def finish(self) -> None:
        self._other.join()


@pytest.mark.parametrize("window_of", ["listener entering", "training step expiring"])
def test_a_pause_change_racing_the_buffer_write_of_another_leaves_graph_and_state_agreeing(window_of: str) -> None:
    clock = ManualClock()
    slot = make_slot(clock=clock)
    to_shadowing(slot)

    def expire_in_a_step() -> None:
        clock.set(10)
        slot.advance()

    if window_of == "listener entering":  # the step ends the new pause before the listener's write of it
        this, other = (lambda: slot.pause_enter("ops", max_duration_ms=10)), expire_in_a_step
    else:  # the listener begins a pause before the step's write of the last one's end
        slot.pause_enter("first", max_duration_ms=10)
        this, other = expire_in_a_step, (lambda: slot.pause_enter("second", max_duration_ms=10))
    window = _OtherSideInTheWindow(other)
    with window:
        this()
    window.finish()
    assert slot.is_paused == (window_of == "training step expiring")
    assert acts_paused(slot) == slot.is_paused


def test_graph_and_pause_state_agree_after_racing_listener_and_training_threads() -> None:
    clock = ManualClock()
    slot = make_slot(clock=clock)
    to_shadowing(slot)
    rounds = 3000
    barrier = threading.Barrier(3)
    choices = random.Random(0)

    def listener() -> None:
        for _ in range(rounds):
            barrier.wait()
            r = choices.random()
            if r < 0.4:
                slot.pause_enter("ops", max_duration_ms=2)
            elif r < 0.7:
                slot.pause_exit()
            else:
                clock.advance(1)
                slot.tick()
            barrier.wait()

    def training() -> None:
        for _ in range(rounds):
            barrier.wait()
            clock.advance(1)
            slot.advance()
            barrier.wait()

    threads = [threading.Thread(target=listener), threading.Thread(target=training)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: many interleavings per round
    disagreements = 0
    try:
        for t in threads:
            t.start()
        for _ in range(rounds):
            barrier.wait()
            barrier.wait()  # both threads are done with this round
            disagreements += acts_paused(slot) != slot.is_paused
    except BaseException:
        barrier.abort()  # releases the threads
        raise
    finally:
        sys.setswitchinterval(previous)
        for t in threads:
            t.join()
    assert disagreements == 0


# -- a training seed under AMP (autocast fp16 + GradScaler) and gradient accumulation: it learns as in fp32 ------


def training_host(**slot_kw: Any) -> tuple[Host, SeedSlot]:
    """A host with a TRAINING slot, the same weights every time."""
    slot = make_slot(**slot_kw)
    torch.manual_seed(2)
    host = Host(slot)
    to_training(slot)
    return host, slot


def host_loss(host: Host, x: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        return host(x).float().pow(2).mean()


def batch() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(32, 8)


def fp32_seed_grad() -> torch.Tensor:
    host, slot = training_host()
    host_loss(host, batch(), amp=False).backward()
    assert slot.seed.weight.grad is not None
    return slot.seed.weight.grad


@pytest.mark.parametrize(("amp", "k"), [(True, 1), (False, 4), (True, 4)])
def test_a_training_seeds_gradient_under_amp_and_accumulation_is_its_fp32_gradient(amp: bool, k: int) -> None:
    # The host's loss is scaled by the GradScaler and divided by k, and unscale_ divides every gradient by the
    # scale: the seed's local loss must be weighted the same, so that it ends with the fp32 gradient of the batch.
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    host, slot = training_host(grad_scaler=scaler, accumulation_steps=k)
    optimizer = torch.optim.SGD(host.parameters(), lr=0.1)
    for micro_batch in batch().chunk(k):
        scaler.scale(host_loss(host, micro_batch, amp) / k).backward()
    scaler.unscale_(optimizer)
    # fp16 keeps 11 significant bits; the tolerance allows the rounding of two fp16 matmuls and the sums over k
    want = fp32_seed_grad()
    assert slot.seed.weight.grad is not None
    torch.testing.assert_close(slot.seed.weight.grad, want, rtol=0, atol=5e-3 * want.abs().max().item())


def test_a_training_seed_learns_under_amp_as_in_fp32() -> None:
    x = batch()

    def train(amp: bool) -> tuple[list[float], torch.amp.GradScaler]:
        """The seed's reconstruction loss on its input, before and after 20 steps."""
        scaler = torch.amp.GradScaler("cpu", enabled=amp)
        host, slot = training_host(grad_scaler=scaler)
        optimizer = torch.optim.SGD(host.parameters(), lr=0.2)

        def reconstruction() -> float:
            with torch.no_grad():
                h = torch.relu(host.a(x))
                return float((slot.seed(h) - h).pow(2).mean())

        before = reconstruction()
        for _ in range(20):
            optimizer.zero_grad()
            scaler.scale(host_loss(host, x, amp)).backward()
            scaler.step(optimizer)
            scaler.update()
            slot.advance()
        return [before, reconstruction()], scaler

    (untrained, fp32), _ = train(amp=False)
    (_, amp), scaler = train(amp=True)
    assert scaler.get_scale() == 2.0**16  # no step was skipped for an overflow: both runs took the same 20 steps
    assert fp32 < 0.5 * untrained  # the seed learned
    assert amp == pytest.approx(fp32, rel=1e-3)


def test_the_local_loss_weight_follows_scale_and_accumulation_changes_without_recompiling() -> None:
    torch._dynamo.reset()
    host, slot = training_host()
    compiled = torch.compile(host, backend="aot_eager")
    x = batch()
    scaler = torch.amp.GradScaler("cpu")

    def seed_grad(model: nn.Module) -> torch.Tensor:
        host.zero_grad()
        scaler.scale(model(x).pow(2).mean() / slot.accumulation_steps).backward()
        assert slot.seed.weight.grad is not None
        return slot.seed.weight.grad.clone()

    unscaled = seed_grad(compiled)  # the first compiled step: no scaler yet, the local loss weighs 1
    graphs = counters["stats"]["unique_graphs"]
    slot.grad_scaler = scaler  # told after the first compiled step
    for scale, k in [(2.0**16, 1), (2.0**10, 1), (2.0**10, 4), (8.0, 2)]:
        scaler.update(scale)
        slot.accumulation_steps = k
        torch.testing.assert_close(seed_grad(compiled), unscaled * scale / k)
    assert counters["stats"]["unique_graphs"] == graphs


def test_accumulation_steps_must_be_a_positive_count() -> None:
    with pytest.raises(ValueError, match="accumulation_steps"):
        make_slot(accumulation_steps=0)
    slot = make_slot()
    with pytest.raises(ValueError, match="accumulation_steps"):
        slot.accumulation_steps = -1
    assert slot.accumulation_steps == 1
