"""Cluster administration over confluent-kafka's AdminClient: idempotent topic creation and inspection."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from esper.streams.exceptions import ClusterUnavailableError, StreamsError, UnknownTopicError
from esper.streams.topics import ALL_TOPICS, TopicSpec


def admin_client(bootstrap_servers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers})


def ensure_reachable(bootstrap_servers: str, timeout_s: float = 10.0) -> None:
    try:
        admin_client(bootstrap_servers).list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise ClusterUnavailableError(f"no Kafka cluster answers at {bootstrap_servers}: {e}") from e


def create_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec] = ALL_TOPICS, replication_factor: int = 1
) -> dict[str, str]:
    """Create the topics that do not exist yet; returns name -> "created", or "exists" and how it differs."""
    specs = list(specs)
    ensure_reachable(bootstrap_servers)
    admin = admin_client(bootstrap_servers)
    futures = admin.create_topics(
        [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=s.config)
            for s in specs
        ],
        operation_timeout=30,
    )
    outcome: dict[str, str] = {}
    existing: list[TopicSpec] = []
    by_name = {s.name: s for s in specs}
    for name, future in futures.items():
        try:
            future.result()
            outcome[name] = "created"
        except KafkaException as e:
            if e.args[0].code() == e.args[0].TOPIC_ALREADY_EXISTS:
                existing.append(by_name[name])
            else:
                raise StreamsError(f"could not create topic {name}: {e}") from e
    for name, differences in topic_drift(admin, existing).items():
        outcome[name] = "exists" + (f", differs from the registry: {'; '.join(differences)}" if differences else "")
    return outcome


def topic_drift(admin: AdminClient, specs: list[TopicSpec]) -> dict[str, list[str]]:
    """How each existing topic differs from its registry entry (partitions, configs): an operator's cluster may
    have been set up by hand, and creation that only says "exists" would hide it."""
    if not specs:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    try:
        metadata = admin.list_topics(timeout=10).topics
        configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    except KafkaException as e:
        raise StreamsError(f"could not read the configuration of the existing topics: {e}") from e
    drift: dict[str, list[str]] = {}
    for spec in specs:
        found = metadata.get(spec.name)
        partitions = len(found.partitions) if found is not None else 0
        differences = [f"partitions={partitions} (registry {spec.partitions})"] if partitions != spec.partitions else []
        actual = configs[spec.name]
        for key, wanted in spec.config.items():
            have = actual[key].value if key in actual else None
            if have != wanted:
                differences.append(f"{key}={have} (registry {wanted})")
        drift[spec.name] = differences
    return drift


def ensure_topic(bootstrap_servers: str, topic: str) -> list[int]:
    """The topic's partition ids; UnknownTopicError now rather than after a client's 30 s metadata wait."""
    try:
        metadata = admin_client(bootstrap_servers).list_topics(topic, timeout=10)
    except KafkaException as e:
        raise ClusterUnavailableError(f"no Kafka cluster answers at {bootstrap_servers}: {e}") from e
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise UnknownTopicError(f"topic {topic} does not exist on {bootstrap_servers} (see `esper topics create`)")
    return sorted(found.partitions)
