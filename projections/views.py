"""JSON views of the live projections, served by the projections app's web server (Faust's aiohttp):

  GET /projections                    every table: entries, digest, source topics; and the agents' counters
  GET /projections/digests            {"digests": {table: sha256}, "entries": {table: n}}, as `esper replay --json`
  GET /projections/{name}             one table: {key: state}
  GET /projections/{name}/{key}       one entity's state (the key may hold slashes); 404 when absent
  GET /metrics                        Prometheus exposition of this worker's tables (esper.projections.metrics)

A table's states are read from this worker's own partitions (with several workers, each serves the entities of the
partitions it was assigned). Each answer reads a table in one synchronous pass, between two agent steps, so it
shows a state the fold really passed through. Digests are `digest.table_digest` of the decoded states, the very
function a replay reports with, so the two compare as strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from esper.projections import reducers
from esper.projections.digest import table_digest

if TYPE_CHECKING:
    import faust
    from faust.types import TableT
    from faust.web import Request, Response, View

__all__ = ["digests_json", "overview_json", "register", "table_json"]

# A table as the app keeps it: entity key -> the state's canonical JSON.
RawTable = Mapping[str, bytes]


def table_json(table: RawTable) -> dict[str, reducers.State]:
    """Every entity's decoded state, by key."""
    from esper.projections.app import decode_state

    return {key: decode_state(raw) for key, raw in table.items()}


def digests_json(tables: Mapping[str, RawTable]) -> dict[str, Any]:
    """The digest and size of every table (the shape of `esper replay --json`'s digests and entries)."""
    states = {name: table_json(table) for name, table in sorted(tables.items())}
    return {
        "digests": {name: table_digest(s) for name, s in states.items()},
        "entries": {name: len(s) for name, s in states.items()},
    }


def overview_json(tables: Mapping[str, RawTable], counters: Mapping[str, Any]) -> dict[str, Any]:
    summary = digests_json(tables)
    return {
        "projections": {
            p.name: {
                "entries": summary["entries"][p.name],
                "digest": summary["digests"][p.name],
                "topics": list(p.topics),
            }
            for p in reducers.PROJECTIONS
            if p.name in tables
        },
        "counters": dict(counters),
    }


def register(
    app: faust.App, tables: Mapping[str, TableT[str, bytes]], counters: Callable[[], Mapping[str, Any]]
) -> None:
    """Add the views to `app`'s web server; `counters` says what the agents did (shown by GET /projections)."""
    from faust.web import View

    def raw(names: Iterable[str]) -> dict[str, RawTable]:
        return {name: tables[name] for name in names}

    from prometheus_client import CONTENT_TYPE_LATEST

    from esper.projections.metrics import ProjectionMetrics

    gauges = ProjectionMetrics()

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # recomputed from the tables on each scrape: the same figures a replay's tables give
            gauges.update({name: table_json(table) for name, table in raw(tables).items()})
            # (aiohttp refuses a charset in content_type: the header carries it as Prometheus writes it)
            return self.bytes(gauges.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # The literal path goes first: aiohttp tries routes in the order they were added.
    @app.page("/projections/digests")
    class Digests(View):
        async def get(self, request: Request) -> Response:
            return self.json(digests_json(raw(tables)))

    @app.page("/projections")
    class Overview(View):
        async def get(self, request: Request) -> Response:
            return self.json(overview_json(raw(tables), counters()))

    @app.page("/projections/{name}")
    class OneTable(View):
        async def get(self, request: Request, name: str) -> Response:
            if name not in tables:
                return _unknown(self, name)
            return self.json(table_json(tables[name]))

    @app.page("/projections/{name}/{key:.+}")
    class OneEntity(View):
        async def get(self, request: Request, name: str, key: str) -> Response:
            if name not in tables:
                return _unknown(self, name)
            found = tables[name].get(key)
            if found is None:
                return self.error(404, f"no {key!r} in {name}")
            return self.json(table_json({key: found})[key])


def _unknown(view: View, name: str) -> Response:
    return view.error(404, f"no projection named {name!r}", known=[p.name for p in reducers.PROJECTIONS])
