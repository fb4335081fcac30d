"""Two workers of the live projections app in one group share the table partitions: together their tables equal a
replay's; when one is killed, the other takes every partition over (from the changelogs) and alone equals a replay of
everything, the events produced after the kill included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper.projections import reducers
from esper.projections.digest import table_digest
from esper.streams.local.broker import LocalBroker
from tests.conftest import own_broker
from tests.integration.test_projections_app import Worker, _converges, _produce, _replayed
from tests.polling import wait_for

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with own_broker("projections-rebalance-broker", 180) as b:
        yield b


def merged_digests(workers: list[Worker]) -> dict[str, str] | None:
    """Each table as the workers serve it together (each serves the partitions it holds)."""
    out = {}
    for projection in reducers.PROJECTIONS:
        table: dict[str, object] = {}
        for w in workers:
            try:
                status, part = w.get(f"/projections/{projection.name}")
            except (OSError, ValueError):
                return None
            if status != 200:
                return None
            for key, state in part.items():
                if key in table and table[key] != state:
                    return None  # two workers disagree on an entity: a rebalance still settling
                table[key] = state
        out[projection.name] = table_digest(table)
    return out


def test_two_workers_share_the_tables_and_one_survives_the_other(broker: LocalBroker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap_servers
    source = f"k-{uuid.uuid4().hex[:8]}"
    for _ in range(4):  # several entities, spread over the partitions
        _produce(bootstrap, uuid.uuid4().hex[:8], f"{source}-{_}")
    a = Worker(bootstrap, tmp_path / "data-a", tmp_path / "app-a.log", "a")
    b = Worker(bootstrap, tmp_path / "data-b", tmp_path / "app-b.log", "b")
    try:
        expected = _replayed(bootstrap)
        seen: list[dict[str, str] | None] = []

        def together() -> bool:
            seen.append(merged_digests([a, b]))
            return seen[-1] == expected

        assert wait_for(together, 120, 1.0), f"together {seen[-1]} != replay {expected}\n{a.tail()}\n{b.tail()}"
        held = [sum(len(w.get(f"/projections/{p.name}")[1]) for p in reducers.PROJECTIONS) for w in (a, b)]
        print(f"\nentities served: a {held[0]}, b {held[1]} (replay digests {len(expected)} tables)")
        assert all(held), held  # both hold a share
        a.kill()
        _produce(bootstrap, uuid.uuid4().hex[:8], f"{source}-after")
        _converges(b, bootstrap, timeout_s=120)  # b alone, every partition, equals a replay of everything
    finally:
        a.kill()
        b.kill()
