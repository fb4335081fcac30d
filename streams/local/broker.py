"""A real single-node Apache Kafka (KRaft, broker+controller in one JVM) managed by the project.

Storage is formatted once; the data directory survives `down`/`up`. Ready means an AdminClient metadata call
succeeds. Stop is SIGTERM (controlled shutdown), then a wait, then SIGKILL only if the JVM will not go.
"""

from __future__ import annotations

import base64
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka.admin import AdminClient

from esper.streams.exceptions import BrokerStartError
from esper.streams.local.cluster import ClusterConfig
from esper.streams.local.kafka_dist import KafkaDistribution

_SERVER_LOG4J = """status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


def new_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding: what `kafka-storage random-uuid` prints."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def server_properties(data_dir: Path, port: int, controller_port: int) -> dict[str, str]:
    """Single-node settings: one replica of everything, small internal topics, no auto-created topics."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        # The cleaner stays on (Faust changelogs are compacted) but its 128 MiB default buffer would not fit.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "log.cleaner.threads": "1",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
    }


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    ready: bool
    pid: int | None
    bootstrap_servers: str
    data_dir: Path
    log_file: Path


class LocalBroker:
    """Provision, format, start, probe and stop one local Kafka broker under `settings.home`."""

    def __init__(self, settings: ClusterConfig, name: str = "broker") -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.dist = KafkaDistribution.in_home(self.home, settings.kafka_version)
        self.dir = self.home / name
        self.data_dir = self.dir / "data"
        self.log_dir = self.dir / "logs"
        self.config_file = self.dir / "server.properties"
        self.log4j_file = self.dir / "log4j2.properties"
        self.pid_file = self.dir / "broker.pid"
        self.cds_archive = self.dir / "kafka-cds.jsa"

    @property
    def bootstrap_servers(self) -> str:
        return self.settings.local_bootstrap_servers

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 120.0) -> BrokerStatus:
        """Start the broker unless it already runs; return once an AdminClient call succeeds."""
        self.dist.provision()
        self._write_config()
        pid = self._running_pid()
        if pid is None:
            self.format_storage()
            child = self._start()
            self._wait_ready(lambda: child.poll() is None, timeout_s)
        else:
            self._wait_ready(lambda: self._running_pid() == pid, timeout_s)
        return self.status()

    def down(self, timeout_s: float = 60.0) -> bool:
        """Controlled shutdown; returns False when nothing was running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (chaos tests: no controlled shutdown)."""
        pid = self._running_pid()
        if pid is not None:
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(timeout=30)
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            ready=pid is not None and self._metadata_ok(timeout_s=2.0),
            pid=pid,
            bootstrap_servers=self.bootstrap_servers,
            data_dir=self.data_dir,
            log_file=self.log_file,
        )

    def log_tail(self, lines: int = 60) -> str:
        parts = []
        for path in (self.log_dir / "server.out", self.log_file):
            if path.exists():
                parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts) or "(no broker log yet)"

    # -- internals -------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        props = server_properties(self.data_dir, self.settings.broker_port, self.settings.controller_port)
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.log4j_file.write_text(_SERVER_LOG4J.format(logs=self.log_dir))

    def _jvm_opts(self) -> list[str]:
        opts = [
            "-Xms128m",
            f"-Xmx{self.settings.broker_heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.log_dir}",
        ]
        # AppCDS: the first run dumps the loaded classes at exit, later runs map them (faster start).
        if self.cds_archive.exists():
            opts.append(f"-XX:SharedArchiveFile={self.cds_archive}")
        else:
            opts.append(f"-XX:ArchiveClassesAtExit={self.cds_archive}")
        return opts

    def format_storage(self, cluster_id: str | None = None) -> None:
        """Format the data directory once (a no-op when it already is): what `kafka-storage format` does."""
        if (self.data_dir / "meta.properties").exists():
            return
        self._write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # `--cluster-id=ID` in one argument: a random id may start with "-", which the tool's parser would
        # otherwise read as an option ("argument --cluster-id/-t: expected one argument").
        cluster_id = cluster_id or new_cluster_id()
        cmd = self.dist.java_command(
            "kafka.tools.StorageTool",
            ["format", f"--cluster-id={cluster_id}", f"--config={self.config_file}", "--ignore-formatted"],
            [
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={self.dist.tools_log4j}",
            ],
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerStartError(f"kafka-storage format failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")

    def _start(self) -> subprocess.Popen[bytes]:
        cmd = self.dist.java_command("kafka.Kafka", [str(self.config_file)], self._jvm_opts())
        with open(self.log_dir / "server.out", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def _running_pid(self) -> int | None:
        """The recorded pid, if that process is still our broker (guards against pid reuse)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                proc.wait(timeout=1)
                return None
            if str(self.config_file) in proc.cmdline():
                return pid
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def _metadata_ok(self, timeout_s: float) -> bool:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "socket.timeout.ms": 2000,
            "log_level": 0,
            "logger": _silent_logger(),
        }
        admin = AdminClient(config)
        try:
            md = admin.list_topics(timeout=timeout_s)
            return bool(md.brokers)
        except Exception:
            return False

    def _wait_ready(self, alive: Callable[[], bool], timeout_s: float) -> None:
        """A child we just launched is watched through its Popen, not `_running_pid`: for a moment after exec
        the kernel has not yet set the new image's argv, /proc/PID/cmdline reads empty and the pid match fails."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not alive():
                raise BrokerStartError(f"the Kafka broker exited during start-up:\n{self.log_tail()}")
            if self._metadata_ok(timeout_s=2.0):
                return
            time.sleep(0.25)
        raise BrokerStartError(f"the Kafka broker was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")


def _silent_logger() -> logging.Logger:
    """librdkafka logs connection refusals while the broker starts; a null logger keeps the console clean."""
    logger = logging.getLogger("esper.streams.local.broker.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
