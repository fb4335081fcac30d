"""Kafka plumbing: the only package that talks to confluent-kafka (topics, envelope codec, producer, consumer,
dead letters, admin) and the local broker manager."""
