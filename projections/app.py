"""The live projections: a faust-streaming app that folds the Leyline topics into one RocksDB-backed Faust table per
projection, with the same reducers a replay uses, and serves them over HTTP (`esper.projections.views`).

Co-partitioning. A reducer's entity key is read from the message (a breaker's subsystem/source/name, a request id,
a blueprint id, ...), not from the record key, and one entity may be fed from several topics and partitions (a
compilation by requests, results and audit records; a Tezzeret breaker by failures and transitions keyed apart;
anything a producer keyed unusually). A Faust table writes an entity to the changelog partition of the event being
processed and reads it from that partition's RocksDB, so a table fed straight from the sources would hold such an
entity in several partitions. Hence two agents:
- `route` reads every source topic (raw bytes), decodes each record to a `Fact` and, for every (projection, entity
  key) the fact concerns (`reducers.routes`), forwards the record's bytes and envelope headers, plus its origin
  (topic, partition, offset, timestamp, key) in `esper-origin-*` headers and the projection's name, to the
  internal topic ROUTED_TOPIC keyed by the entity key;
- `fold` reads ROUTED_TOPIC, rebuilds the very Fact the source record held (the reducers see the origin's topic,
  partition and offset, exactly as in a replay) and applies the projection to that entity.
Every table has ROUTED_PARTITIONS partitions, like ROUTED_TOPIC, so table partition i holds exactly the entities
of routed partition i and the assignor gives both to the same worker: an entity lives in one partition, whichever
sources feed it. No projection relies on a producer's keying.

Guarantees. Faust's at-least-once: the producer is flushed before offsets are committed, so after a crash records
are re-routed and re-folded, never lost; the reducers ignore a repeated event id (within SEEN_WINDOW per entity and
origin partition, far more than a commit interval's worth of one entity's events here). The consumer reads
read_committed (Faust reads read_uncommitted unless it runs transactions; Tezzeret's aborted transactions must not
be folded, as a replay never folds them). Order: each origin partition reaches an entity in offset order (one key,
one routed partition); the reducers do not depend on the interleaving of partitions. Restart: an empty data
directory is rebuilt from the tables' changelogs (`esper-projections-<table>-changelog`). A record that does not
decode, or a routed record that lost its origin, is counted and logged, never raised: an agent never stops for
data (dead letters are the producers' job).

RocksDB: Faust opens one RocksDB per table partition (8 tables x 3 partitions); they share one block cache and keep
small memtables (APP_SIZING, through store.rocks_options) instead of Faust's 2 GiB cache and 3 x 64 MiB buffers each.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esper.projections import reducers
from esper.projections.digest import canonical_json
from esper.projections.facts import Fact, fact_from_record
from esper.projections.store import MiB, RocksSizing, rocks_options
from esper.streams.envelope import Headers, HeaderValue, header_pairs
from esper.streams.exceptions import DecodeError

if TYPE_CHECKING:
    import faust
    from faust.types import TP, TableT
    from rocksdict import Cache, Rdict

__all__ = [
    "APP_ID",
    "APP_SIZING",
    "DEFAULT_WEB_PORT",
    "ROUTED_PARTITIONS",
    "ROUTED_TOPIC",
    "SOURCE_TOPICS",
    "AppCounters",
    "Routed",
    "RoutedRecordError",
    "build_app",
    "decode_state",
    "encode_state",
    "route_record",
    "routed_topic",
    "run_app",
    "run_command",
    "unroute_record",
]

log = logging.getLogger(__name__)

APP_ID = "esper-projections"  # the default app id: the consumer group, and the prefix of the app's own topics


def routed_topic(app_id: str = APP_ID) -> str:
    return f"{app_id}-routed"


ROUTED_TOPIC = routed_topic()
ROUTED_PARTITIONS = 3  # the tables' partitions; the most any source topic has
DEFAULT_WEB_PORT = 6066
MAX_FOLD_LAG = 4096  # routed records a worker may have left to fold before its source partitions pause
SOURCE_TOPICS: tuple[str, ...] = tuple(sorted({t for p in reducers.PROJECTIONS for t in p.topics}))
# 24 RocksDBs (8 tables x 3 partitions) in one process: one shared 16 MiB block cache, memtables of 1 MiB, at most
# 2 per DB (a small table never fills one).
APP_SIZING = RocksSizing(
    block_cache_bytes=16 * MiB, write_buffer_bytes=1 * MiB, max_write_buffers=2, total_write_buffer_bytes=2 * MiB
)

H_PROJECTION = "esper-projection"
H_TOPIC = "esper-origin-topic"
H_PARTITION = "esper-origin-partition"
H_OFFSET = "esper-origin-offset"
H_TIMESTAMP = "esper-origin-timestamp"
H_KEY = "esper-origin-key"  # absent when the origin record had no key
_OURS = frozenset({H_PROJECTION, H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP, H_KEY})


# ---------------------------------------------------------------- the pure part: routing and un-routing records


@dataclass(frozen=True)
class Routed:
    """One record for ROUTED_TOPIC: the entity key it is keyed by, the origin's value, and headers (the origin's
    envelope headers, then its place in the log and the projection's name)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _as_bytes(value: HeaderValue) -> bytes:
    return value if isinstance(value, bytes) else (value or "").encode()


def route_record(
    value: bytes | None,
    headers: Headers | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
) -> list[Routed]:
    """The routed records one source record becomes (none when no projection keeps it); raises DecodeError."""
    fact = fact_from_record(value, headers, topic, partition, offset, timestamp_ms, key)
    # Our own header names are dropped from the origin's, so that a record cannot forge its origin.
    envelope = [(k, _as_bytes(v)) for k, v in header_pairs(headers) if k not in _OURS]
    origin = [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIMESTAMP, str(timestamp_ms).encode()),
        *([(H_KEY, key)] if key is not None else []),
    ]
    return [
        Routed(entity.encode(), value or b"", [*envelope, *origin, (H_PROJECTION, p.name.encode())])
        for p, entity in reducers.routes(fact)
    ]


class RoutedRecordError(DecodeError):
    """A record on ROUTED_TOPIC lacks its origin or names no projection (written by something else than `route`)."""


def unroute_record(
    value: bytes | None, headers: Headers | None, key: bytes | None
) -> tuple[reducers.Projection, str, Fact]:
    """The projection, entity key and origin Fact of a routed record; raises DecodeError (RoutedRecordError when
    the routing headers are missing or wrong)."""
    envelope: list[tuple[str, HeaderValue]] = []
    ours: dict[str, bytes] = {}
    for name, v in header_pairs(headers):
        if name in _OURS:
            ours[name] = _as_bytes(v)
        else:
            envelope.append((name, v))
    try:
        projection = reducers.PROJECTIONS_BY_NAME[ours[H_PROJECTION].decode()]
        topic = ours[H_TOPIC].decode()
        partition, offset, timestamp_ms = (int(ours[h]) for h in (H_PARTITION, H_OFFSET, H_TIMESTAMP))
        entity = (key or b"").decode()
    except (KeyError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise RoutedRecordError(f"a routed record without a valid {e}") from e
    fact = fact_from_record(value, envelope, topic, partition, offset, timestamp_ms, ours.get(H_KEY))
    return projection, entity, fact


def encode_state(state: reducers.State) -> bytes:
    """A table value: the state's canonical JSON (the tables store bytes, so Faust never reinterprets a state)."""
    return canonical_json(state)


def decode_state(raw: bytes) -> reducers.State:
    """The state a table value holds."""
    state: reducers.State = json.loads(raw)
    return state


@dataclass
class AppCounters:
    """What the agents did, for the views and the logs."""

    routed_in: Counter[str] = field(default_factory=Counter)  # source records read, per topic
    started_at: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> the first offset read
    routed_out: int = 0  # routed records sent
    skipped: Counter[str] = field(default_factory=Counter)  # "topic: Reason" -> source records that did not decode
    folded: Counter[str] = field(default_factory=Counter)  # projection -> routed records folded
    changed: Counter[str] = field(default_factory=Counter)  # projection -> entity states changed
    bad_routed: Counter[str] = field(default_factory=Counter)  # reason -> routed records that could not be folded

    def as_json(self) -> dict[str, Any]:
        return {
            "read": dict(self.routed_in),
            "started_at": dict(self.started_at),
            "routed": self.routed_out,
            "skipped": dict(self.skipped),
            "folded": dict(self.folded),
            "changed": dict(self.changed),
            "bad_routed": dict(self.bad_routed),
        }


# ---------------------------------------------------------------- the Faust shell


def _shared_rocks_options(sizing: RocksSizing) -> Any:
    """A Faust RocksDBOptions whose every DB is opened with store.rocks_options and one shared block cache."""
    from faust.stores.rocksdb import RocksDBOptions
    from rocksdict import Cache, Rdict

    class SharedRocksOptions(RocksDBOptions):
        def __init__(self, sizing: RocksSizing, cache: Cache) -> None:
            super().__init__(use_rocksdict=True)
            self.sizing, self.cache = sizing, cache

        def open(self, path: Path, *, read_only: bool = False) -> Rdict:
            return Rdict(str(path), rocks_options(self.sizing, self.cache))

    return SharedRocksOptions(sizing, Cache(sizing.block_cache_bytes))


def _read_committed_transport(app: faust.App) -> Any:
    """The aiokafka transport with a worker consumer that reads read_committed (see the module docstring)."""
    import aiokafka
    from faust.transport.drivers import aiokafka as driver

    class ReadCommittedThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: driver.Transport) -> aiokafka.AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            # aiokafka keeps the level in this attribute until start() builds its fetcher; Faust offers no setting.
            consumer._isolation_level = "read_committed"
            return consumer

    class ReadCommittedConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
            return ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

        def on_buffer_drop(self, tp: TP) -> None:
            # Faust re-activates a partition whose stream buffer drained even when it was paused meanwhile.
            if tp in self._paused_partitions:
                self._buffered_partitions.discard(tp)
                return
            super().on_buffer_drop(tp)

    class ReadCommittedTransport(driver.Transport):
        Consumer = ReadCommittedConsumer

    return ReadCommittedTransport(app.conf.broker_consumer, app)


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def build_app(
    bootstrap: str,
    data_dir: Path,
    *,
    web_port: int = DEFAULT_WEB_PORT,
    worker_id: str = "1",
    web_host: str = "127.0.0.1",
    app_id: str = APP_ID,
) -> tuple[faust.App, AppCounters]:
    """The projections app (not started) and the counters its agents keep. Apps of different `app_id`s are
    independent: each has its own group, routed topic and changelogs, and reads the sources from their start."""
    import faust

    from esper.projections import dashboard, views

    app = faust.App(
        app_id,
        broker=_broker_urls(bootstrap),
        broker_client_id=f"{app_id}-{worker_id}",
        store="rocksdb://",
        datadir=str(data_dir),
        web_port=web_port,
        web_host=web_host,
        web_bind=web_host,
        topic_partitions=ROUTED_PARTITIONS,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Faust's default takes every record aiokafka has buffered in one batch (300k of a backlog were seen), and
        # the routed records `route` sends wait behind all of it: no fold until the batch is done.
        broker_max_poll_records=1000,
        # Routed and changelog records are many and small: batch them per produce request (Faust sends at once).
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        broker_session_timeout=10.0,  # a killed worker's partitions move after 10 s, not Faust's 60 s
        table_standby_replicas=0,
        autodiscover=False,
    )
    app.transport = _read_committed_transport(app)
    counters = AppCounters()
    rocks = _shared_rocks_options(APP_SIZING)
    tables: dict[str, TableT[str, bytes]] = {}
    for p in reducers.PROJECTIONS:
        table = app.Table(
            p.name,
            partitions=ROUTED_PARTITIONS,
            key_type=str,  # JSON-encoded keys, handed back as str
            value_type=bytes,  # raw: encode_state's JSON, never reinterpreted by Faust
        )
        table.data.rocksdb_options = rocks  # type: ignore[attr-defined]  # the RocksDB store's; opened lazily
        tables[p.name] = table

    sources = app.topic(*SOURCE_TOPICS, key_serializer="raw", value_serializer="raw")
    routed_name = routed_topic(app_id)
    routed = app.topic(
        routed_name, partitions=ROUTED_PARTITIONS, internal=True, key_serializer="raw", value_serializer="raw"
    )
    fold_next: dict[int, int] = {}  # routed partition -> the next offset `fold` will take (of those it has taken)

    async def fold_lag() -> int:
        """Routed records in this worker's routed partitions that `fold` has not taken yet, at least. Two lower
        bounds, the greater wins:
        - per partition, its high watermark less what `fold` took (before its first record of a partition, from
          where that partition's fetching stands); the watermark is as old as the partition's last fetch;
        - when every routed partition is this worker's, what it routed less what it folded (all of the routed
          topic is folded here, other workers' records too)."""
        lag, mine = 0, 0
        for tp in app.consumer.assignment():
            if tp.topic != routed_name:
                continue
            mine += 1
            high = app.consumer.highwater(tp)
            taken = fold_next.get(tp.partition)
            if taken is None:
                taken = await app.consumer.position(tp)
            if high is not None and taken is not None:
                lag += max(0, high - taken)
        if mine == ROUTED_PARTITIONS:
            taken_here = sum(counters.folded.values()) + sum(counters.bad_routed.values())
            lag = max(lag, counters.routed_out - taken_here)
        return lag

    paused: set[TP] = set()  # source partitions paused until `fold` catches up

    @app.timer(0.1)
    async def pace_routing() -> None:
        """With a backlog, Faust hands out each batch of records in arrival order across topics, and `route` turns
        one source record into one or more routed ones, so `fold` would fall ever further behind (the views would
        show nothing new until the whole backlog is read). While this worker has more than MAX_FOLD_LAG routed
        records to fold, its source partitions are paused; they resume at half that. Faust's own pauses (recovery,
        rebalance) are left alone."""
        if app.rebalancing or app.in_recovery:
            return
        lag = await fold_lag()
        assigned = app.consumer.assignment()
        if lag > MAX_FOLD_LAG:
            more = {tp for tp in assigned if tp.topic in SOURCE_TOPICS} - paused
            if more:
                app.consumer.pause_partitions(more)
                paused.update(more)
        elif lag <= MAX_FOLD_LAG // 2 and paused:
            app.consumer.resume_partitions(paused & assigned)
            paused.clear()

    @app.agent(sources, name=f"{app_id}.route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            m = event.message
            counters.routed_in[m.topic] += 1
            counters.started_at.setdefault(f"{m.topic}:{m.partition}", m.offset)
            try:
                out = route_record(m.value, m.headers, m.topic, m.partition, m.offset, _ms(m.timestamp), m.key)
            except Exception as e:  # DecodeError: garbage; anything else: a reducer's key() bug. Neither stops us.
                counters.skipped[f"{m.topic}: {type(e).__name__}"] += 1
                log.warning(
                    "skipped %s[%d]@%d: %s", m.topic, m.partition, m.offset, e, exc_info=not isinstance(e, DecodeError)
                )
                continue
            for record in out:
                await routed.send(key=record.key, value=record.value, headers=record.headers)
                counters.routed_out += 1

    @app.agent(routed, name=f"{app_id}.fold")
    async def fold(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            m = event.message
            fold_next[m.partition] = m.offset + 1
            try:
                projection, entity, fact = unroute_record(m.value, m.headers, m.key)
                table = tables[projection.name]
                found = table.get(entity)
                old = None if found is None else decode_state(found)
                new = projection.apply_keyed(old, fact, entity)
            except Exception as e:  # a bad record, or a reducer bug: counted, the agent goes on
                counters.bad_routed[type(e).__name__] += 1
                log.exception("could not fold %s[%d]@%d", m.topic, m.partition, m.offset)
                continue
            counters.folded[projection.name] += 1
            if new is not old and new is not None:
                table[entity] = encode_state(new)
                counters.changed[projection.name] += 1

    views.register(app, tables, counters.as_json)
    dashboard.register(app)
    return app, counters


def _ms(timestamp_s: float | None) -> int:
    """Faust hands record timestamps in float seconds; the reducers see the log's integer milliseconds."""
    return -1 if timestamp_s is None else round(timestamp_s * 1000)


def run_app(app: faust.App, loglevel: str = "INFO") -> None:
    """Run a worker until it is stopped (a signal), in this process."""
    import faust

    worker = faust.Worker(app, loglevel=loglevel)
    # At WARNING and above the worker's terminal spinner puts the root logger at DEBUG (the spinner turns once per
    # record), so every debug record of aiokafka and Faust would be built: a tenth of a busy worker's time.
    worker.spinner = None
    worker.execute_from_commandline()


# ---------------------------------------------------------------- esper projections run

run_command = typer.Typer(help="The live projections app (faust-streaming).", no_args_is_help=True)


@run_command.command("run")
def run(
    web_port: Annotated[int, typer.Option(help="The JSON views' HTTP port.")] = DEFAULT_WEB_PORT,
    data_dir: Annotated[
        Path | None, typer.Option(help="RocksDB tables (default <esper home>/projections/<worker id>).")
    ] = None,
    worker_id: Annotated[str, typer.Option(help="This worker's name: client id and default data dir.")] = "1",
    web_host: Annotated[str, typer.Option(help="The address the views listen on.")] = "127.0.0.1",
    loglevel: Annotated[str, typer.Option(help="Faust's log level.")] = "INFO",
    app_id: Annotated[
        str, typer.Option(help="The app id: consumer group and topic prefix (another id is another app).")
    ] = APP_ID,
) -> None:
    """Fold the Leyline topics into RocksDB tables live and serve them as JSON (GET /projections, /projections/NAME,
    /projections/NAME/KEY, /projections/digests). An empty data dir is rebuilt from the changelogs."""
    from esper.settings import load_settings
    from esper.streams.local.cluster import bootstrap_servers

    settings = load_settings()
    where = data_dir or settings.home / "projections" / worker_id
    app, _ = build_app(
        bootstrap_servers(settings.cluster()),
        where,
        web_port=web_port,
        worker_id=worker_id,
        web_host=web_host,
        app_id=app_id,
    )
    run_app(app, loglevel)
