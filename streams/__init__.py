"""Kafka plumbing: the only package that talks to confluent-kafka (topics, envelope codec, producer, consumer,
dead letters and redaction, admin). The local broker manager, developer tooling, lives apart in `local/`."""
