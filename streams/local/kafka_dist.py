"""A pinned Apache Kafka resolved from Maven Central into a local cache, with console-tool wrappers.

The release tarball is the broker's runtime classpath plus kafka-tools; Maven gives us the same jars. The log4j
SLF4J binding is added by the tarball only, never by a POM, so we add it here or the broker logs nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.streams.exceptions import ProvisioningError

LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"

# Console tools an operator expects, by script name (main classes of Kafka 4.0 to 4.2).
CONSOLE_TOOLS: dict[str, str] = {
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-acls": "org.apache.kafka.tools.AclCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-transactions": "org.apache.kafka.tools.TransactionsCommand",  # Tezzeret answers in transactions
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-dump-log": "kafka.tools.DumpLogSegments",
    "kafka-storage": "kafka.tools.StorageTool",
}

TOOL_JVM_OPTS = "-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>esper.local</groupId><artifactId>kafka-classpath</artifactId><version>0</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_TOOLS_LOG4J = """status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""


def java_executable() -> str:
    """JAVA_HOME's java, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ProvisioningError("java not found: install a Java 17+ runtime or set JAVA_HOME")
    return found


@dataclass(frozen=True)
class KafkaDistribution:
    """The jars of one Kafka version under `<home>/kafka/<version>`, and scripts that run its tools."""

    version: str
    root: Path

    @classmethod
    def in_home(cls, home: Path, version: str) -> KafkaDistribution:
        return cls(version=version, root=home.resolve() / "kafka" / version)

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def tools_log4j(self) -> Path:
        return self.root / "config" / "tools-log4j2.properties"

    @property
    def _marker(self) -> Path:
        return self.root / ".complete"

    def is_provisioned(self) -> bool:
        return self._marker.exists()

    def classpath(self) -> str:
        return str(self.libs / "*")

    def provision(self) -> bool:
        """Resolve the jars once (Maven keeps its own cache in ~/.m2); returns True when work was done."""
        if self.is_provisioned():
            if not all((self.bin / name).exists() for name in CONSOLE_TOOLS):  # a tool added since
                self._write_tools()
            return False
        mvn = shutil.which("mvn")
        if not mvn:
            raise ProvisioningError("mvn not found: install Apache Maven to fetch Kafka from Maven Central")
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_POM.format(kafka=self.version, log4j=LOG4J_VERSION))
            staged = Path(tmp) / "libs"
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                DEPENDENCY_PLUGIN,
                f"-DoutputDirectory={staged}",
                "-DincludeScope=runtime",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not any(staged.glob(f"kafka_2.13-{self.version}.jar")):
                tail = (proc.stdout + proc.stderr)[-4000:]
                raise ProvisioningError(
                    f"Maven could not resolve Kafka {self.version} (exit {proc.returncode}):\n{tail}"
                )
            if self.libs.exists():
                shutil.rmtree(self.libs)
            staged.rename(self.libs)
        self._write_tools()
        self._marker.write_text(self.version + "\n")
        return True

    def _write_tools(self) -> None:
        self.tools_log4j.parent.mkdir(parents=True, exist_ok=True)
        self.tools_log4j.write_text(_TOOLS_LOG4J)
        self.bin.mkdir(parents=True, exist_ok=True)
        java = java_executable()
        for name, main_class in CONSOLE_TOOLS.items():
            script = self.bin / name
            script.write_text(
                "#!/bin/sh\n"
                f"# {name}: Apache Kafka {self.version} ({main_class}) from the Maven-resolved classpath.\n"
                f'exec "{java}" ${{KAFKA_TOOL_OPTS:-{TOOL_JVM_OPTS}}} '
                f'-Dlog4j2.configurationFile="{self.tools_log4j}" '
                f'-cp "{self.classpath()}" {main_class} "$@"\n'
            )
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def tool(self, name: str) -> Path:
        """Path of a console-tool wrapper script (provisioning first if needed)."""
        if name not in CONSOLE_TOOLS:
            raise KeyError(f"unknown Kafka tool {name!r}; known: {', '.join(sorted(CONSOLE_TOOLS))}")
        self.provision()
        return self.bin / name

    def java_command(self, main_class: str, args: Sequence[str], jvm_opts: Sequence[str]) -> list[str]:
        return [java_executable(), *jvm_opts, "-cp", self.classpath(), main_class, *args]
