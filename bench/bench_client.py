"""The Kasmina client's cost to training and its reaction time: the step time of a small model with a seed slot
while the client publishes one packet per step, against the same loop without the client (interleaved blocks,
median ratio); what emitting one safety event costs the emitting thread (into the durable outbox: serialize and one
write(2)) against serializing it alone; and pause-command latency from produce to the identity kernel being active
(p50, p99)."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Row, per_call_ns, print_table, ratio_row
from kafka_env import bench_bootstrap

from esper.proto import leyline_pb2 as pb
from esper.safety.client import KasminaClient
from esper.safety.config import GraftingConfig
from esper.safety.events import safety_event
from esper.safety.seed import SeedSlot, SeedStage
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE

BLOCKS = 10
STEPS_PER_BLOCK = 50
PAUSE_ROUNDS = 200


def model(slot: SeedSlot) -> nn.Module:
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), slot, nn.Linear(512, 10))


def step_times(net: nn.Module, slot: SeedSlot, opt: torch.optim.Optimizer, client: KasminaClient | None) -> list[float]:
    x, y = torch.randn(128, 128), torch.randint(0, 10, (128,))
    times = []
    for _ in range(STEPS_PER_BLOCK):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        slot.advance()
        if client is not None:
            client.publish_metrics({"training_step_time_ms": (time.perf_counter() - start) * 1e3, "loss": 0.0})
        times.append(time.perf_counter() - start)
    return times


def step_overhead(servers: str) -> list[Row]:
    torch.set_num_threads(1)
    instance = f"bench-{uuid.uuid4().hex[:8]}"
    with KasminaClient(servers, instance, consume_pause=False) as client:
        slot = SeedSlot("s0", nn.Linear(512, 512), instance_id=instance, config=GraftingConfig(), sink=client)
        slot.germinate()
        slot.transition(SeedStage.TRAINING)
        net = model(slot)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        step_times(net, slot, opt, None)  # warm-up
        without: list[float] = []
        with_client: list[float] = []
        for i in range(BLOCKS):  # ABBA order so drift hits both alike
            order = (None, client) if i % 2 == 0 else (client, None)
            for c in order:
                (with_client if c is not None else without).extend(step_times(net, slot, opt, c))
        client.flush(20)
        dropped = client.stats().dropped
    a, b = statistics.median(without) * 1e3, statistics.median(with_client) * 1e3
    return [
        Row("train step, slot, no client (median)", a, "ms"),
        ratio_row("train step, slot + client 1 packet/step (median)", b, "ms", "no client", a),
        Row("client drops during the step bench", dropped, "msgs"),
    ]


def safety_emit_cost(servers: str) -> list[Row]:
    instance = f"bench-{uuid.uuid4().hex[:8]}"
    detail = pb.BreakerTransition(from_state=pb.CIRCUIT_CLOSED, to_state=pb.CIRCUIT_OPEN, reason="5 failures")
    event = safety_event(pb.TELEMETRY_WARN, "breaker opened", detail, source_id=instance)
    with KasminaClient(servers, instance, consume_pause=False) as client:
        bare = per_call_ns(event.SerializeToString, 2000)
        emit = per_call_ns(lambda: client.emit(event), 2000)
        left = client.flush(60)
    return [
        Row("safety event serialize (bare)", bare / 1e3, "us"),
        ratio_row("safety event emit (outbox write, never dropped)", emit / 1e3, "us", "serialize", bare / 1e3),
        Row("safety events undelivered after flush", left, "msgs"),
    ]


def pause_latency(servers: str) -> list[Row]:
    instance = f"bench-{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    with KasminaClient(servers, instance) as client:
        slot = SeedSlot("s0", nn.Linear(8, 8), instance_id=instance, sink=client)
        client.add_slot(slot)
        if not client.wait_ready(60):
            raise RuntimeError("pause consumer never got its partition")
        producer = LeylineProducer(servers, producer_id="bench-pause", **{"linger.ms": 0})
        for i in range(PAUSE_ROUNDS):
            action = pb.PAUSE_ENTER if i % 2 == 0 else pb.PAUSE_EXIT
            # 50 ms of the pause quota each: the 100 pauses fit the default 10 s per minute
            cmd = pb.PauseCommand(command_id=f"c{i}", action=action, target_instance=instance, quota_ms=50)
            start = time.perf_counter()
            producer.send(CONTROL_PAUSE.name, cmd, key=instance)
            producer.poll(0)
            want = action == pb.PAUSE_ENTER
            while slot.control[3].item() != float(want):  # the identity kernel's switch as forward reads it
                if time.perf_counter() - start > 5:
                    raise RuntimeError(f"pause command {i} not applied within 5 s")
                time.sleep(0.0002)
            if want:
                latencies.append((time.perf_counter() - start) * 1e3)
            producer.flush(5)
        producer.flush(5)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return [
        Row("pause produce -> identity active p50", statistics.median(ordered), "ms"),
        Row(f"pause produce -> identity active p99 (n={len(ordered)})", p99, "ms"),
    ]


def run() -> list[Row]:
    servers = bench_bootstrap()
    return step_overhead(servers) + safety_emit_cost(servers) + pause_latency(servers)


if __name__ == "__main__":
    print_table(run(), "Kasmina client")
