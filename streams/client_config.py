"""What every confluent-kafka client we create gets: librdkafka's log lines through Python logging, and an
`error_cb` so that errors the client reports on its own (broker down, authentication, fatal idempotence errors) are
logged and can be acted on instead of printed raw to stderr (`%4|...`) or lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError

__all__ = ["LIBRDKAFKA_LOG", "ErrorCallback", "kafka_config", "log_client_error"]

# librdkafka's own log lines (served by poll()); one logger so an operator can silence or raise it in one place.
LIBRDKAFKA_LOG = logging.getLogger("esper.streams.librdkafka")
log = logging.getLogger(__name__)

ErrorCallback = Callable[[KafkaError], None]


# librdkafka repeats a transient error on every reconnect attempt: the same one is logged at WARNING once per
# this many seconds, at DEBUG in between.
REPEAT_QUIET_S = 30.0
_last_logged: dict[str, float] = {}
_last_logged_lock = threading.Lock()


def log_client_error(err: KafkaError) -> None:
    """A client-level error: fatal ones at ERROR always, the transient ones librdkafka retries by itself (the
    broker away, all brokers down) at WARNING, once per REPEAT_QUIET_S for the same text."""
    if err.fatal():
        log.error("kafka client error: %s (fatal)", err)
        return
    text, now = err.str(), time.monotonic()
    with _last_logged_lock:
        quiet = now - _last_logged.get(text, -REPEAT_QUIET_S) < REPEAT_QUIET_S
        if not quiet:
            if len(_last_logged) > 1000:  # bounded: texts carry broker addresses, not much more
                _last_logged.clear()
            _last_logged[text] = now
    log.log(logging.DEBUG if quiet else logging.WARNING, "kafka client error: %s", err)


def kafka_config(
    base: Mapping[str, Any], on_error: ErrorCallback | None = None, logger: logging.Logger = LIBRDKAFKA_LOG
) -> dict[str, Any]:
    """`base` with our logger and error callback (a caller's own `error_cb`/`logger` in base wins)."""
    config: dict[str, Any] = {"logger": logger, "error_cb": on_error or log_client_error}
    config.update(base)
    return config
