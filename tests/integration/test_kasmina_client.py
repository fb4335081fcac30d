"""The Kasmina client against the real broker: telemetry from a training loop with slots, pause commands typed into
kafka-console-producer as JSON (authorised, metered by the pause quota, bad ones dead-lettered with their tokens
redacted). The outage and kill -9 cases of the safety path are in test_safety_path.py."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper.proto import leyline_pb2 as pb
from esper.safety.client import DROPPED_METRIC, KasminaClient
from esper.safety.config import GraftingConfig, ProductionSafetyConfig
from esper.safety.seed import SeedSlot, SeedStage
from esper.settings import load_settings
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.local.kafka_dist import KafkaDistribution
from esper.streams.topics import CONTROL_PAUSE, SAFETY, TELEMETRY
from tests.polling import wait_for

pytestmark = pytest.mark.broker

CFG = GraftingConfig(fixed_steps=3, stabilization_epochs=1)
# 150 s of pause per hour (no reset during a test, however slow the console producer), pauses of up to 10 minutes
SAFETY_CFG = ProductionSafetyConfig(
    max_pause_quota=150_000, pause_quota_reset_interval_ms=3_600_000, max_pause_duration_ms=600_000
)
TOKEN = "ops-token"


class Host(nn.Module):
    def __init__(self, slot: SeedSlot) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.slot = slot
        self.b = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.slot(torch.relu(self.a(x))))


def read_back(bootstrap: str, topic: str, keep: Callable[[Record], bool], want: int, timeout_s: float = 30.0) -> list:
    consumer = LeylineConsumer(bootstrap, f"test-readback-{uuid.uuid4().hex[:8]}", [topic], from_beginning=True)
    found: list = []
    try:
        wait_for(
            lambda: (
                (
                    bool(consumer.poll_once(lambda r: found.append(r.message) if keep(r) else None, 0.2))
                    and len(found) >= want
                )
                or len(found) >= want
            ),
            timeout_s,
        )
    finally:
        consumer.close()
    return found


def train(host: Host, slot: SeedSlot, client: KasminaClient, steps: int) -> int:
    opt = torch.optim.SGD(host.parameters(), lr=0.01)
    done = 0
    for _ in range(steps):
        start = time.perf_counter()
        x = torch.randn(16, 8)
        loss = host(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        slot.advance()
        client.publish_metrics(
            {"training_step_time_ms": (time.perf_counter() - start) * 1e3, "loss": loss.item()}, {"slot": slot.slot_id}
        )
        done += 1
    return done


def make(bootstrap: str, run_id: str, **kw: object) -> tuple[KasminaClient, SeedSlot, Host]:
    instance = f"kasmina-test-{run_id}"
    client = KasminaClient(bootstrap, instance, safety=SAFETY_CFG, **kw)  # type: ignore[arg-type]
    slot = SeedSlot("s0", nn.Linear(16, 16), instance_id=instance, config=CFG, safety=SAFETY_CFG, sink=client)
    client.add_slot(slot)
    return client, slot, Host(slot)


def test_training_loop_publishes_telemetry_and_seed_events(kafka_bootstrap: str, run_id: str) -> None:
    client, slot, host = make(kafka_bootstrap, run_id, consume_pause=False)
    with client:
        slot.germinate()
        slot.transition(SeedStage.TRAINING)
        train(host, slot, client, 10)
        slot.transition(SeedStage.BLENDING)
        train(host, slot, client, 10)
        assert client.flush(20) == 0
    packets = read_back(kafka_bootstrap, TELEMETRY.name, lambda r: r.message.source_id == client.instance_id, 20)
    assert len(packets) == 20
    names = {m.name for p in packets for m in p.metrics}
    assert {"training_step_time_ms", "loss", DROPPED_METRIC} <= names
    events = read_back(kafka_bootstrap, SAFETY.name, lambda r: r.message.source_id == client.instance_id, 4)
    stages = [e.seed_transition.to_stage for e in events if e.WhichOneof("detail") == "seed_transition"]
    assert stages == [pb.SEED_GERMINATED, pb.SEED_TRAINING, pb.SEED_BLENDING]
    assert [e.WhichOneof("detail") for e in events].count("hardware_profile") == 1  # published once at start
    assert client.stats().dropped == 0


def console_produce(bootstrap: str, lines: list[str]) -> None:
    settings = load_settings()
    tool = KafkaDistribution.in_home(settings.home, settings.kafka_version).tool("kafka-console-producer")
    cmd = [
        str(tool),
        "--bootstrap-server",
        bootstrap,
        "--topic",
        CONTROL_PAUSE.name,
        "--reader-property",
        "parse.headers=true",
        "--reader-property",
        "parse.key=true",
    ]
    subprocess.run(cmd, input="".join(f"{line}\n" for line in lines), text=True, check=True, timeout=120)


def json_line(key: str, body: str) -> str:
    return f"content-type:application/json,leyline-type:leyline.PauseCommand\t{key}\t{body}"


def pause_json(me: str, action: str, token: str = TOKEN, **fields: object) -> str:
    extra = "".join(f', "{k}": {json.dumps(v)}' for k, v in fields.items())
    body = f'{{"action": "{action}", "target_instance": "{me}", "authorization_token": "{token}"{extra}}}'
    return json_line(me, body)


def test_console_producer_json_pauses_and_resumes_the_slot(kafka_bootstrap: str, run_id: str) -> None:
    client, slot, host = make(kafka_bootstrap, run_id, authorization_tokens=[TOKEN])
    with client:
        assert client.wait_ready(60)
        slot.germinate()
        slot.transition(SeedStage.TRAINING)
        train(host, slot, client, 2)
        slot.transition(SeedStage.BLENDING)
        train(host, slot, client, 3)  # alpha = 1: the slot is now the seed, not the identity
        x = torch.randn(4, 16)
        assert not torch.equal(slot(x), x)
        me = client.instance_id
        console_produce(
            kafka_bootstrap,
            [
                pause_json(me, "PAUSE_ENTER", target_slots=["nope"]),  # rejected: unknown slot
                json_line(me, "{not json"),  # rejected: undecodable
                json_line("other", '{"action": "PAUSE_ENTER", "target_instance": "someone-else"}'),  # not ours
                pause_json(me, "PAUSE_ENTER", quota_ms=-5000),  # rejected: a negative quota
                pause_json(me, "PAUSE_ENTER", token="guess"),  # rejected: not authorised
                pause_json(me, "PAUSE_ENTER", command_id="c1", reason="operator", quota_ms=100_000),  # full grant
            ],
        )
        assert wait_for(lambda: slot.is_paused)
        assert torch.equal(slot(x), x)  # the identity kernel: the input's values, unchanged
        assert wait_for(lambda: client.stats().commands_rejected == 4)
        console_produce(
            kafka_bootstrap,
            [
                pause_json(me, "PAUSE_EXIT"),
                pause_json(me, "PAUSE_ENTER", command_id="c2", quota_ms=100_000),  # 50 s left: a partial grant
                pause_json(me, "PAUSE_EXIT"),
                pause_json(me, "PAUSE_ENTER", command_id="c3", quota_ms=1000),  # no quota left: refused
            ],
        )
        assert wait_for(lambda: client.stats().commands_rejected == 5)
        assert not slot.is_paused and not torch.equal(slot(x), x)
        assert client.stats().commands_applied == 4
        assert client.flush(20) == 0
    events = read_back(kafka_bootstrap, SAFETY.name, lambda r: r.message.source_id == me, 16)
    kinds = [e.WhichOneof("detail") for e in events]
    assert kinds.count("command_rejected") == 5 and kinds.count("pause_entered") == kinds.count("pause_exited") == 2
    rejected = [e.command_rejected for e in events if e.WhichOneof("detail") == "command_rejected"]
    assert sorted(r.error_type for r in rejected) == [
        "InvalidCommandError",
        "InvalidCommandError",
        "InvalidCommandError",
        "MalformedPayloadError",
        "PauseRefusedError",
    ]
    assert all(r.origin_topic == CONTROL_PAUSE.name for r in rejected)
    grants = [(e.quota_decision.outcome, e.quota_decision.granted) for e in events if e.HasField("quota_decision")]
    assert grants == [(pb.QUOTA_FULL, 100_000), (pb.QUOTA_PARTIAL, 50_000), (pb.QUOTA_DENIED, 0)]
    dead = read_back(
        kafka_bootstrap,
        "leyline.deadletter",
        lambda r: r.message.origin_topic == CONTROL_PAUSE.name and r.message.origin_key == me.encode(),
        5,
    )
    assert len(dead) == 5
    # A refused command carrying a valid token (c3), or a wrong one, keeps neither in its 30-day dead letter.
    for letter in dead:
        assert TOKEN.encode() not in letter.SerializeToString() and b"guess" not in letter.SerializeToString()
    assert sum(letter.origin_value_redacted for letter in dead) == 4  # all but the undecodable one held a token
