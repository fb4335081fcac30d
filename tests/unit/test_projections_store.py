"""The projection store (RocksDB column families with JSON values, and its in-memory twin) and `--until` parsing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.projections.digest import CanonicalTable, canonical_json, table_digest
from esper.projections.replay import ReplayError, Until, parse_until
from esper.projections.store import MemoryTables, RocksSizing, RocksTables, StoreError, StoreExistsError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_tables_are_separate_and_survive_a_reopen(tmp_path: Path) -> None:
    with RocksTables.create(tmp_path / "s") as store:
        store.table("breakers")["kasmina/k1/graft"] = {"state": "OPEN", "failures": 3}
        store.table("pauses")["kasmina/k1/graft"] = {"paused": True}
        store.table("pauses")["k2/s0"] = {"paused": False}
        del store.table("pauses")["k2/s0"]
    with RocksTables.open(tmp_path / "s") as store:
        assert store.names() == ["breakers", "pauses"]
        assert dict(store.table("breakers").items_json()) == {"kasmina/k1/graft": {"state": "OPEN", "failures": 3}}
        assert dict(store.table("pauses")) == {"kasmina/k1/graft": {"paused": True}}
        assert "k2/s0" not in store.table("pauses")
        with pytest.raises(KeyError):
            store.table("pauses")["k2/s0"]
        with pytest.raises(KeyError):
            del store.table("pauses")["k2/s0"]


def test_a_replay_store_starts_from_nothing(tmp_path: Path) -> None:
    with RocksTables.create(tmp_path / "s") as store:
        store.table("t")["a"] = 1
    with pytest.raises(StoreExistsError):
        RocksTables.create(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with RocksTables.create(tmp_path / "empty") as store:
        assert store.names() == []
    with pytest.raises(StoreError):
        RocksTables.open(tmp_path / "nothing-here")


def test_a_closed_store_refuses_tables_and_closes_twice(tmp_path: Path) -> None:
    store = RocksTables.create(tmp_path / "s")
    store.close()
    store.close()
    with pytest.raises(StoreError):
        store.table("t")


def test_values_must_be_json(tmp_path: Path) -> None:
    with RocksTables.create(tmp_path / "s") as store:
        table = store.table("t")
        table["a"] = {"x": float("nan")}
        table["b"] = {1, 2}
        table["c"] = [1]
        with pytest.raises(StoreError, match=r"'a'.*'b'|'b'.*'a'"):
            table.flush()
        assert dict(table) == {"c": [1]}  # the rest was written; the refused ones are gone


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=20))
def test_rocks_and_memory_tables_hold_the_same(tmp_path_factory: pytest.TempPathFactory, entries: dict) -> None:
    memory = MemoryTables()
    with RocksTables.create(tmp_path_factory.mktemp("s") / "db") as rocks:
        for store in (memory, rocks):
            table = store.table("t")
            for key, value in entries.items():
                table[key] = value
        table = rocks.table("t")
        assert dict(table.items_json()) == memory.table("t") == dict(table)
        assert len(table) == len(entries)
        # Iteration is in key byte order, which is what makes two stores' walks comparable.
        assert list(table) == sorted(entries, key=str.encode)
        # A RocksTable is digested from its stored bytes, a dict from its states: one digest, the whole-table one.
        whole = hashlib.sha256(canonical_json(entries)).hexdigest()
        assert isinstance(table, CanonicalTable) and not isinstance(memory.table("t"), CanonicalTable)
        assert table_digest(table) == table_digest(memory.table("t")) == whole


def test_the_write_back_cache_is_written_when_full_and_on_close(tmp_path: Path) -> None:
    with RocksTables.create(tmp_path / "s", RocksSizing(cache_entries=3)) as store:
        table = store.table("t")
        for i in range(10):
            table[f"k{i}"] = {"n": i}
            table[f"k{i}"] = {"n": i + 1}  # a rewrite of a cached entry
        assert table["k0"] == {"n": 1} and "k9" in table and "k10" not in table
        del table["k9"]
        assert "k9" not in table
        table["k3"] = "last"
    with RocksTables.open(tmp_path / "s") as store:
        expected = {f"k{i}": {"n": i + 1} for i in range(9)} | {"k3": "last"}
        assert dict(store.table("t").items_json()) == expected


def test_the_write_back_cache_keeps_recently_used_entries(tmp_path: Path) -> None:
    with RocksTables.create(tmp_path / "s", RocksSizing(cache_entries=3)) as store:
        table = store.table("t")
        hot = {"hot": True}
        table["hot"] = hot
        for i in range(20):
            table[f"cold{i}"] = {"n": i}
            assert table["hot"] is hot  # used after every write: never evicted, never decoded again
        assert table["cold0"] == {"n": 0}  # evicted long ago: written then, read back now
    with RocksTables.open(tmp_path / "s") as store:
        assert dict(store.table("t").items_json()) == {"hot": hot} | {f"cold{i}": {"n": i} for i in range(20)}


def test_until_parses_epoch_ms_iso_times_and_offsets() -> None:
    assert parse_until([]) == Until()
    assert parse_until(["1764586800123"]) == Until(time_ms=1764586800123)
    at = int(datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC).timestamp() * 1000)
    assert parse_until(["2026-12-01T10:00:00.5"]) == Until(time_ms=at)  # no offset: UTC
    assert parse_until(["2026-12-01T10:00:00.5Z"]) == Until(time_ms=at)
    assert parse_until(["2026-12-01T12:00:00.500+02:00"]) == Until(time_ms=at)
    assert parse_until(["2026-12-01 10:00:00.5"]) == Until(time_ms=at)
    both = parse_until(["leyline.safety:2:41", "leyline.telemetry:0:0", " 5 "])
    assert both == Until({("leyline.safety", 2): 41, ("leyline.telemetry", 0): 0}, 5)


@pytest.mark.parametrize(
    "values",
    [
        ["yesterday"],
        ["leyline.safety:x:1"],
        ["leyline.safety:1"],
        [":1:2"],
        ["leyline.safety:1:-3"],
        ["leyline.safety:1:²"],  # a digit to str.isdigit, not to us
        ["leyline.safety:0:1", "leyline.safety:0:2"],
        ["5", "2026-12-01T10:00:00"],
    ],
)
def test_until_refuses_what_it_cannot_read(values: list[str]) -> None:
    with pytest.raises(ReplayError):
        parse_until(values)
