"""Shared fixtures: a real Kafka broker, started once per session and never replaced by a mock.

Which broker: KAFKA_BOOTSTRAP_SERVERS (or ESPER_BOOTSTRAP_SERVERS) when set; else testcontainers when a Docker
engine really answers; else the project's local broker under .esper/test-broker. A broker that cannot start fails
every test that needs it (never skips).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.settings import EsperSettings, load_settings
from esper.streams.admin import create_topics, ensure_reachable
from esper.streams.exceptions import ClusterUnavailableError
from esper.streams.local.broker import LocalBroker
from esper.streams.topics import ALL_TOPICS

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = REPO / ".esper" / "test"
# Another checkout on the same machine can move its test brokers with ESPER_TEST_BROKER_PORT.
TEST_PORT = int(os.environ.get("ESPER_TEST_BROKER_PORT", "19092"))
TEST_CONTROLLER_PORT = TEST_PORT + 1


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    """The official apache/kafka image of docker-compose.yml, one KRaft node. testcontainers' KafkaContainer
    runs Confluent's start scripts, which that image lacks, so this is a generic container whose advertised
    listener is a host port chosen before it starts."""
    from testcontainers.core.container import DockerContainer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    container = (
        DockerContainer(f"apache/kafka:{test_settings().kafka_version}")
        .with_bind_ports(9092, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
    )
    with container:
        bootstrap = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                ensure_reachable(bootstrap, timeout_s=5)
                break
            except ClusterUnavailableError:
                if time.monotonic() > deadline:
                    raise
        yield bootstrap


def test_settings() -> EsperSettings:
    """Settings of the test broker (its own home and ports, so it never touches a developer's broker)."""
    return load_settings(
        home=TEST_HOME, broker_port=TEST_PORT, controller_port=TEST_CONTROLLER_PORT, bootstrap_servers=None
    )


def free_port() -> int:
    """A TCP port nothing listens on now (for a service a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_broker(name: str, port_offset: int) -> Iterator[LocalBroker]:
    """A broker of its own (own data and ports, every Leyline topic): a test may stop and restart it without
    disturbing the shared test broker or the cluster the other tests use. Fails (never skips) when it cannot start."""
    broker = LocalBroker(
        load_settings(
            home=TEST_HOME,
            broker_port=TEST_PORT + port_offset,
            controller_port=TEST_PORT + port_offset + 1,
            bootstrap_servers=None,
        ).cluster(),
        name=name,
    )
    broker.down()  # one left behind by an interrupted run; a no-op otherwise
    shutil.rmtree(broker.data_dir, ignore_errors=True)  # a fresh log: no records or offsets of an earlier run
    try:
        broker.up(timeout_s=180)
        create_topics(broker.bootstrap_servers, ALL_TOPICS)
    except Exception as e:
        pytest.fail(f"the Kafka broker {name} could not start: {e}", pytrace=False)
    try:
        yield broker
    finally:
        gc.collect()  # clients left in reference cycles go before the broker does
        broker.down()


def _external_bootstrap() -> str | None:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("ESPER_BOOTSTRAP_SERVERS") or None


@pytest.fixture(scope="session")
def test_broker() -> Iterator[LocalBroker]:
    """The project's local test broker, started (or joined, if another session runs it) under a file lock."""
    broker = LocalBroker(test_settings().cluster())
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    with open(TEST_HOME / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started_here = not broker.status().running
        try:
            broker.up(timeout_s=180)
        except Exception as e:
            pytest.fail(f"the Kafka broker could not start: {e}", pytrace=False)
    yield broker
    # In CI nothing else shares it: stop it. Developers keep it warm for the next run.
    if started_here and (os.environ.get("CI") or os.environ.get("ESPER_TEST_BROKER_STOP")):
        gc.collect()  # clients the tests left in reference cycles, destroyed now rather than reconnecting to nothing
        broker.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap servers of a real broker with every Leyline topic created."""
    external = _external_bootstrap()
    if external:
        create_topics(external, ALL_TOPICS)
        yield external
    elif _docker_engine_answers():
        with _kafka_container() as bootstrap:
            create_topics(bootstrap, ALL_TOPICS)
            yield bootstrap
    else:
        broker: LocalBroker = request.getfixturevalue("test_broker")
        create_topics(broker.bootstrap_servers, ALL_TOPICS)
        yield broker.bootstrap_servers


@pytest.fixture
def run_id() -> str:
    """A unique id for this test's records (keys, correlation ids), so shared topics can be filtered."""
    return uuid.uuid4().hex[:12]
