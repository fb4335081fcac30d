"""The rest of the stack, proven before others build on it: Faust on RocksDB (rocksdict) recovering a table from
its changelog into an empty data directory, and torch.compile (inductor) forward and backward on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]


def _start_worker(env: dict[str, str], data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    faust = Path(sys.executable).parent / "faust"
    cmd = [str(faust), "-A", "tests.integration.faust_probe_app", "--datadir", str(data_dir), "worker", "-l", "info"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _counts(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/counts/", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def _wait_for_counts(port: int, expected: dict[str, int], proc: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + 120
    seen = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"faust worker exited:\n{log.read_text()[-3000:]}"
        seen = _counts(port)
        if seen and seen["counts"] == expected:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"table never reached {expected}; last {seen}\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_faust_rocksdb_table_recovers_from_its_changelog(kafka_bootstrap: str, run_id: str, tmp_path: Path) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from esper.streams.admin import admin_client

    topic = f"probe-{run_id}"
    admin = admin_client(kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    port = 16066 + int(run_id[:4], 16) % 1000
    env = {
        **os.environ,
        "PROBE_APP_ID": f"esper-probe-{run_id}",
        "PROBE_BOOTSTRAP": kafka_bootstrap,
        "PROBE_TOPIC": topic,
        "PROBE_WEB_PORT": str(port),
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "faust.log"

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    expected: dict[str, int] = {}
    for i in range(30):
        key = f"k{i % 4}"
        producer.produce(topic, key=key.encode(), value=b"x")
        expected[key] = expected.get(key, 0) + 1
    producer.flush(30)

    first = _start_worker(env, tmp_path / "data-1", log)
    try:
        seen = _wait_for_counts(port, expected, first, log)
        assert seen["store"] == "faust.stores.rocksdb.Store" and seen["rocksdict"] is True
    finally:
        _stop(first)
    assert any((tmp_path / "data-1").rglob("CURRENT")), "no RocksDB files were written"
    # The source offsets are committed, so the second worker reads nothing from the source topic: its counts can
    # only come from the changelog.
    group = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": env["PROBE_APP_ID"]})
    try:
        committed = group.committed([TopicPartition(topic, 0)], timeout=30)
    finally:
        group.close()
    assert committed[0].offset == 30

    # A new worker with an EMPTY data directory must rebuild the table from the changelog topic.
    second = _start_worker(env, tmp_path / "data-2", log)
    try:
        _wait_for_counts(port, expected, second, log)
    finally:
        _stop(second)
    changelogs = admin.list_topics(timeout=10).topics
    assert f"esper-probe-{run_id}-counts-changelog" in changelogs


TORCH_PROBE = """
import torch, torch.nn as nn
torch.manual_seed(0)
block = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
compiled = torch.compile(block, backend="inductor", fullgraph=True)
x = torch.randn(8, 32, requires_grad=True)
eager_out = block(x); eager_out.sum().backward(); eager_grad = x.grad.clone(); x.grad = None
out = compiled(x); out.sum().backward()
assert torch.allclose(out, eager_out, atol=1e-5), "forward differs"
assert torch.allclose(x.grad, eager_grad, atol=1e-5), "backward differs"
from torch._dynamo.utils import counters
print("graphs", counters["stats"]["unique_graphs"])
"""


def test_torch_compile_inductor_runs_forward_and_backward_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(REPO / ".esper" / "inductor-cache")}
    done = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "graphs 1" in done.stdout
