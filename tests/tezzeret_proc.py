"""Tezzeret service processes for integration tests (the real `esper compiler run`, killed with SIGKILL where a test
says so), and readers of what they answered, read_committed as a user reads it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from google.protobuf.message import Message as ProtoMessage

from esper.compiler.service.health import fetch_health
from esper.proto import leyline_pb2 as pb
from esper.streams.client_config import kafka_config
from esper.streams.envelope import decode, encode, new_envelope
from esper.streams.exceptions import DecodeError
from esper.streams.topics import AUDIT, COMPILATION_RESULTS, DEADLETTER, TOPICS_BY_NAME
from tests.conftest import free_port

TAMIYO_TOKEN = "tamiyo-secret-token"


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ServiceProcess:
    """One `esper compiler run` process; restartable, killable."""

    bootstrap: str
    root: Path  # the shared state of a test: store, keys
    instance: str
    group: str
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0

    def config_path(self) -> Path:
        service = {
            "instance_id": self.instance,
            "group_id": self.group,
            "store": str(self.root / "store"),
            "http_port": self.port,
        }
        block: dict[str, Any] = {
            "compilation": {"default_strategy": "FAST"},
            "wal": {"path": str(self.root / f"wal-{self.instance}")},
            "authorization": {
                "roles": {"tamiyo": ["emergency"], "urza": []},
                "token_sha256": {"tamiyo": _sha256(TAMIYO_TOKEN)},
            },
            "service": service,
        }
        for section, values in self.extra.items():
            block.setdefault(section, {}).update(values)
        path = self.root / f"{self.instance}.yaml"
        path.write_text(yaml.safe_dump({"tezzeret": block}))
        return path

    def start(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "ESPER_BOOTSTRAP_SERVERS": self.bootstrap,
            "ESPER_HOME": str(self.root / "home"),
            "ESPER_KEYS_DIR": str(self.root / "keys"),
            "ESPER_LOG_LEVEL": "INFO",
        }
        log = open(self.root / f"{self.instance}.log", "ab")  # noqa: SIM115 - the child owns it
        log.write(f"---- start {self.starts}\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esper.cli", "compiler", "run", "--config", str(self.config_path())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health/tezzeret"

    def wait_healthy(self, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.instance} exited {self.proc.returncode}: see {self.log_tail()}")
            try:
                status, body = fetch_health(self.health_url, 2)
                if status == 200:
                    return body
                last = body
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"{self.instance} not healthy in {timeout_s} s: {last}\n{self.log_tail()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the sandbox workers too: the whole process group
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def log_tail(self, n: int = 40) -> str:
        path = self.root / f"{self.instance}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def producer(bootstrap: str) -> Producer:
    return Producer(kafka_config({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}))


def produce(p: Producer, topic: str, message: Any, key: str, **envelope: str) -> str:
    """Produce one Leyline message; returns its envelope message id."""
    env = new_envelope(message, producer="tests", **envelope)
    value, headers = encode(message, env)
    p.produce(topic, value=value, key=key.encode(), headers=headers)
    p.poll(0)
    return env.message_id


def produce_raw(p: Producer, topic: str, value: bytes, key: str = "raw", headers: Any = None) -> None:
    p.produce(topic, value=value, key=key.encode(), headers=headers)
    p.poll(0)


@dataclass
class Answers:
    results: dict[str, list[pb.CompilationResult]]
    completes: list[pb.CompilationComplete]
    dead_letters: dict[tuple[str, int, int], int]
    audits: dict[str, list[pb.AuditRecord]]


def read_messages(
    bootstrap: str, topics: Sequence[str], *, committed: bool = True, timeout_s: float = 5.0
) -> list[ProtoMessage]:
    """Every decodable message of `topics`, each partition read from its beginning to its end."""
    consumer = Consumer(
        kafka_config(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
                "enable.partition.eof": True,
            }
        )
    )
    messages: list[ProtoMessage] = []
    try:
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(TOPICS_BY_NAME[t].partitions)]
        consumer.assign(parts)
        remaining = {(tp.topic, tp.partition) for tp in parts}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    remaining.discard((msg.topic(), msg.partition()))
                    continue
                try:
                    messages.append(decode(msg.value(), msg.headers(), msg.topic()).message)
                except DecodeError:
                    continue
    finally:
        consumer.close()
    return messages


def read_answers(bootstrap: str, *, committed: bool = True, timeout_s: float = 5.0) -> Answers:
    """Everything the service answered so far (each topic read to its end)."""
    results: dict[str, list[pb.CompilationResult]] = defaultdict(list)
    completes: list[pb.CompilationComplete] = []
    letters: dict[tuple[str, int, int], int] = defaultdict(int)
    audits: dict[str, list[pb.AuditRecord]] = defaultdict(list)
    topics = (COMPILATION_RESULTS.name, DEADLETTER.name, AUDIT.name)
    for message in read_messages(bootstrap, topics, committed=committed, timeout_s=timeout_s):
        if isinstance(message, pb.CompilationResult):
            results[message.request_id].append(message)
        elif isinstance(message, pb.CompilationComplete):
            completes.append(message)
        elif isinstance(message, pb.DeadLetter):
            letters[message.origin_topic, message.origin_partition, message.origin_offset] += 1
        elif isinstance(message, pb.AuditRecord):
            audits[message.request_id].append(message)
    return Answers(dict(results), completes, dict(letters), dict(audits))


def wait_for_answers(bootstrap: str, expected: set[str], timeout_s: float, *, settle_s: float = 3.0) -> Answers:
    """Read until every expected request id has an answer (then once more after `settle_s`, so a duplicate that
    was on its way would be seen too)."""
    deadline = time.monotonic() + timeout_s
    answers = read_answers(bootstrap)
    while not expected <= answers.results.keys() and time.monotonic() < deadline:
        time.sleep(1.0)
        answers = read_answers(bootstrap)
    time.sleep(settle_s)
    return read_answers(bootstrap)
