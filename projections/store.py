"""Projection tables: one RocksDB column family per table (rocksdict), keys as UTF-8, values as their canonical JSON
(so a table is digested from its bytes).

`RocksTables` is the durable store a replay builds (always into a fresh directory, so a replay never mixes with an
older state) and reads back; `MemoryTables` holds the same tables in plain dicts for tests and benches. Both hand out
each table as a `MutableMapping[str, Json]`, which is all the reducers' fold needs.

RocksDB is sized for 2-core, 24 GiB machines shared with a broker and the services: one block cache of
`RocksSizing.block_cache_bytes` shared by every table (rocksdict's default is 2 GiB per table partition under Faust),
`write_buffer_bytes` memtables, at most `max_write_buffers` per table and `total_write_buffer_bytes` across all of
them (the default is 64 MiB x 3 per table), two background jobs. Each table keeps its recent entries decoded in a
write-back cache (`cache_entries`), so a fold does not pay a JSON round trip per fact; RocksDB's own WAL is
off, as a store is rebuilt from the log whenever in doubt: `close` (or `flush`) is what makes it durable.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteOptions

from esper.projections.digest import canonical_json

__all__ = [
    "Json",
    "MemoryTables",
    "ProjectionStore",
    "RocksSizing",
    "RocksTables",
    "StoreError",
    "StoreExistsError",
    "rocks_options",
]

Json = Any  # a JSON-able value: dict, list, str, int, float, bool or None
MiB = 1024 * 1024
DEFAULT_CF = "default"  # RocksDB's own column family, never a table


class StoreError(Exception):
    """A projection store cannot be opened or used."""


class StoreExistsError(StoreError):
    """`RocksTables.create` was given a directory that already holds something: a replay starts from nothing."""


class ProjectionStore(Protocol):
    """Named tables of JSON values keyed by text: what a replay folds into and what the views read."""

    def table(self, name: str) -> MutableMapping[str, Json]:
        """The table `name`, created empty when it does not exist yet."""
        ...

    def names(self) -> list[str]:
        """The tables that exist, sorted."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RocksSizing:
    """RocksDB memory for one store (every table together)."""

    block_cache_bytes: int = 16 * MiB
    write_buffer_bytes: int = 4 * MiB
    max_write_buffers: int = 2
    total_write_buffer_bytes: int = 32 * MiB
    background_jobs: int = 2
    # Decoded entries each table keeps in Python (its write-back cache). A replay reads each partition in long runs,
    # so one compilation's request, result and audit records arrive far apart: the cache must span that distance,
    # or each entity is written, read and decoded again per record. Rebuilding bench/bench_projections.py's 1M-event
    # log: 61 s at 1,024 entries, 53-55 s at 65,536, for a peak RSS of 286 against 610 MiB.
    cache_entries: int = 65_536


def rocks_options(sizing: RocksSizing = RocksSizing(), cache: Cache | None = None) -> Options:
    """Options for a store or one of its column families, in raw mode (we encode keys and values ourselves). Pass
    the same `cache` for every column family so they share one block cache."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(sizing.write_buffer_bytes)
    options.set_max_write_buffer_number(sizing.max_write_buffers)
    options.set_db_write_buffer_size(sizing.total_write_buffer_bytes)
    options.set_max_background_jobs(sizing.background_jobs)
    options.increase_parallelism(sizing.background_jobs)
    table = BlockBasedOptions()
    table.set_block_cache(cache or Cache(sizing.block_cache_bytes))
    table.set_cache_index_and_filter_blocks(True)  # counted in the cache, not beside it
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


class RocksTable(MutableMapping[str, Json]):
    """One table: a column family, with a write-back cache of up to `cache_entries` decoded values (a fold reads
    and writes the same few entities over and over; decoding their JSON each time would cost more than the
    reducers). When the cache is full its least recently used entry leaves it (written first when changed), so hot
    entities stay decoded however many cold ones pass through. Values handed out are shared with the cache: treat
    them as immutable, as the reducers do. Iteration is in key byte order; `len` counts (it walks the table)."""

    def __init__(self, family: Rdict, cache_entries: int = RocksSizing.cache_entries) -> None:
        self._family = family
        self._cache_entries = max(1, cache_entries)
        self._cache: OrderedDict[str, Json] = OrderedDict()  # least recently used first
        self._dirty: set[str] = set()

    def __getitem__(self, key: str) -> Json:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        raw = self._family.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return self._keep(key, json.loads(raw))

    def __setitem__(self, key: str, value: Json) -> None:
        self._keep(key, value)
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._cache.pop(key, None)
        self._dirty.discard(key)
        self._family.delete(key.encode())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._cache or self._family.get(key.encode()) is not None)

    def __iter__(self) -> Iterator[str]:
        self.flush()
        for raw in self._family.keys():  # noqa: SIM118 (an Rdict iterates by index, not by key)
            yield cast(bytes, raw).decode()

    def __len__(self) -> int:
        self.flush()
        return sum(1 for _ in self._family.keys())  # noqa: SIM118

    def _keep(self, key: str, value: Json) -> Json:
        cache = self._cache
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self._cache_entries:
            self._evict()
        return value

    def _evict(self) -> None:
        """Drop the least recently used entry, writing it first when changed (StoreError when it is not JSON)."""
        key, value = self._cache.popitem(last=False)
        if key in self._dirty:
            self._dirty.discard(key)
            try:
                encoded = canonical_json(value)
            except (TypeError, ValueError) as e:
                raise StoreError(f"values that are not JSON were not stored: {key!r}: {e}") from e
            self._family.put(key.encode(), encoded)

    def flush(self) -> None:
        """Write the changed entries to RocksDB and empty the cache. A value that is not JSON is dropped and
        reported (StoreError naming its key) after the others are written."""
        refused = []
        for key in self._dirty:
            try:
                encoded = canonical_json(self._cache[key])
            except (TypeError, ValueError) as e:
                refused.append(f"{key!r}: {e}")
                continue
            self._family.put(key.encode(), encoded)
        self._dirty.clear()
        self._cache.clear()
        if refused:
            raise StoreError(f"values that are not JSON were not stored: {'; '.join(refused)}")

    def close(self) -> None:
        """Flush and release this family's handle (the store's LOCK is held while any handle lives)."""
        self.flush()
        self._family.flush(wait=True)
        self._family.close()

    def canonical_entries(self) -> Iterator[tuple[str, bytes]]:
        """(key, the stored bytes: the value's canonical JSON) in key order (UTF-8 byte order is code point order,
        as `sorted` orders text), for digest.table_digest."""
        self.flush()
        for raw_key, raw_value in self._family.items():
            yield cast(bytes, raw_key).decode(), cast(bytes, raw_value)

    def items_json(self) -> Iterator[tuple[str, Json]]:
        """(key, value) in key order with one pass over the table (items() looks every key up again)."""
        for key, raw in self.canonical_entries():
            yield key, json.loads(raw)


class RocksTables:
    """A projection store in one RocksDB directory: `create` a fresh one (for a replay), `open` an existing one."""

    def __init__(self, path: Path, db: Rdict, options: Options, cache: Cache, sizing: RocksSizing) -> None:
        self.path = path
        self._db = db
        self._options = options
        self._cache = cache
        self._sizing = sizing
        self._tables: dict[str, RocksTable] = {}
        self._closed = False

    @classmethod
    def create(cls, path: str | os.PathLike[str], sizing: RocksSizing = RocksSizing()) -> RocksTables:
        """A new, empty store at `path`, which must not exist or be an empty directory (StoreExistsError)."""
        where = Path(path)
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise StoreExistsError(f"{where} is not an empty directory: a replay builds a fresh store")
        where.mkdir(parents=True, exist_ok=True)
        return cls._open(where, sizing, families=[])

    @classmethod
    def open(cls, path: str | os.PathLike[str], sizing: RocksSizing = RocksSizing()) -> RocksTables:
        """An existing store with its tables (StoreError when `path` holds no RocksDB)."""
        where = Path(path)
        if not (where / "CURRENT").is_file():
            raise StoreError(f"{where} holds no projection store")
        try:
            families = [n for n in Rdict.list_cf(str(where), Options(raw_mode=True)) if n != DEFAULT_CF]
        except Exception as e:  # rocksdict raises bare Exception for RocksDB errors
            raise StoreError(f"{where}: {e}") from e
        return cls._open(where, sizing, families)

    @classmethod
    def _open(cls, path: Path, sizing: RocksSizing, families: list[str]) -> RocksTables:
        cache = Cache(sizing.block_cache_bytes)
        options = rocks_options(sizing, cache)
        try:
            db = Rdict(str(path), options, column_families={name: rocks_options(sizing, cache) for name in families})
        except Exception as e:
            raise StoreError(f"{path}: {e}") from e
        store = cls(path, db, options, cache, sizing)
        for name in families:
            store._tables[name] = store._wrap(db.get_column_family(name))
        return store

    def _wrap(self, family: Rdict) -> RocksTable:
        # A store is rebuilt from the log whenever in doubt, so its writes skip RocksDB's own WAL (close flushes).
        writes = WriteOptions()
        writes.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub says a method
        family.set_write_options(writes)
        return RocksTable(family, self._sizing.cache_entries)

    def table(self, name: str) -> RocksTable:
        if self._closed:
            raise StoreError(f"{self.path} is closed")
        found = self._tables.get(name)
        if found is None:
            if not name or name == DEFAULT_CF:
                raise StoreError(f"{name!r} cannot name a table")
            found = self._wrap(self._db.create_column_family(name, rocks_options(self._sizing, self._cache)))
            self._tables[name] = found
        return found

    def names(self) -> list[str]:
        return sorted(self._tables)

    def close(self) -> None:
        """Flush the memtables (the WAL is off) and close; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        for table in self._tables.values():
            table.close()
        self._tables.clear()
        self._db.flush(wait=True)
        self._db.close()

    def __enter__(self) -> RocksTables:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class MemoryTables:
    """The same tables in plain dicts (insertion order), for tests and benches."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Json]] = {}

    def table(self, name: str) -> dict[str, Json]:
        return self.data.setdefault(name, {})

    def names(self) -> list[str]:
        return sorted(self.data)

    def close(self) -> None:
        """Nothing to release; the tables stay readable."""

    def __enter__(self) -> MemoryTables:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
