"""The topic registry and the settings layering."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import esper.streams
from esper.settings import load_settings
from esper.streams.local.broker import LocalBroker, new_cluster_id, server_properties
from esper.streams.local.cluster import ClusterConfig, bootstrap_servers
from esper.streams.topics import ALL_TOPICS

DESIGN_TOPICS = {
    "leyline.blueprints",
    "leyline.compilation.requests",
    "leyline.compilation.emergency",
    "leyline.compilation.results",
    "leyline.kernels",
    "leyline.telemetry",
    "leyline.safety",
    "leyline.control.pause",
    "leyline.deadletter",
    "leyline.audit",  # Tezzeret's audit of every request (the forge spec's security section)
}


def test_registry_holds_the_design_topics_once_each() -> None:
    names = [t.name for t in ALL_TOPICS]
    assert sorted(names) == sorted(DESIGN_TOPICS)


def test_design_history_and_safety_facts_are_retained_forever() -> None:
    by_name = {t.name: t for t in ALL_TOPICS}
    assert by_name["leyline.blueprints"].config["retention.ms"] == "-1"
    assert by_name["leyline.safety"].config["retention.ms"] == "-1"
    assert by_name["leyline.kernels"].config["cleanup.policy"] == "compact"


def test_environment_overrides_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "esper.toml"
    config.write_text('bootstrap_servers = "file:9092"\nbroker_port = 1234\n')
    monkeypatch.setenv("ESPER_CONFIG", str(config))
    monkeypatch.delenv("ESPER_BOOTSTRAP_SERVERS", raising=False)
    assert load_settings().bootstrap_servers == "file:9092"
    assert load_settings().broker_port == 1234
    monkeypatch.setenv("ESPER_BOOTSTRAP_SERVERS", "env:9092")
    assert bootstrap_servers(load_settings().cluster()) == "env:9092"


def test_without_a_configured_cluster_the_local_broker_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPER_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("ESPER_CONFIG", "/nonexistent/esper.toml")
    assert bootstrap_servers(load_settings(broker_port=9999).cluster()) == "127.0.0.1:9999"


def test_streams_takes_its_configuration_explicitly(tmp_path: Path) -> None:
    config = ClusterConfig(None, tmp_path, "4.2.0", broker_port=19999, controller_port=19998, broker_heap="256m")
    assert bootstrap_servers(config) == LocalBroker(config).bootstrap_servers == "127.0.0.1:19999"
    assert bootstrap_servers(ClusterConfig("far:9092", tmp_path, "4.2.0", 1, 2, "1g")) == "far:9092"
    # no module of streams/ reads the CLI's settings, and the client plumbing does not depend on the local broker
    # manager (developer tooling in streams/local/)
    package = Path(esper.streams.__file__).resolve().parent
    for module in package.rglob("*.py"):
        plumbing = module.parent == package
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            assert "esper.settings" not in names, module.name
            if plumbing:
                assert not any(n.startswith("esper.streams.local") for n in names), module.name


def test_the_cli_settings_build_the_cluster_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPER_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("ESPER_CONFIG", "/nonexistent/esper.toml")
    config = load_settings(home=Path("/x"), broker_port=1, controller_port=2, broker_heap="3m").cluster()
    assert config == ClusterConfig(None, Path("/x"), load_settings().kafka_version, 1, 2, "3m")


def test_single_node_broker_settings() -> None:
    props = server_properties(Path("/data"), 9092, 9093)
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.num.partitions"] == "1"
    assert all(props[k] == "1" for k in props if k.endswith("replication.factor"))
    cid = new_cluster_id()
    assert len(cid) == 22 and "=" not in cid
