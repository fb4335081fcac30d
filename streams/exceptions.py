"""Typed errors of the Kafka plumbing: every failure a caller can act on has its own class."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerStartError",
    "ClusterUnavailableError",
    "DeadLetterUnavailableError",
    "DecodeError",
    "MalformedPayloadError",
    "ProduceError",
    "ProducerFatalError",
    "ProvisioningError",
    "QueueFullError",
    "StreamsError",
    "TransientError",
    "UnknownMessageTypeError",
    "UnknownTopicError",
    "UnsupportedContentTypeError",
    "UnsupportedVersionError",
]


class StreamsError(Exception):
    """Base of every error raised by esper.streams."""


class ProvisioningError(StreamsError):
    """The Kafka jars could not be resolved from Maven (the message carries Maven's own output)."""


class BrokerError(StreamsError):
    """The local broker could not be managed (stopped, signalled, inspected)."""


class BrokerStartError(BrokerError):
    """The local broker did not become ready; the message carries the tail of its log."""


class ClusterUnavailableError(StreamsError):
    """No Kafka cluster answers at the configured bootstrap servers."""


class UnknownTopicError(StreamsError):
    """The topic does not exist on the cluster (topics are never auto-created: run `esper topics create`)."""


class ProduceError(StreamsError):
    """A record was not acknowledged by the cluster."""


class QueueFullError(ProduceError):
    """The producer's local queue stayed full for as long as the caller was willing to wait."""


class ProducerFatalError(ProduceError):
    """The producer hit a fatal error (librdkafka will send nothing more) and is not recreated."""


class TransientError(StreamsError):
    """A handler's failure that may pass if the record is tried again (the default retry policy retries these)."""


class DeadLetterUnavailableError(ProduceError):
    """A record's dead letter was not acknowledged; the record stays unsettled and is consumed again."""


class DecodeError(StreamsError):
    """A record cannot be decoded into a Leyline message; such records go to the dead-letter topic."""


class UnknownMessageTypeError(DecodeError):
    """The leyline-type header names no known contract, or one the topic does not carry."""


class UnsupportedContentTypeError(DecodeError):
    """The content-type header is neither protobuf nor JSON."""


class UnsupportedVersionError(DecodeError):
    """The leyline-version header names a schema version this code does not read."""


class MalformedPayloadError(DecodeError):
    """The payload bytes do not parse as the declared message type."""
