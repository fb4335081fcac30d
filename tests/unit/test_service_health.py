"""Tezzeret's metrics, health report and endpoint, `esper compiler status`, and `esper blueprint submit` without a
broker (its Kafka path against a real cluster is the service's integration test)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from esper.cli import app as esper_app
from esper.compiler.service.health import (
    HEALTH_PATH,
    METRICS_PATH,
    HealthServer,
    ServiceSnapshot,
    fetch_health,
    health_report,
    status_command,
)
from esper.compiler.service.metrics import TezzeretMetrics
from esper.proto import leyline_pb2 as pb
from esper.proto.enums import CacheLevel, CircuitState, CompilationStrategy, FailureReason, RequestKind
from esper.streams.consumer import Record
from esper.streams.envelope import Decoded, Envelope
from tests.ir_samples import EXAMPLES

SPEC_NAMES = {
    "tezzeret_compilation_duration_ms",
    "tezzeret_circuit_breaker_state",
    "tezzeret_conservative_mode_active",
    "tezzeret_wal_transactions_total",
    "tezzeret_gpu_utilization_percent",
    "tezzeret_gpu_present",
    "tezzeret_concurrent_compilations",
    "tezzeret_memory_usage_gb",
    "tezzeret_cache_hit_rate",
    "tezzeret_wal_recovery_duration_ms",
    "tezzeret_requests_total",
    "tezzeret_queue_depth",
    "tezzeret_dead_letters_total",
}

HEALTHY = ServiceSnapshot(
    instance_id="tezzeret-1",
    breakers={"compile": CircuitState.CLOSED, "store": CircuitState.CLOSED},
    conservative_active=False,
    conservative_causes=(),
    wal={"path": "/tmp/wal", "epoch": 3, "unsettled": 0, "segments": 1, "usable": True, "recovery_ms": 12.5},
    queue={"depth": 0, "running": 0, "waiting": 0},
    workers=({"pid": 101, "ready": True, "cpu_only": False, "lane": "normal"},),
    kafka_ok=True,
    kafka_error="",
    uptime_s=42.0,
)


def samples(exposition: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(exposition: bytes, name: str, **labels: str) -> float:
    matches = [v for got, v in samples(exposition).get(name, []) if got == labels]
    assert len(matches) == 1, (name, labels, samples(exposition).get(name))
    return matches[0]


# ---------------------------------------------------------------- the report


def test_a_healthy_snapshot_is_ok_and_the_body_holds_every_field() -> None:
    code, body = health_report(HEALTHY)
    assert (code, body["status"], body["reasons"]) == (200, "ok", [])
    assert set(body) == {f.name for f in fields(ServiceSnapshot)} | {"status", "reasons"}
    assert body["breakers"] == {"compile": "CLOSED", "store": "CLOSED"}
    assert body["wal"]["epoch"] == 3 and body["workers"][0]["pid"] == 101
    json.dumps(body)  # JSON-ready as it is


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"conservative_active": True, "conservative_causes": ("breaker compile OPEN",)}, "conservative mode"),
        ({"breakers": {"compile": CircuitState.HALF_OPEN}}, "breaker compile HALF_OPEN"),
    ],
)
def test_conservative_mode_or_a_half_open_breaker_is_degraded_but_serving(change: dict[str, Any], reason: str) -> None:
    code, body = health_report(replace(HEALTHY, **change))
    assert (code, body["status"]) == (200, "degraded")
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith(reason)


def test_the_causes_of_conservative_mode_are_in_its_reason() -> None:
    _, body = health_report(replace(HEALTHY, conservative_active=True, conservative_causes=("GPU 30%", "timeout")))
    assert body["reasons"] == ["conservative mode: GPU 30%; timeout"]
    assert body["conservative_causes"] == ["GPU 30%", "timeout"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"wal": {**HEALTHY.wal, "usable": False}}, "WAL unusable"),
        ({"wal": {"path": "/tmp/wal"}}, "WAL unusable"),  # not said to be usable is not usable
        ({"workers": ()}, "no ready worker"),
        ({"workers": ({"pid": 1, "ready": False}, {"pid": 2, "ready": False})}, "no ready worker"),
        ({"kafka_ok": False, "kafka_error": "broker down"}, "Kafka: broker down"),
        ({"kafka_ok": False}, "Kafka: not ok"),
        ({"breakers": {"compile": CircuitState.OPEN}}, "breaker compile OPEN"),
        ({"breakers": {"store": CircuitState.FORCED_OPEN}}, "breaker store FORCED_OPEN"),
    ],
)
def test_each_reason_it_cannot_compile_makes_it_unavailable(change: dict[str, Any], reason: str) -> None:
    code, body = health_report(replace(HEALTHY, **change))
    assert (code, body["status"]) == (503, "unavailable")
    assert len(body["reasons"]) == 1 and body["reasons"][0].startswith(reason)


def test_settled_breakers_are_healthy() -> None:
    breakers = {"a": CircuitState.CLOSED, "b": CircuitState.DISABLED, "c": CircuitState.METRICS_ONLY}
    assert health_report(replace(HEALTHY, breakers=breakers))[1]["status"] == "ok"


def test_every_reason_is_listed_the_unavailable_ones_first() -> None:
    worst = replace(
        HEALTHY,
        breakers={"a": CircuitState.HALF_OPEN, "b": CircuitState.OPEN},
        conservative_active=True,
        wal={"usable": False},
        workers=(),
        kafka_ok=False,
    )
    code, body = health_report(worst)
    assert (code, body["status"]) == (503, "unavailable")
    assert [r.split(" ")[0] for r in body["reasons"]] == ["WAL", "no", "Kafka:", "breaker", "breaker", "conservative"]
    assert body["reasons"][3:5] == ["breaker b OPEN", "breaker a HALF_OPEN"]


# ---------------------------------------------------------------- the metrics


def test_the_gpu_utilisation_is_absent_without_a_reading_never_a_made_up_zero() -> None:
    metrics = TezzeretMetrics()
    assert "tezzeret_gpu_utilization_percent" not in samples(metrics.exposition())
    assert value(metrics.exposition(), "tezzeret_gpu_present") == 0
    metrics.set_gpu(17.5)
    assert value(metrics.exposition(), "tezzeret_gpu_utilization_percent") == 17.5
    assert value(metrics.exposition(), "tezzeret_gpu_present") == 1
    metrics.set_gpu(None)
    assert "tezzeret_gpu_utilization_percent" not in samples(metrics.exposition())
    assert value(metrics.exposition(), "tezzeret_gpu_present") == 0


def test_each_method_sets_its_series() -> None:
    m = TezzeretMetrics()
    m.observe_compile(CompilationStrategy.FAST, 30_000)
    m.set_breaker("compile", CircuitState.HALF_OPEN)
    m.set_breaker("store", CircuitState.OPEN)
    m.set_conservative(True)
    for kind in ("begin", "data", "data", "commit"):
        m.wal_transaction(kind)
    m.set_concurrency(2)
    m.set_memory_gb(3.5)
    m.set_cache_hit_rates({CacheLevel.L1: 0.07, "L3": 0.35})
    m.observe_recovery(800)
    m.request(RequestKind.COMPILATION)
    m.request(RequestKind.EMERGENCY, FailureReason.UNAUTHORIZED)
    m.set_queue_depth(5)
    m.dead_letter()
    text = m.exposition()
    assert value(text, "tezzeret_compilation_duration_ms_bucket", strategy="FAST", le="20000.0") == 0
    assert value(text, "tezzeret_compilation_duration_ms_bucket", strategy="FAST", le="65000.0") == 1
    assert value(text, "tezzeret_compilation_duration_ms_count", strategy="STANDARD") == 0  # exists from the start
    assert value(text, "tezzeret_compilation_duration_ms_bucket", strategy="AGGRESSIVE", le="960000.0") == 0
    assert value(text, "tezzeret_circuit_breaker_state", breaker="compile") == 3
    assert value(text, "tezzeret_circuit_breaker_state", breaker="store") == 2
    assert value(text, "tezzeret_conservative_mode_active") == 1
    assert value(text, "tezzeret_wal_transactions_total", type="data") == 2
    assert value(text, "tezzeret_wal_transactions_total", type="abort") == 0
    assert value(text, "tezzeret_concurrent_compilations") == 2
    assert value(text, "tezzeret_memory_usage_gb") == 3.5
    assert value(text, "tezzeret_cache_hit_rate", level="L1") == 0.07
    assert value(text, "tezzeret_cache_hit_rate", level="L3") == 0.35
    assert not [s for s in samples(text)["tezzeret_cache_hit_rate"] if s[0] == {"level": "L2"}]  # never reported
    assert value(text, "tezzeret_wal_recovery_duration_ms_bucket", le="1000.0") == 1
    assert value(text, "tezzeret_requests_total", kind="request", outcome="success") == 1
    assert value(text, "tezzeret_requests_total", kind="emergency", outcome="UNAUTHORIZED") == 1
    assert value(text, "tezzeret_requests_total", kind="blueprint", outcome="TIMEOUT") == 0
    assert value(text, "tezzeret_queue_depth") == 5
    assert value(text, "tezzeret_dead_letters_total") == 1


def test_bad_label_values_are_refused_and_change_nothing() -> None:
    m = TezzeretMetrics()
    with pytest.raises(ValueError, match="WAL record type"):
        m.wal_transaction("rollback")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache level"):
        m.set_cache_hit_rates({CacheLevel.MISS: 0.5})
    with pytest.raises(ValueError, match="fraction"):
        m.set_cache_hit_rates({"L1": 0.2, "L2": 35.0})  # a percentage
    assert "tezzeret_cache_hit_rate" not in samples(m.exposition())  # L1 was not set either


def test_two_services_in_one_process_have_their_own_registries() -> None:
    a, b = TezzeretMetrics(), TezzeretMetrics()
    a.set_queue_depth(7)
    assert value(a.exposition(), "tezzeret_queue_depth") == 7
    assert value(b.exposition(), "tezzeret_queue_depth") == 0


# ---------------------------------------------------------------- the endpoint


@pytest.fixture
def snapshot() -> list[Callable[[], ServiceSnapshot]]:
    """The server's snapshot function, swappable by the test: [0] is called."""
    return [lambda: HEALTHY]


@pytest.fixture
def server(snapshot: list[Callable[[], ServiceSnapshot]]) -> Iterator[HealthServer]:
    metrics = TezzeretMetrics()
    metrics.set_breaker("compile", CircuitState.CLOSED)
    metrics.set_cache_hit_rates({"L1": 0.1, "L2": 0.2, "L3": 0.3})
    with HealthServer("127.0.0.1", 0, metrics, lambda: snapshot[0]()) as running:
        yield running


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read()


def test_metrics_are_served_in_the_prometheus_format_with_every_spec_name(server: HealthServer) -> None:
    assert server.port > 0
    code, content_type, body = get(server.url + METRICS_PATH)
    assert code == 200 and content_type.startswith("text/plain") and "version=" in content_type
    names = {
        s
        for family in text_string_to_metric_families(body.decode())
        for s in (family.name, *(x.name for x in family.samples))
    }
    assert SPEC_NAMES - {"tezzeret_gpu_utilization_percent"} <= names  # no GPU reading here


def test_the_health_route_answers_the_reports_status(
    server: HealthServer, snapshot: list[Callable[[], ServiceSnapshot]]
) -> None:
    code, content_type, body = get(server.url + HEALTH_PATH)
    assert (code, content_type.split(";")[0], json.loads(body)["status"]) == (200, "application/json", "ok")
    snapshot[0] = lambda: replace(HEALTHY, kafka_ok=False, kafka_error="no broker")
    code, _, body = get(server.url + HEALTH_PATH)
    assert code == 503 and json.loads(body)["reasons"] == ["Kafka: no broker"]


def test_a_snapshot_that_raises_answers_503_and_the_server_carries_on(
    server: HealthServer, snapshot: list[Callable[[], ServiceSnapshot]]
) -> None:
    def broken() -> ServiceSnapshot:
        raise RuntimeError("scheduler lock poisoned")

    snapshot[0] = broken
    code, _, body = get(server.url + HEALTH_PATH)
    report = json.loads(body)
    assert (code, report["status"]) == (503, "unavailable")
    assert report["reasons"] == ["snapshot failed: RuntimeError: scheduler lock poisoned"]
    snapshot[0] = lambda: HEALTHY
    assert get(server.url + HEALTH_PATH)[0] == 200
    assert get(server.url + METRICS_PATH)[0] == 200


def test_stop_closes_the_listener_and_a_taken_port_fails_start() -> None:
    first = HealthServer("127.0.0.1", 0, TezzeretMetrics(), lambda: HEALTHY)
    first.start()
    url = first.url + HEALTH_PATH
    assert fetch_health(url)[0] == 200
    with pytest.raises(OSError):
        HealthServer("127.0.0.1", first.port, TezzeretMetrics(), lambda: HEALTHY).start()
    first.stop()
    with pytest.raises(OSError):
        fetch_health(url, timeout_s=2)
    first.stop()  # a second stop is a no-op


def test_fetch_health_refuses_what_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        fetch_health("file:///etc/passwd")


# ---------------------------------------------------------------- esper compiler status


status_app = typer.Typer()
status_app.command()(status_command)


def test_status_exits_0_when_healthy_1_when_unavailable(
    server: HealthServer, snapshot: list[Callable[[], ServiceSnapshot]]
) -> None:
    runner = CliRunner()
    done = runner.invoke(status_app, ["--url", server.url + HEALTH_PATH])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["instance_id"] == "tezzeret-1"
    snapshot[0] = lambda: replace(HEALTHY, workers=())
    done = runner.invoke(status_app, [], env={"ESPER_TEZZERET_HEALTH_URL": server.url + HEALTH_PATH})
    assert done.exit_code == 1
    assert json.loads(done.stdout)["status"] == "unavailable"


def test_status_exits_2_with_a_clear_message_when_nothing_answers() -> None:
    stopped = HealthServer("127.0.0.1", 0, TezzeretMetrics(), lambda: HEALTHY)
    stopped.start()
    stopped.stop()
    done = CliRunner().invoke(status_app, ["--url", stopped.url + HEALTH_PATH, "--timeout", "2"])
    assert done.exit_code == 2
    assert "unreachable" in done.stderr and stopped.url in done.stderr


# ---------------------------------------------------------------- esper blueprint submit (no broker)


class FakeMessage:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 41


class FakeProducer:
    sent: ClassVar[list[tuple[str, Any, Any, Envelope]]] = []

    def __init__(self, bootstrap: str, producer_id: str = "esper") -> None:
        self.producer_id = producer_id

    def envelope_for(self, message: Any) -> Envelope:
        from esper.streams.envelope import new_envelope

        return new_envelope(message, producer=self.producer_id)

    def send_sync(self, topic: str, message: Any, key: Any, *, envelope: Envelope) -> FakeMessage:
        FakeProducer.sent.append((topic, message, key, envelope))
        return FakeMessage(topic)

    def close(self) -> int:
        return 0


class FakeResults:
    """from_time's consumer: hands each poll the next of `answers` (a function of the sent request id)."""

    answers: ClassVar[list[Callable[[str], pb.CompilationResult]]] = []
    closed = False

    @classmethod
    def from_time(cls, *args: Any, **kwargs: Any) -> FakeResults:
        assert kwargs == {"isolation.level": "read_committed"}
        return cls()

    def poll_once(self, handler: Callable[[Record], None], timeout_s: float = 0.5) -> int:
        if not FakeResults.answers:
            time.sleep(min(timeout_s, 0.05))
            return 0
        request_id = submitted_request_id()
        result = FakeResults.answers.pop(0)(request_id)
        envelope = Envelope(message_type="leyline.CompilationResult")
        handler(Record("leyline.compilation.results", 0, 0, None, 0, Decoded(result, envelope)))
        return 1

    def close(self) -> None:
        FakeResults.closed = True


def submitted_request_id() -> str:
    topic, message, _, envelope = FakeProducer.sent[-1]
    return str(message.request_id) if topic == "leyline.compilation.requests" else envelope.message_id


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way submit reaches Kafka, replaced: the admin check, the producer, the consumer."""
    FakeProducer.sent = []
    FakeResults.answers = []
    FakeResults.closed = False
    monkeypatch.setattr("esper.streams.admin.ensure_topic", lambda bootstrap, topic: [0])
    monkeypatch.setattr("esper.streams.producer.LeylineProducer", FakeProducer)
    monkeypatch.setattr("esper.streams.consumer.LeylineConsumer", FakeResults)


runner = CliRunner()


def test_an_invalid_file_exits_1_and_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def untouchable(*_: object, **__: object) -> None:
        raise AssertionError("Kafka was reached")

    monkeypatch.setattr("esper.streams.admin.ensure_topic", untouchable)
    monkeypatch.setattr("esper.streams.producer.LeylineProducer", untouchable)
    monkeypatch.setattr("esper.streams.consumer.LeylineConsumer.from_time", untouchable)
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {shape: [-1, 64]}\nnodes:\n  - {id: a, op: eval, inputs: [input]}\noutput: a\n")
    for args in ([], ["--strategy", "fast", "--wait"]):
        done = runner.invoke(esper_app, ["blueprint", "submit", str(bad), *args])
        assert done.exit_code == 1, done.output
        assert "problem(s)" in done.output and "eval" in done.output
    missing = runner.invoke(esper_app, ["blueprint", "submit", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 1 and "cannot read" in missing.output
    unknown = runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml"), "--strategy", "turbo"])
    assert unknown.exit_code == 2 and "turbo" in unknown.output


def test_a_plain_submit_sends_the_blueprint_and_prints_its_message_id(no_kafka: None) -> None:
    done = runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml")])
    assert done.exit_code == 0, done.output
    [(topic, message, key, envelope)] = FakeProducer.sent
    assert topic == "leyline.blueprints" and isinstance(message, pb.BlueprintIR)
    assert key == message.blueprint_id or len(key) == 64  # the id, or the content hash of an anonymous one
    line = json.loads(done.stdout)
    assert line == {"topic": topic, "partition": 0, "offset": 41, "request_id": envelope.message_id}


def test_any_request_option_sends_a_compilation_request_carrying_the_blueprint(no_kafka: None) -> None:
    args = ["--strategy", "Aggressive", "--priority", "5", "--deadline-ms", "90000"]
    done = runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml"), *args])
    assert done.exit_code == 0, done.output
    [(topic, message, _, _)] = FakeProducer.sent
    assert topic == "leyline.compilation.requests" and isinstance(message, pb.CompilationRequest)
    assert message.strategy == CompilationStrategy.AGGRESSIVE and message.priority == 5
    assert message.deadline_ms == 90_000 and message.requestor.startswith("cli:")
    assert message.HasField("blueprint") and message.blueprint.nodes and message.requested_at.seconds > 0
    assert len(message.request_id) == 32 and json.loads(done.stdout)["request_id"] == message.request_id
    runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml"), "--requestor", "tamiyo"])
    assert FakeProducer.sent[-1][1].requestor == "tamiyo"
    assert FakeProducer.sent[-1][1].strategy == 0  # the service chooses


def result_for(success: bool) -> Callable[[str], pb.CompilationResult]:
    def answer(request_id: str) -> pb.CompilationResult:
        return pb.CompilationResult(request_id=request_id, success=success, artifact_id="a1" if success else "")

    return answer


def other_request(_: str) -> pb.CompilationResult:
    return pb.CompilationResult(request_id="someone-else", success=False)


@pytest.mark.parametrize(("success", "exit_code"), [(True, 0), (False, 1)])
def test_wait_prints_the_result_of_its_own_request(no_kafka: None, success: bool, exit_code: int) -> None:
    FakeResults.answers = [other_request, result_for(success)]
    done = runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml"), "--wait"])
    assert done.exit_code == exit_code, done.output
    sent, result = (json.loads(line) for line in done.stdout.splitlines())
    assert result["request_id"] == sent["request_id"] == submitted_request_id()
    assert result.get("success", False) is success
    assert FakeResults.closed


def test_wait_exits_3_when_no_result_comes_in_time(no_kafka: None) -> None:
    FakeResults.answers = [other_request]
    done = runner.invoke(esper_app, ["blueprint", "submit", str(EXAMPLES / "mlp.yaml"), "--wait", "--timeout", "0.3"])
    assert done.exit_code == 3
    assert "no CompilationResult" in done.stderr
    assert FakeResults.closed
