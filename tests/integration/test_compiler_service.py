"""Tezzeret as a service against a real broker: every request answered exactly once (read_committed) through
kill -9 at random moments, with two services in one group, under hostile input on every input topic; emergency
requests overtaking a full queue; unauthorised emergencies refused; health and metrics served.

Each test runs real `esper compiler run` processes (real sandboxed torch.compile, real WAL, real artifact store) on a
broker of its own, so killing and restarting them disturbs nothing else.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.compiler.service.health import fetch_health
from esper.proto import leyline_pb2 as pb
from esper.streams.local.broker import LocalBroker
from esper.streams.topics import (
    BLUEPRINTS,
    COMPILATION_EMERGENCY,
    COMPILATION_REQUESTS,
    KERNELS,
    SAFETY,
)
from tests.conftest import own_broker
from tests.ir_samples import blueprint, node
from tests.tezzeret_proc import (
    TAMIYO_TOKEN,
    Answers,
    ServiceProcess,
    produce,
    produce_raw,
    producer,
    read_answers,
    read_messages,
    wait_for_answers,
)

pytestmark = pytest.mark.timeout(900)
KILLS = 4


def tiny(width: int, bid: str) -> pb.BlueprintIR:
    """A small seed-slot blueprint (batch x width -> batch x width) that compiles quickly at every tier."""
    return blueprint(
        node("up", "linear", "input", out_features=width * 2),
        node("act", "relu", "up"),
        node("down", "linear", "act", out_features=width),
        node("res", "add", "input", "down"),
        shape=[-1, width],
        blueprint_id=bid,
    )


def request(
    rid: str, bid: str, strategy: int = 0, bp: pb.BlueprintIR | None = None, **kw: object
) -> pb.CompilationRequest:
    req = pb.CompilationRequest(request_id=rid, blueprint_id=bid, strategy=strategy, requestor="tests", **kw)  # type: ignore[arg-type]
    if bp is not None:
        req.blueprint.CopyFrom(bp)
    req.requested_at.GetCurrentTime()
    return req


def emergency(
    rid: str, bp: pb.BlueprintIR, requestor: str = "tamiyo", token: str = TAMIYO_TOKEN
) -> pb.EmergencyCompile:
    msg = pb.EmergencyCompile(
        request_id=rid,
        blueprint_id=bp.blueprint_id,
        requestor=requestor,
        authorization_token=token,
        reason="loss spike",
    )
    msg.blueprint.CopyFrom(bp)
    msg.requested_at.GetCurrentTime()
    return msg


def invalid_blueprint(bid: str) -> pb.BlueprintIR:
    bp = tiny(8, bid)
    bp.nodes[1].op = "os.system"  # not on the whitelist
    return bp


@pytest.fixture
def broker_a() -> Iterator[LocalBroker]:
    with own_broker("tezzeret-broker", 120) as broker:
        yield broker


@pytest.fixture
def services(broker_a: LocalBroker, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Service processes a test starts: killed at its end, whatever happened (none outlives its broker)."""
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        svc.kill9()


def service(services: list[ServiceProcess], broker: LocalBroker, root: Path, name: str, group: str) -> ServiceProcess:
    svc = ServiceProcess(broker.bootstrap_servers, root, name, group)
    services.append(svc)
    svc.start()
    return svc


def burst(bootstrap: str, tag: str) -> tuple[set[str], set[tuple[str, int]], dict[str, str]]:
    """Produce a mixed burst of >= 200 requests; returns (request ids that must be answered, (topic, index) of
    garbage records that must be dead-lettered once, expected failure reason name by request id)."""
    p = producer(bootstrap)
    expected: set[str] = set()
    failures: dict[str, str] = {}
    bps = [tiny(8 + 4 * i, f"{tag}-bp{i}") for i in range(4)]
    for bp in bps:  # submissions: compiled at the default tier (FAST), answered under their message ids
        expected.add(produce(p, BLUEPRINTS.name, bp, bp.blueprint_id))
    p.flush(30)
    rng = random.Random(7)
    n = 0

    def rid() -> str:
        nonlocal n
        n += 1
        return f"{tag}-r{n}"

    # every tier for one blueprint, by id (resolved from leyline.blueprints) and inline
    for strategy in (1, 2, 3, 4):
        for inline in (False, True):
            r = rid()
            expected.add(r)
            produce(
                p,
                COMPILATION_REQUESTS.name,
                request(r, bps[0].blueprint_id, strategy, bps[0] if inline else None),
                bps[0].blueprint_id,
            )
    # duplicates: many requests for the same few artifacts (coalesced while compiling, cache hits after)
    for _ in range(150):
        bp = rng.choice(bps)
        r = rid()
        expected.add(r)
        produce(
            p,
            COMPILATION_REQUESTS.name,
            request(r, bp.blueprint_id, rng.choice((1, 2)), bp if rng.random() < 0.5 else None),
            bp.blueprint_id,
        )
    for _ in range(15):  # dynamic selection (no tier named)
        bp = rng.choice(bps)
        r = rid()
        expected.add(r)
        produce(p, COMPILATION_REQUESTS.name, request(r, bp.blueprint_id, 0, bp), bp.blueprint_id)
    for i in range(12):  # invalid blueprints
        r = rid()
        expected.add(r)
        failures[r] = "FAILURE_VALIDATION"
        produce(p, COMPILATION_REQUESTS.name, request(r, f"{tag}-bad{i}", 2, invalid_blueprint(f"{tag}-bad{i}")), "bad")
    for _ in range(4):  # an unknown blueprint id
        r = rid()
        expected.add(r)
        failures[r] = "FAILURE_VALIDATION"
        produce(p, COMPILATION_REQUESTS.name, request(r, f"{tag}-nosuch", 2), "nosuch")
    for _ in range(5):  # a deadline already passed
        r = rid()
        expected.add(r)
        failures[r] = "FAILURE_TIMEOUT"
        req = request(r, bps[1].blueprint_id, 3, bps[1], deadline_ms=1)
        req.requested_at.FromMilliseconds(int(time.time() * 1000) - 60_000)
        produce(p, COMPILATION_REQUESTS.name, req, bps[1].blueprint_id)
    for i in range(10):  # authorised emergencies
        r = rid()
        expected.add(r)
        produce(p, COMPILATION_EMERGENCY.name, emergency(r, bps[i % 4]), bps[i % 4].blueprint_id)
    for requestor, token in (("urza", TAMIYO_TOKEN), ("tamiyo", "wrong"), ("mallory", "")):  # unauthorised
        r = rid()
        expected.add(r)
        failures[r] = "FAILURE_UNAUTHORIZED"
        produce(p, COMPILATION_EMERGENCY.name, emergency(r, bps[0], requestor, token), bps[0].blueprint_id)
    garbage: set[tuple[str, int]] = set()
    for topic in (BLUEPRINTS.name, COMPILATION_REQUESTS.name, COMPILATION_EMERGENCY.name):
        for i, value in enumerate(
            (b"\xff\x00garbage", b'{"not": "a request"', pb.PauseCommand(command_id="x").SerializeToString())
        ):
            headers = [("leyline-type", b"leyline.PauseCommand")] if i == 2 else None
            produce_raw(p, topic, value, key=f"garbage-{tag}-{i}", headers=headers)
            garbage.add((topic, i))
    assert p.flush(60) == 0
    return expected, garbage, failures


def check_exactly_once(answers: Answers, expected: set[str], failures: dict[str, str]) -> Counter[str]:
    counts = {r: len(answers.results.get(r, [])) for r in expected}
    missing = sorted(r for r, c in counts.items() if c == 0)
    twice = sorted(r for r, c in counts.items() if c > 1)
    assert not missing, f"{len(missing)} requests unanswered: {missing[:10]}"
    assert not twice, f"{len(twice)} requests answered more than once: {twice[:10]}"
    outcomes: Counter[str] = Counter()
    for r in expected:
        result = answers.results[r][0]
        reason = "success" if result.success else pb.FailureReason.Name(result.failure_reason)
        outcomes[reason] += 1
        if r in failures:
            assert reason == failures[r], (r, result)
        else:
            assert result.success, (r, result)
    for r in expected:  # one audit record per answer, in the same transaction
        assert len(answers.audits.get(r, [])) == 1, r
    return outcomes


def test_every_request_is_answered_once_through_kill_9_at_random_moments(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    svc = service(services, broker_a, tmp_path, "tz-kill", "tz-kill")
    svc.wait_healthy()
    rng = random.Random(11)
    kills: list[float] = []
    done = threading.Event()
    t0 = time.monotonic()

    def killer() -> None:  # kill -9 at random moments, restart at once; four times
        for _ in range(KILLS):
            if done.wait(rng.uniform(1.0, 8.0)):
                return
            svc.kill9()
            kills.append(round(time.monotonic() - t0, 1))
            svc.start()
            svc.wait_healthy(180)

    thread = threading.Thread(target=killer)
    thread.start()
    expected, garbage, failures = burst(bootstrap, "k")
    try:
        answers = wait_for_answers(bootstrap, expected, timeout_s=600)
    finally:
        done.set()
        thread.join(300)
    assert len(kills) == KILLS, kills
    outcomes = check_exactly_once(answers, expected, failures)
    assert all(c == 1 for c in answers.dead_letters.values()), answers.dead_letters  # one letter per bad record
    assert Counter(t for (t, _p, _o) in answers.dead_letters) == Counter(t for (t, _i) in garbage)
    uncommitted = read_answers(bootstrap, committed=False)
    seen_raw = sum(len(v) for r, v in uncommitted.results.items() if r in expected)
    tiers = Counter(pb.CompilationStrategy.Name(c.strategy) for c in answers.completes)
    print(
        f"\nkill -9 at {kills} s; {len(expected)} requests, outcomes {dict(outcomes)}; "
        f"{seen_raw} results read_uncommitted (aborted duplicates included), {len(expected)} read_committed; "
        f"compiles completed by tier {dict(tiers)}; {svc.starts} starts"
    )
    assert {"STRATEGY_EMERGENCY", "STRATEGY_FAST", "STRATEGY_STANDARD", "STRATEGY_AGGRESSIVE"} <= set(tiers)
    svc.stop()


def test_two_services_share_the_load_and_survive_one_being_killed(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    a = service(services, broker_a, tmp_path, "tz-a", "tz-pair")
    b = service(services, broker_a, tmp_path, "tz-b", "tz-pair")
    for s in (a, b):
        s.wait_healthy()
    p = producer(bootstrap)
    expected: set[str] = set()

    def send(phase: str, bps: list[pb.BlueprintIR], n: int) -> set[str]:
        ids = set()
        for i in range(n):
            bp = bps[i % len(bps)]
            r = f"pair-{phase}-r{i}"
            ids.add(r)
            produce(p, COMPILATION_REQUESTS.name, request(r, bp.blueprint_id, 1 + i % 2, bp), bp.blueprint_id)
        assert p.flush(30) == 0
        return ids

    # both share the load: six blueprints spread over the three partitions, answered by both members
    first = send("one", [tiny(6 + 2 * i, f"pair-one-{i}") for i in range(6)], 90)
    expected |= first
    answers = wait_for_answers(bootstrap, first, timeout_s=240, settle_s=0)
    workers = Counter(answers.results[r][0].worker_id for r in first if r in answers.results)
    assert set(workers) == {"tz-a", "tz-b"}, workers
    # then a is killed with compiles in flight; b takes its partitions after the session timeout
    expected |= send("two", [tiny(7 + 2 * i, f"pair-two-{i}") for i in range(6)], 90)
    time.sleep(1.5)
    a.kill9()
    answers = wait_for_answers(bootstrap, expected, timeout_s=300)
    check_exactly_once(answers, expected, {})
    print(f"\nanswers by worker: {dict(Counter(answers.results[r][0].worker_id for r in expected))}")
    b.stop()


def test_hostile_records_on_every_input_topic_leave_the_service_up(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    svc = service(services, broker_a, tmp_path, "tz-hostile", "tz-hostile")
    svc.wait_healthy()
    p = producer(bootstrap)
    expected, failures = set(), {}
    huge = tiny(8, "huge")  # 5,000 nodes: over max_nodes (4096), built as a record (the file loader refuses it)
    for i in range(5000):
        huge.nodes.add(id=f"n{i}", op="relu", inputs=["res" if i == 0 else f"n{i - 1}"])
    huge.output = "n4999"
    wide = tiny(8, "wide")
    wide.nodes[0].attributes[0].i = 1 << 40  # out_features far over max_dim
    cases = {
        "huge": request("h-huge", "huge", 2, huge),
        "wide": request("h-wide", "wide", 2, wide),
        "mismatch": request("h-mismatch", "other-id", 2, tiny(8, "mine")),
        "noblueprint": request("h-none", "", 2),
        "longid": request("h-long", "x" * 300, 2),
        "device": request("h-device", "dev", 2, tiny(8, "dev"), device="tpu:0"),
    }
    for name, msg in cases.items():
        expected.add(msg.request_id)
        failures[msg.request_id] = "FAILURE_VALIDATION"
        produce(p, COMPILATION_REQUESTS.name, msg, name)
    bad_bp = invalid_blueprint("bad-submission")
    expected.add(produce(p, BLUEPRINTS.name, bad_bp, "bad-submission"))
    failures.update({r: "FAILURE_VALIDATION" for r in expected if r not in failures})
    json_headers = [("content-type", b"application/json"), ("leyline-type", b"leyline.CompilationRequest")]
    produce_raw(p, COMPILATION_REQUESTS.name, b'{"request_id": 5, "strategy": "NOPE"}', headers=json_headers)
    produce_raw(p, COMPILATION_REQUESTS.name, b"\x00" * 200_000)
    produce_raw(p, COMPILATION_EMERGENCY.name, b"", headers=[("leyline-version", b"9.0")])
    produce_raw(p, BLUEPRINTS.name, bytes(random.Random(3).randbytes(4096)))
    assert p.flush(30) == 0
    answers = wait_for_answers(bootstrap, expected, timeout_s=120)
    check_exactly_once(answers, expected, failures)
    assert len(answers.dead_letters) == 4 and set(answers.dead_letters.values()) == {1}
    assert "max_nodes" in answers.results["h-huge"][0].error or "4096" in answers.results["h-huge"][0].error
    body = svc.wait_healthy(10)
    assert body["status"] in ("ok", "degraded")
    svc.stop()


def test_an_emergency_overtakes_a_full_queue_and_health_and_metrics_are_served(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    svc = service(services, broker_a, tmp_path, "tz-emerg", "tz-emerg")
    svc.wait_healthy()
    p = producer(bootstrap)
    normal = set()
    for i in range(5):  # STANDARD compiles: two run, three queue (each many seconds on this CPU)
        bp = tiny(10 + 2 * i, f"slow-{i}-{uuid.uuid4().hex[:6]}")
        r = f"slow-{i}"
        normal.add(r)
        produce(p, COMPILATION_REQUESTS.name, request(r, bp.blueprint_id, 3, bp), bp.blueprint_id)
    p.flush(30)
    time.sleep(3.0)  # the normal lane is full now
    health = svc.wait_healthy(10)
    lanes = {lane["lane"]: lane for lane in health["queue"]["lanes"]}
    assert lanes["normal"]["running"]["normal"] == 2 or sum(lanes["normal"]["running"].values()) == 2, lanes
    bp = tiny(9, f"urgent-{uuid.uuid4().hex[:6]}")
    produce(p, COMPILATION_EMERGENCY.name, emergency("urgent", bp), bp.blueprint_id)
    produce(p, COMPILATION_EMERGENCY.name, emergency("intruder", bp, "mallory", ""), bp.blueprint_id)
    p.flush(30)
    answers = wait_for_answers(bootstrap, {"urgent", "intruder"}, timeout_s=120, settle_s=0)
    urgent = answers.results["urgent"][0]
    assert urgent.success and urgent.strategy == pb.STRATEGY_EMERGENCY, urgent
    assert urgent.queue_ms < 500, urgent  # its compile started within the emergency budget of being produced
    assert not any(r in answers.results for r in normal), "the emergency was answered after queued normal work"
    intruder = answers.results["intruder"][0]
    assert intruder.failure_reason == pb.FAILURE_UNAUTHORIZED and "mallory" in intruder.error
    assert answers.audits["intruder"][0].authorized is False
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10).read().decode()
    for name in (
        "tezzeret_compilation_duration_ms",
        "tezzeret_circuit_breaker_state",
        "tezzeret_conservative_mode_active",
        "tezzeret_wal_transactions_total",
        "tezzeret_concurrent_compilations",
        "tezzeret_memory_usage_gb",
        "tezzeret_cache_hit_rate",
        "tezzeret_wal_recovery_duration_ms",
    ):
        assert name in metrics, name
    assert 'tezzeret_requests_total{kind="emergency",outcome="UNAUTHORIZED"} 1.0' in metrics
    print(f"\nemergency answered: queue_ms {urgent.queue_ms}, total_ms {urgent.total_ms} with the normal lane full")
    assert json.loads(json.dumps(health))["wal"]["usable"] is True
    svc.stop()


def test_idle_time_upgrades_the_most_used_artifact_and_publishes_it(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    svc = ServiceProcess(bootstrap, tmp_path, "tz-idle", "tz-idle", {"service": {"idle_upgrade_after_seconds": 2}})
    services.append(svc)
    svc.start()
    svc.wait_healthy()
    p = producer(bootstrap)
    bp = tiny(8, "idle-bp")
    for i in range(3):  # used three times at EMERGENCY: worth a FAST compile when nothing else waits
        produce(p, COMPILATION_REQUESTS.name, request(f"idle-{i}", bp.blueprint_id, 1, bp), bp.blueprint_id)
    assert p.flush(30) == 0
    wait_for_answers(bootstrap, {"idle-0", "idle-1", "idle-2"}, timeout_s=120, settle_s=0)
    deadline = time.monotonic() + 120
    upgraded: list[pb.CompiledKernelArtifact] = []
    while not upgraded and time.monotonic() < deadline:
        time.sleep(1.0)
        kernels = [
            m
            for m in read_messages(bootstrap, [KERNELS.name], timeout_s=10)
            if isinstance(m, pb.CompiledKernelArtifact)
        ]
        upgraded = [k for k in kernels if k.blueprint_id == "idle-bp" and k.strategy == pb.STRATEGY_FAST]
    assert upgraded, "no idle upgrade to FAST was published"
    completes = [c for c in read_answers(bootstrap).completes if c.artifact_id == upgraded[0].artifact_id]
    assert len(completes) == 1 and completes[0].request_id == ""  # published like any other, for no request
    produce(p, COMPILATION_REQUESTS.name, request("idle-after", bp.blueprint_id, 2, bp), bp.blueprint_id)
    assert p.flush(30) == 0
    after = wait_for_answers(bootstrap, {"idle-after"}, timeout_s=60, settle_s=0).results["idle-after"][0]
    assert after.artifact_id == upgraded[0].artifact_id and after.cache_level == pb.CACHE_L1, after


def test_a_compile_timeout_enters_conservative_mode_on_leyline_safety(
    broker_a: LocalBroker, tmp_path: Path, services: list[ServiceProcess]
) -> None:
    bootstrap = broker_a.bootstrap_servers
    svc = ServiceProcess(bootstrap, tmp_path, "tz-slow", "tz-slow", {"service": {"tier_timeout_scale": 0.0002}})
    services.append(svc)
    svc.start()
    svc.wait_healthy()
    p = producer(bootstrap)
    bp = tiny(8, "timeout-bp")
    produce(p, COMPILATION_REQUESTS.name, request("too-slow", bp.blueprint_id, 3, bp), bp.blueprint_id)
    assert p.flush(30) == 0
    result = wait_for_answers(bootstrap, {"too-slow"}, timeout_s=120, settle_s=0).results["too-slow"][0]
    assert result.failure_reason == pb.FAILURE_TIMEOUT, result
    deadline = time.monotonic() + 30
    changes: list[pb.SafetyEvent] = []
    while not changes and time.monotonic() < deadline:
        time.sleep(1.0)
        events = [m for m in read_messages(bootstrap, [SAFETY.name], timeout_s=10) if isinstance(m, pb.SafetyEvent)]
        changes = [e for e in events if e.WhichOneof("detail") == "conservative_mode"]
    assert changes and changes[0].conservative_mode.active, changes
    health = fetch_health(svc.health_url, 5)[1]
    assert health["conservative_active"] and health["status"] == "degraded", health
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10).read().decode()
    assert "tezzeret_conservative_mode_active 1.0" in metrics
    produce(p, COMPILATION_REQUESTS.name, request("while-conservative", bp.blueprint_id, 4, bp), bp.blueprint_id)
    assert p.flush(30) == 0
    lowered = wait_for_answers(bootstrap, {"while-conservative"}, timeout_s=120, settle_s=0)
    answer = lowered.results["while-conservative"][0]
    assert answer.strategy == pb.STRATEGY_STANDARD and "conservative" in answer.strategy_reason, answer
    assert answer.conservative_mode
