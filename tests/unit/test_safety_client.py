"""The Kasmina client without a broker: what it hands to its producer (captured), how it validates, authorises and
meters pause commands (the quota from the config, enforced by default), and what flush waits for."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from google.protobuf.message import Message
from torch import nn

from esper.proto import leyline_pb2 as pb
from esper.safety.client import KasminaClient
from esper.safety.config import ProductionSafetyConfig
from esper.safety.exceptions import InvalidCommandError, PauseRefusedError
from esper.safety.seed import SeedSlot
from esper.streams.consumer import Record
from esper.streams.producer import LeylineProducer
from esper.streams.topics import CONTROL_PAUSE, SAFETY, TELEMETRY

SAFETY_CFG = ProductionSafetyConfig(max_pause_quota=1500, max_pause_duration_ms=60_000)


class Sent:
    """What the client handed to its producer, by topic (the producer itself is never reached)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []

    def safety(self, kind: str) -> list[pb.SafetyEvent]:
        return [m for t, m in self.messages if t == SAFETY.name and m.WhichOneof("detail") == kind]  # type: ignore[attr-defined]

    def telemetry(self) -> list[pb.TelemetryPacket]:
        return [m for t, m in self.messages if t == TELEMETRY.name]  # type: ignore[misc]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    captured = Sent()

    def try_send(self: LeylineProducer, topic: str, message: Message, key: Any = None, **kw: Any) -> bool:
        captured.messages.append((topic, message))
        acknowledge(kw)
        return True

    monkeypatch.setattr(LeylineProducer, "try_send", try_send)
    return captured


def acknowledge(send_kwargs: dict[str, Any]) -> None:
    """What the broker would do for a captured message: acknowledge it (safety events leave the outbox)."""
    if send_kwargs.get("on_delivery") is not None:
        send_kwargs["on_delivery"](None, None)


@pytest.fixture(autouse=True)
def _outbox_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's outbox (.esper/outbox/<instance>, relative to the working directory) is its own."""
    monkeypatch.chdir(tmp_path)


def offline(**kw: Any) -> KasminaClient:
    """A client whose broker is unreachable (nothing here needs one)."""
    return KasminaClient(
        "127.0.0.1:1", "k1", consume_pause=False, producer_overrides={"log_level": 0}, **{"safety": SAFETY_CFG, **kw}
    )


@pytest.fixture
def client(sent: Sent) -> Iterator[KasminaClient]:
    c = offline()
    c.add_slot(SeedSlot("s0", nn.Linear(4, 4), instance_id="k1", safety=SAFETY_CFG, sink=c))
    yield c
    c.close(timeout_s=0.2)


def command(client: KasminaClient, **fields: Any) -> None:
    """Hand a pause command to the client as its consumer would (the handler: raising dead-letters it)."""
    cmd = pb.PauseCommand(target_instance="k1", **fields)
    record = SimpleNamespace(message=cmd, topic=CONTROL_PAUSE.name, partition=0, offset=0, timestamp_ms=0)
    client._apply_command(cast(Record, record))


def test_the_hardware_profile_is_published_once_at_start(client: KasminaClient, sent: Sent) -> None:
    assert client.flush(5) == 0
    (profile,) = sent.safety("hardware_profile")
    assert profile.source_id == "k1"
    assert profile.hardware_profile.timing_multiplier == client.timing.get_hardware_profile().timing_multiplier


def test_the_configs_pause_quota_is_enforced_by_default(client: KasminaClient, sent: Sent) -> None:
    slot = client.slots["s0"]
    command(client, action=pb.PAUSE_ENTER, quota_ms=1000, command_id="a")
    assert slot.is_paused
    command(client, action=pb.PAUSE_ENTER, quota_ms=1000)  # already paused: kept, no quota spent
    command(client, action=pb.PAUSE_EXIT)
    command(client, action=pb.PAUSE_ENTER, quota_ms=1000, command_id="b")  # 500 left: a partial grant
    command(client, action=pb.PAUSE_EXIT)
    with pytest.raises(PauseRefusedError, match="no pause quota"):
        command(client, action=pb.PAUSE_ENTER, quota_ms=1000)
    assert not slot.is_paused and client.stats().commands_applied == 5
    client.flush(5)
    outcomes = [e.quota_decision.outcome for e in sent.safety("quota_decision")]
    assert outcomes == [pb.QUOTA_FULL, pb.QUOTA_PARTIAL, pb.QUOTA_DENIED]
    # the grant bounds the pause
    assert [e.pause_entered.max_duration_ms for e in sent.safety("pause_entered")] == [1000, 500]


def test_without_a_quota_in_the_command_the_pause_time_asked_for_is_metered(client: KasminaClient, sent: Sent) -> None:
    command(client, action=pb.PAUSE_ENTER, max_duration_ms=400)
    command(client, action=pb.PAUSE_EXIT)
    command(client, action=pb.PAUSE_ENTER)  # no maximum either: the configured one (60 s), partially granted
    client.flush(5)
    assert [e.quota_decision.requested for e in sent.safety("quota_decision")] == [400, 60_000]
    assert [e.pause_entered.max_duration_ms for e in sent.safety("pause_entered")] == [400, 1100]


def test_bad_pause_values_are_one_typed_error_and_spend_nothing(client: KasminaClient, sent: Sent) -> None:
    with pytest.raises(InvalidCommandError) as info:
        command(client, action=pb.PAUSE_ENTER, quota_ms=-5000, max_duration_ms=-1, target_slots=["nope"])
    text = str(info.value)
    assert "quota_ms" in text and "max_duration_ms" in text and "nope" in text
    with pytest.raises(InvalidCommandError, match="no valid action"):
        command(client)
    assert not client.slots["s0"].is_paused and client.stats().commands_applied == 0
    client.flush(5)
    assert sent.safety("quota_decision") == []


def test_with_authorization_tokens_a_command_must_carry_one(sent: Sent) -> None:
    c = offline(authorization_tokens=["s3cret"])
    c.add_slot(SeedSlot("s0", nn.Linear(4, 4), instance_id="k1", safety=SAFETY_CFG, sink=c))
    try:
        for token in ("", "guess"):
            with pytest.raises(InvalidCommandError, match="authorization_token"):
                command(c, action=pb.PAUSE_ENTER, authorization_token=token)
        assert not c.slots["s0"].is_paused
        command(c, action=pb.PAUSE_ENTER, authorization_token="s3cret")
        assert c.slots["s0"].is_paused
    finally:
        c.close(timeout_s=0.2)


def test_a_configuration_without_pauses_refuses_commands_before_spending_quota(sent: Sent) -> None:
    c = offline(safety=ProductionSafetyConfig(pause_semantics_enabled=False))
    c.add_slot(SeedSlot("s0", nn.Linear(4, 4), instance_id="k1", sink=c))
    try:
        with pytest.raises(PauseRefusedError, match="pause_semantics_enabled"):
            command(c, action=pb.PAUSE_ENTER)
        c.flush(5)
        assert sent.safety("quota_decision") == []
    finally:
        c.close(timeout_s=0.2)


def test_a_slot_refusing_pauses_by_its_own_config_refuses_the_whole_command_first(
    client: KasminaClient, sent: Sent
) -> None:
    no_kernel = ProductionSafetyConfig(identity_kernel_enabled=False)
    client.add_slot(SeedSlot("s1", nn.Linear(4, 4), instance_id="k1", safety=no_kernel, sink=client))
    with pytest.raises(PauseRefusedError, match=r"s1.*identity_kernel_enabled"):
        command(client, action=pb.PAUSE_ENTER, quota_ms=100)  # every slot, s0 first
    assert not client.slots["s0"].is_paused
    client.flush(5)
    assert sent.safety("quota_decision") == []  # no quota requested


def test_command_processing_time_is_published_as_standard_metric_points(client: KasminaClient, sent: Sent) -> None:
    command(client, action=pb.PAUSE_EXIT)
    client.flush(5)
    points = [m for p in sent.telemetry() for m in p.metrics if m.name == "command_processing_time_ms"]
    assert len(points) == 1 and points[0].unit == "ms" and points[0].labels["instance"] == "k1"


def test_flush_counts_an_item_the_publisher_is_still_handing_over(monkeypatch: pytest.MonkeyPatch) -> None:
    inside, release = threading.Event(), threading.Event()

    def slow_try_send(self: LeylineProducer, topic: str, message: Message, key: Any = None, **kw: Any) -> bool:
        if topic == TELEMETRY.name:
            inside.set()
            release.wait(10)
        acknowledge(kw)
        return True

    monkeypatch.setattr(LeylineProducer, "try_send", slow_try_send)
    c = offline()
    try:
        c.publish_metrics({"x": 1.0})  # taken out of the buffer and stuck in try_send
        c.flush(0)  # wakes the publisher
        assert inside.wait(10)
        assert c.flush(0.05) == 1  # the buffer is empty, but the item is not in the producer yet
        release.set()
        assert c.flush(5) == 0
    finally:
        release.set()
        c.close(timeout_s=0.2)


def test_slot_pause_bounded_by_the_clients_grant_is_the_identity(client: KasminaClient) -> None:
    slot = client.slots["s0"]
    slot.germinate()
    command(client, action=pb.PAUSE_ENTER, quota_ms=100)
    x = torch.randn(2, 4)
    assert torch.equal(slot(x), x)
    slot.advance()
    assert slot.pause.identity_calls == 1
