"""The managed broker itself: data survives a restart; status and the console tools answer."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from esper.proto import leyline_pb2 as pb
from esper.settings import load_settings
from esper.streams.admin import create_topics
from esper.streams.consumer import LeylineConsumer, Record
from esper.streams.local.broker import LocalBroker
from esper.streams.producer import LeylineProducer
from esper.streams.topics import SAFETY
from tests.conftest import TEST_HOME, own_broker

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def restart_broker() -> Iterator[LocalBroker]:
    """A broker of its own: restarting it cannot disturb the shared test broker."""
    with own_broker("restart-broker", 100) as broker:
        yield broker


def test_acknowledged_records_survive_a_broker_restart(restart_broker: LocalBroker, run_id: str) -> None:
    bootstrap = restart_broker.bootstrap_servers
    create_topics(bootstrap, [SAFETY])
    producer = LeylineProducer(bootstrap)
    events = [pb.SafetyEvent(event_id=f"{run_id}-{i}", subsystem="test") for i in range(50)]
    for event in events:
        producer.send(SAFETY.name, event, key=run_id)
    assert producer.flush(30) == 0 and producer.stats.delivered == len(events)

    assert restart_broker.down()
    assert not restart_broker.status().running
    restart_broker.up(timeout_s=180)

    got: list[str] = []
    consumer = LeylineConsumer(bootstrap, f"restart-{run_id}", [SAFETY.name])

    def keep(record: Record) -> None:
        if record.key == run_id.encode():
            got.append(record.message.event_id)

    deadline = time.monotonic() + 60
    try:
        while len(got) < len(events):
            assert time.monotonic() < deadline
            consumer.poll_once(keep)
    finally:
        consumer.close()
    assert got == [e.event_id for e in events]


def test_status_and_console_tools_see_the_broker(restart_broker: LocalBroker) -> None:
    status = restart_broker.status()
    assert status.running and status.ready and status.pid
    topics = subprocess.run(
        [str(restart_broker.dist.tool("kafka-topics")), "--bootstrap-server", status.bootstrap_servers, "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert SAFETY.name in topics.stdout.split()


def test_down_is_idempotent_and_up_restarts(restart_broker: LocalBroker) -> None:
    assert restart_broker.down()
    assert not restart_broker.down()
    restart_broker.up(timeout_s=180)
    assert restart_broker.status().ready


def test_up_waits_out_the_moment_after_exec_when_the_new_broker_has_no_cmdline(
    restart_broker: LocalBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just after exec the kernel has not yet set the new image's argv and /proc/PID/cmdline reads empty (a CI
    run and a make run once failed with "exited during start-up" while the broker lived); a launch must not
    read that as an exit."""
    assert restart_broker.down()
    real_cmdline = psutil.Process.cmdline
    blank_until = time.monotonic() + 1.0

    def cmdline(self: psutil.Process) -> list[str]:
        return [] if time.monotonic() < blank_until else real_cmdline(self)

    monkeypatch.setattr(psutil.Process, "cmdline", cmdline)
    restart_broker.up(timeout_s=180)
    assert restart_broker.status().ready


def test_format_accepts_a_cluster_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    """About one random id in 64 starts with "-"; the storage tool must take it as a value, not an option."""
    broker = LocalBroker(
        load_settings(home=TEST_HOME, bootstrap_servers=None).cluster(), name=f"format-{tmp_path.name}"
    )
    broker.dist.provision()
    try:
        broker.format_storage("-dashLeadingId12345678")
        meta = (broker.data_dir / "meta.properties").read_text()
        assert "cluster.id=-dashLeadingId12345678" in meta
    finally:
        shutil.rmtree(broker.dir, ignore_errors=True)
