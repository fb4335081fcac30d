"""`esper replay` and `esper status`: projections rebuilt from the log, in the terminal.

Both read the source topics from their beginning into a fresh RocksDB store (`replay`). `status` is a replay to now
into a temporary store, shown as tables; the live projections app (Faust) will answer it without a replay.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from esper.projections.reducers import State
from esper.projections.replay import ReplayError, ReplayResult, Until, format_time_ms, parse_until, replay, select
from esper.projections.store import Json, RocksTables, StoreError
from esper.streams.exceptions import StreamsError

__all__ = ["VIEWS", "app", "replay_command", "state_table", "status_command"]

app = typer.Typer(help="Projections rebuilt from the Leyline log.")
out = Console()
err = Console(stderr=True)

STATUS_ROWS = 50  # rows shown per table; the rest is counted
UntilOption = Annotated[
    list[str] | None,
    typer.Option(
        "--until",
        metavar="TIME|TOPIC:PARTITION:OFFSET",
        help="Stop at a moment: an ISO 8601 time (UTC unless it says otherwise) or epoch ms (the state when it "
        "happened), or TOPIC:PARTITION:OFFSET, inclusive (repeat for several partitions; others read to their end).",
    ),
]
ProjectionOption = Annotated[
    list[str] | None,
    typer.Option("--projection", "-p", metavar="NAME", help="Only this projection (repeatable; default: all)."),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _bootstrap() -> str:
    from esper.settings import load_settings
    from esper.streams.local.cluster import bootstrap_servers

    return bootstrap_servers(load_settings().cluster())


@contextmanager
def _store(path: Path | None) -> Iterator[RocksTables]:
    """A fresh store at `path`, kept; or in a temporary directory, removed afterwards."""
    if path is not None:
        with RocksTables.create(path) as store:
            yield store
        return
    with tempfile.TemporaryDirectory(prefix="esper-replay-") as tmp, RocksTables.create(Path(tmp) / "store") as store:
        yield store


def _run(until: Until, projection: list[str] | None, store: RocksTables) -> ReplayResult:
    return replay(
        _bootstrap(),
        store,
        until_offset=until.offsets or None,
        until_time_ms=until.time_ms,
        projections=projection,
    )


@app.command("replay")
def replay_command(
    until: UntilOption = None,
    projection: ProjectionOption = None,
    store: Annotated[
        Path | None, typer.Option(help="Build the store in this new (or empty) directory and keep it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Rebuild projections from their source topics (not the changelogs) into a fresh store; print a digest per
    table, equal to the live app's for the same log."""
    try:
        limits = parse_until(until or [])
        with _store(store) as tables:
            result = _run(limits, projection, tables)
            sizes = {name: len(tables.table(name)) for name in result.digests}
    except (ReplayError, StoreError, StreamsError) as e:
        raise _fail(str(e)) from e
    if as_json:
        out.print_json(data=_summary(result, limits, sizes))
        return
    table = Table(title=_title("replay", limits))
    table.add_column("projection")
    table.add_column("entries", justify="right")
    table.add_column("sha256")
    for name, digest in result.digests.items():
        table.add_row(name, str(sizes[name]), digest)
    out.print(table)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.skip_reasons.items()))
    out.print(
        f"{result.read} records read, {result.folded} folded, {result.skipped} skipped"
        f"{f' ({reasons})' if reasons else ''} in {result.duration_s:.2f}s"
        + (f"; store kept at {store}" if store else "")
    )


def _summary(result: ReplayResult, until: Until, sizes: dict[str, int]) -> dict[str, Any]:
    return {
        "digests": result.digests,
        "entries": sizes,
        "counts": result.counts(),
        "skip_reasons": result.skip_reasons,
        "duration_s": round(result.duration_s, 3),
        "until": {
            "time_ms": until.time_ms,
            "offsets": {f"{t}:{p}": o for (t, p), o in sorted(until.offsets.items())},
        },
        "stopped_at": {f"{t}:{p}": o for (t, p), o in sorted(result.stopped_at.items())},
    }


def _title(what: str, until: Until) -> str:
    moments = [format_time_ms(until.time_ms)] if until.time_ms is not None else []
    moments += [f"{t}:{p}:{o}" for (t, p), o in sorted(until.offsets.items())]
    return f"{what} until {', '.join(moments)}" if moments else f"{what} to the end of the log"


@app.command("status")
def status_command(
    projection: ProjectionOption = None,
    until: UntilOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Every table as one JSON object on stdout.")] = False,
) -> None:
    """The projections' current state (breakers, conservative mode, pauses, seeds, compile queue, metrics, dead
    letters): from the live projections app when it answers (ESPER_PROJECTIONS_URL, default
    http://127.0.0.1:6066), else, or with --until, rebuilt by a replay into a temporary store."""
    live = None if until else _live_states(projection)
    if live is not None:
        if as_json:
            out.print_json(data=live)
            return
        out.print(f"[bold]state now[/bold] (the live projections app at {_live_url()})")
        for name, state in live.items():
            out.print(state_table(name, state) if state else f"[bold]{VIEWS.get(name, (name,))[0]}[/bold]: none")
        return
    try:
        limits = parse_until(until or [])
        with _store(None) as tables:
            result = _run(limits, projection, tables)
            states = {p.name: dict(tables.table(p.name).items_json()) for p in select(projection)}
    except (ReplayError, StoreError, StreamsError) as e:
        raise _fail(str(e)) from e
    if as_json:
        out.print_json(data=states)
        return
    out.print(f"[bold]{_title('state', limits)}[/bold] ({result.folded} facts folded in {result.duration_s:.2f}s)")
    for name, state in states.items():
        if state:
            out.print(state_table(name, state))
        else:
            out.print(f"[bold]{VIEWS.get(name, (name,))[0]}[/bold]: none")


def _live_url() -> str:
    from esper.projections.app import DEFAULT_WEB_PORT

    return os.environ.get("ESPER_PROJECTIONS_URL", f"http://127.0.0.1:{DEFAULT_WEB_PORT}")


def _live_states(projection: list[str] | None) -> dict[str, dict[str, State]] | None:
    """Every selected table from the live app (one worker's partitions: what it serves), or None when none answers."""
    states: dict[str, dict[str, State]] = {}
    for p in select(projection):
        try:
            with urllib.request.urlopen(f"{_live_url()}/projections/{p.name}", timeout=3) as r:
                table = json.loads(r.read())
        except (OSError, ValueError):
            return None
        if not isinstance(table, dict):
            return None
        states[p.name] = table
    return states


Column = tuple[str, Callable[[State], Json]]


def _when(ms: Json) -> str:
    return format_time_ms(ms)[11:23] if isinstance(ms, int) and ms > 0 else ""


def _get(*path: str) -> Callable[[State], Json]:
    def read(state: State) -> Json:
        value: Json = state
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return read


def _paused_slots(state: State) -> str:
    return ", ".join(sorted(slot for slot, v in state.get("slots", {}).items() if v.get("paused")))


def _quota(state: State) -> str:
    quota = state.get("quota")
    return f"{quota['remaining']}/{quota['max_quota']}" if isinstance(quota, dict) else ""


def _transition(state: State) -> str:
    t = state.get("transition")
    return f"{t['from']} -> {t['to']}: {t['reason']}" if isinstance(t, dict) else ""


def _gate(state: State) -> str:
    g = state.get("last_gate")
    return f"{g['gate']} {'passed' if g['passed'] else 'refused'} {g['reason']}".strip() if isinstance(g, dict) else ""


# What `status` shows of each projection (title, columns); a projection not named here shows its top-level scalar
# fields.
VIEWS: dict[str, tuple[str, list[Column]]] = {
    "breakers": (
        "Breakers",
        [
            ("state", _get("state")),
            ("transitions", _get("transitions")),
            ("failures", _get("failures")),
            ("last transition", _transition),
            ("at", lambda s: _when(_get("stats", "at_ms")(s))),
        ],
    ),
    "conservative": (
        "Conservative mode",
        [
            ("active", _get("active")),
            ("reasons", _get("reasons")),
            ("since", lambda s: _when(s.get("since_ms"))),
            ("entered", _get("entered")),
        ],
    ),
    "pauses": (
        "Pauses",
        [
            ("paused slots", _paused_slots),
            ("paused", _get("paused_slots")),
            ("quota left", _quota),
        ],
    ),
    "seeds": (
        "Seeds",
        [
            ("stage", _get("stage")),
            ("previous", _get("previous")),
            ("last gate", _gate),
            ("since", lambda s: _when(s.get("since_ms"))),
        ],
    ),
    "compilations": (
        "Compile queue",
        [
            ("status", _get("status")),
            ("blueprint", _get("blueprint_id")),
            ("kind", _get("kind")),
            ("strategy", _get("strategy")),
            ("cache", _get("cache_level")),
            ("failure", _get("failure_reason")),
            ("requestor", _get("requestor")),
        ],
    ),
    "blueprints": (
        "Blueprints",
        [
            ("name", _get("name")),
            ("ok", _get("ok")),
            ("failed", _get("failed")),
            ("tiers", lambda s: ", ".join(sorted(s.get("tiers", {})))),
            ("failures", _get("failures")),
        ],
    ),
    "metrics": (
        "Latest metrics",
        [
            ("packets", _get("packets")),
            ("series", lambda s: len(s.get("series", {}))),
            ("last packet", lambda s: _when(s.get("last_packet_ms"))),
        ],
    ),
    "deadletters": (
        "Recent dead letters",
        [
            ("count", _get("count")),
            ("last error", lambda s: _get("last", "error_type")(s)),
            ("where", lambda s: f"{_get('last', 'partition')(s)}@{_get('last', 'offset')(s)}" if s.get("last") else ""),
            ("failed at", lambda s: _when(_get("last", "failed_at_ms")(s))),
            ("error", lambda s: _get("last", "error")(s)),
        ],
    ),
}


def state_table(name: str, state: dict[str, Json], limit: int = STATUS_ROWS) -> Table:
    """One projection as a table: a row per entity (the last `limit` in key order), the columns of its view."""
    title, columns = VIEWS.get(name, (name, _scalar_columns(state)))
    table = Table(title=f"{title} ({len(state)})", title_justify="left")
    keys = sorted(state)[-limit:]
    table.add_column("key", overflow="fold")
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for key in keys:
        table.add_row(key, *(_cell(read(state[key])) for _, read in columns))
    if len(state) > len(keys):
        table.caption = f"{len(state) - len(keys)} more not shown"
    return table


def _scalar_columns(state: dict[str, Json]) -> list[Column]:
    names = sorted({k for v in state.values() for k, x in v.items() if not isinstance(x, dict | list)})
    return [(n, _get(n)) for n in names]


def _cell(value: Json) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
