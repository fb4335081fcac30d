"""The live dashboard, served by the projections app's web server (Faust's aiohttp):

  GET /dashboard          one self-contained HTML page (inline CSS and JS: nothing is fetched from elsewhere)
  GET /dashboard/state    the boards it shows, as JSON: {"boards": [{name, title, columns, rows, total}]}

The page polls /dashboard/state every second and updates its tables in place (no reload): one row per entity,
found by its key (`<tr id="BOARD:KEY" data-board="BOARD" data-key="KEY" data-tone="...">`, its cells by
`data-field`), a cell rewritten only when its text changed, and `data-changed-ms` (the browser's Date.now()) stamped
on a row whenever one of its cells did. Boards: breakers (coloured by CircuitState name), conservative mode, pause
slots, seeds (stage), the compile queue (pending/done/failed, tier, cache level, durations), dead letters per
origin, and recent safety events (the latest one of each breaker, slot, seed and service, newest first: the tables
keep each entity's last event, not a log).

What a board shows is decided here, in Python (`boards`: pure, over the tables' decoded states); the page only
draws rows. The states are read from this worker's own table partitions, as the JSON views read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from esper.projections.reducers import State
from esper.projections.views import RawTable, table_json

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response

__all__ = ["MAX_EVENTS", "MAX_ROWS", "PAGE", "Board", "Row", "boards", "register", "snapshot"]

MAX_ROWS = 200  # rows a board sends (the newest, or the first by key); the total is sent too
MAX_EVENTS = 30  # recent safety events shown

Cell = str | int | float | bool | None


@dataclass(frozen=True)
class Row:
    """One entity on a board: its key (the DOM row's id), a tone (a CSS class: a CircuitState, a stage, a status),
    the time of its last change (for ordering) and its cells by column field."""

    key: str
    tone: str
    at_ms: int
    cells: dict[str, Cell]

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "tone": self.tone, "cells": self.cells}


@dataclass(frozen=True)
class Board:
    """A board: its name (the DOM section's id), title, columns (field, title, kind: "text" or "time", epoch ms)
    and the tables it reads; `rows` turns their decoded states into rows; `newest_first` orders by time, else by
    key."""

    name: str
    title: str
    columns: tuple[tuple[str, str, str], ...]
    tables: tuple[str, ...]
    rows: Callable[[Mapping[str, Mapping[str, State]]], Iterable[Row]]
    newest_first: bool = False
    limit: int = MAX_ROWS


def _breaker_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for key, s in t["breakers"].items():
        tr, stats = s["transition"] or {}, s["stats"] or {}
        yield Row(
            key,
            s["state"],
            max(tr.get("at_ms", 0), stats.get("at_ms", 0)),
            {
                "breaker": key,
                "state": s["state"],
                "transition": f"{tr['from']} → {tr['to']}" if tr else "",
                "reason": tr.get("reason", ""),
                "transitions": s["transitions"],
                "failures": s["failures"],
                "at": stats.get("at_ms", 0),
            },
        )


def _conservative_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for key, s in t["conservative"].items():
        yield Row(
            key,
            "ACTIVE" if s["active"] else "INACTIVE",
            s["since_ms"],
            {
                "service": key,
                "mode": "ACTIVE" if s["active"] else "INACTIVE",
                "reasons": ", ".join(s["reasons"]),
                "entered": s["entered"],
                "at": s["since_ms"],
            },
        )


def _pause_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for instance, s in t["pauses"].items():
        quota = s["quota"]
        for slot_id, slot in s["slots"].items():
            state = "PAUSED" if slot["paused"] else "RUNNING"
            yield Row(
                f"{instance}/{slot_id}",
                state,
                slot["since_ms"],
                {
                    "slot": f"{instance}/{slot_id}",
                    "state": state,
                    "reason": slot["reason"] if slot["paused"] else (slot["last_exit"] or {}).get("cause", ""),
                    "quota_ms": slot["quota_ms"],
                    "quota_left_ms": None if quota is None else quota["remaining"],
                    "pauses": slot["pauses"],
                    "at": slot["since_ms"],
                },
            )


def _seed_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for key, s in t["seeds"].items():
        gate = s["last_gate"] or {}
        yield Row(
            key,
            s["stage"],
            s["since_ms"],
            {
                "seed": key,
                "stage": s["stage"],
                "previous": s["previous"],
                "gate": f"{gate.get('gate', '')} {'passed' if gate.get('passed') else 'refused'}" if gate else "",
                "transitions": s["transitions"],
                "refusals": s["refusals"],
                "at": s["since_ms"],
            },
        )


def _compilation_at(s: State) -> int:
    return max((r or {}).get("at_ms", 0) for r in (s["request"], s["result"], s["complete"], s["audit"]))


def _compilation_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for key, s in t["compilations"].items():
        result = s["result"] or {}
        at = _compilation_at(s)
        yield Row(
            key,
            s["status"],
            at,
            {
                "request": key,
                "status": s["status"],
                "blueprint": s["blueprint_id"],
                "kind": s["kind"],
                "tier": s["strategy"],
                "cache": s["cache_level"],
                "failure": s["failure_reason"],
                "queue_ms": result.get("queue_ms"),
                "compile_ms": result.get("compile_ms"),
                "total_ms": result.get("total_ms"),
                "artifact": s["artifact_id"],
                "at": at,
            },
        )


def _deadletter_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    for key, s in t["deadletters"].items():
        last = s["last"] or {}
        yield Row(
            key,
            "DEAD",
            0,
            {
                "origin": key,
                "count": s["count"],
                "error_types": ", ".join(f"{k} × {n}" for k, n in sorted(s["error_types"].items())),
                "last": f"{last.get('error_type', '')} @ {last.get('partition', '')}:{last.get('offset', '')}",
                "error": last.get("error", ""),
            },
        )


def _event_rows(t: Mapping[str, Mapping[str, State]]) -> Iterable[Row]:
    """The latest event of each entity the safety tables hold, as one line."""

    def event(kind: str, entity: str, tone: str, at: int, what: str) -> Row:
        return Row(f"{kind}:{entity}", tone, at, {"at": at, "kind": kind, "entity": entity, "event": what})

    for r in _breaker_rows(t):
        if r.cells["transition"]:
            yield event("breaker", r.key, r.tone, r.at_ms, f"{r.cells['transition']} ({r.cells['reason']})")
    for r in _pause_rows(t):
        yield event("pause", r.key, r.tone, r.at_ms, f"{r.tone.lower()} ({r.cells['reason']})")
    for r in _seed_rows(t):
        yield event("seed", r.key, r.tone, r.at_ms, f"{r.cells['previous']} → {r.tone} {r.cells['gate']}".strip())
    for r in _conservative_rows(t):
        yield event("conservative", r.key, r.tone, r.at_ms, f"{r.tone.lower()} ({r.cells['reasons']})")


def _columns(*spec: str) -> tuple[tuple[str, str, str], ...]:
    """Columns from "field" (text) or "field:time" (epoch ms); the title is the field's words."""
    out = []
    for s in spec:
        field, _, kind = s.partition(":")
        title = field.replace("_", " ")
        out.append((field, f"{title} (UTC)" if kind == "time" else title, kind or "text"))
    return tuple(out)


BOARDS: tuple[Board, ...] = (
    Board(
        "breakers",
        "Circuit breakers",
        _columns("breaker", "state", "transition", "reason", "transitions", "failures", "at:time"),
        ("breakers",),
        _breaker_rows,
    ),
    Board(
        "conservative",
        "Conservative mode",
        _columns("service", "mode", "reasons", "entered", "at:time"),
        ("conservative",),
        _conservative_rows,
    ),
    Board(
        "pauses",
        "Pauses",
        _columns("slot", "state", "reason", "quota_ms", "quota_left_ms", "pauses", "at:time"),
        ("pauses",),
        _pause_rows,
    ),
    Board(
        "seeds",
        "Seed lifecycles",
        _columns("seed", "stage", "previous", "gate", "transitions", "refusals", "at:time"),
        ("seeds",),
        _seed_rows,
    ),
    Board(
        "compilations",
        "Compile queue",
        _columns(
            "request",
            "status",
            "blueprint",
            "kind",
            "tier",
            "cache",
            "failure",
            "queue_ms",
            "compile_ms",
            "total_ms",
            "artifact",
            "at:time",
        ),
        ("compilations",),
        _compilation_rows,
        newest_first=True,
    ),
    Board(
        "deadletters",
        "Dead letters",
        _columns("origin", "count", "error_types", "last", "error"),
        ("deadletters",),
        _deadletter_rows,
    ),
    Board(
        "events",
        "Recent safety events",
        _columns("at:time", "kind", "entity", "event"),
        ("breakers", "pauses", "seeds", "conservative"),
        _event_rows,
        newest_first=True,
        limit=MAX_EVENTS,
    ),
)
TABLES: tuple[str, ...] = tuple(sorted({name for b in BOARDS for name in b.tables}))


def boards(states: Mapping[str, Mapping[str, State]]) -> dict[str, Any]:
    """What the page shows, from every table's decoded states (key -> state); a missing table is empty."""
    tables = {name: states.get(name, {}) for name in TABLES}
    out = []
    for b in BOARDS:
        rows = list(b.rows(tables))
        rows.sort(key=(lambda r: (-r.at_ms, r.key)) if b.newest_first else (lambda r: r.key))
        out.append(
            {
                "name": b.name,
                "title": b.title,
                "columns": [list(c) for c in b.columns],
                "rows": [r.as_json() for r in rows[: b.limit]],
                "total": len(rows),
            }
        )
    return {"boards": out}


def snapshot(tables: Mapping[str, RawTable]) -> dict[str, Any]:
    """`boards` of the tables as the app keeps them (entity key -> the state's JSON)."""
    return boards({name: table_json(tables[name]) for name in TABLES if name in tables})


def register(app: faust.App) -> None:
    """Add GET /dashboard and GET /dashboard/state to `app`'s web server; the tables are the app's own (by name)."""
    from faust.web import View

    @app.page("/dashboard/state")
    class DashboardState(View):
        async def get(self, request: Request) -> Response:
            found = {name: cast(RawTable, app.tables[name]) for name in TABLES if name in app.tables}
            return self.json(snapshot(found))

    @app.page("/dashboard")
    class DashboardPage(View):
        async def get(self, request: Request) -> Response:
            return self.html(PAGE)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Esper projections</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { display: flex; gap: 1em; align-items: baseline; padding: 8px 16px; background: #1d2330; color: #fff; }
  header h1 { font-size: 16px; margin: 0; }
  #status[data-live="true"] { color: #7ee2a8; }
  #status[data-live="false"] { color: #ff9b9b; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 12px; padding: 12px; }
  section { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; padding: 6px 10px; overflow: auto; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 14px; margin: 4px 0; }
  h2 small { font-weight: normal; color: #667; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #e4e6ea; white-space: nowrap; }
  th { color: #556; font-weight: 600; }
  td.empty { color: #99a; font-style: italic; }
  td.tone { font-weight: 600; border-radius: 3px; }
  tr.flash { animation: flash 1s ease-out; }
  @keyframes flash { from { background: #fff3b0; } to { background: transparent; } }
  .tone-CLOSED, .tone-done, .tone-RUNNING, .tone-INACTIVE, .tone-FOSSILIZED { background: #d3f5df; color: #11602f; }
  .tone-OPEN, .tone-FORCED_OPEN, .tone-failed, .tone-CULLED, .tone-EMBARGOED, .tone-DEAD, .tone-ACTIVE
    { background: #fdd8d8; color: #8a1212; }
  .tone-HALF_OPEN, .tone-PAUSED, .tone-PROBATIONARY, .tone-SHADOWING, .tone-RESETTING
    { background: #ffe9bf; color: #7a4a00; }
  .tone-pending, .tone-GERMINATED, .tone-TRAINING, .tone-BLENDING { background: #dbe8ff; color: #173f87; }
  .tone-DISABLED, .tone-METRICS_ONLY, .tone-DORMANT, .tone-UNSPECIFIED, .tone-UNKNOWN
    { background: #e8e9ec; color: #445; }
</style>
</head>
<body data-polls="0">
<header><h1>Esper projections</h1><span id="status" data-live="false">connecting…</span></header>
<main id="boards"></main>
<script>
"use strict";
const POLL_MS = 1000;
const WIDE = new Set(["compilations", "events"]);
const main = document.getElementById("boards");
const status = document.getElementById("status");

function text(value, kind) {
  if (value === null || value === undefined) return "";
  if (kind === "time") return value ? new Date(value).toISOString().slice(11, 23) : "";  // UTC; the date: title
  return String(value);
}

function section(board) {
  let s = document.getElementById("board-" + board.name);
  if (s) return s;
  s = document.createElement("section");
  s.id = "board-" + board.name;
  s.dataset.board = board.name;
  if (WIDE.has(board.name)) s.className = "wide";
  const h = document.createElement("h2");
  h.textContent = board.title + " ";
  h.appendChild(document.createElement("small"));
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const [field, title] of board.columns) {
    const th = document.createElement("th");
    th.dataset.field = field;
    th.textContent = title;
    head.appendChild(th);
  }
  table.createTBody();
  s.append(h, table);
  main.appendChild(s);
  return s;
}

function row(board, r) {
  const tr = document.createElement("tr");
  tr.id = board.name + ":" + r.key;
  tr.dataset.board = board.name;
  tr.dataset.key = r.key;
  for (const [field, , kind] of board.columns) {
    const td = tr.insertCell();
    td.dataset.field = field;
    td.dataset.kind = kind;
  }
  return tr;
}

function update(board, tr, r) {
  let changed = tr.dataset.tone !== r.tone;
  tr.dataset.tone = r.tone;
  board.columns.forEach(([field, , kind], i) => {
    const td = tr.cells[i];
    const value = text(r.cells[field], kind);
    if (td.textContent !== value) {
      td.textContent = value;
      if (kind === "time" && value) td.title = new Date(r.cells[field]).toISOString();
      changed = true;
    }
    const toned = value !== "" && value === r.tone;  // the cell that names the row's state carries its colour
    td.className = toned ? "tone tone-" + r.tone : "";
  });
  if (changed) {
    tr.dataset.changedMs = String(Date.now());
    tr.classList.remove("flash");
    void tr.offsetWidth;  // restart the animation
    tr.classList.add("flash");
  }
}

function render(state) {
  for (const board of state.boards) {
    const s = section(board);
    const shown = board.rows.length;
    s.querySelector("h2 small").textContent =
      shown < board.total ? `${shown} of ${board.total}` : `${board.total}`;
    const body = s.querySelector("tbody");
    const old = new Map();
    for (const tr of Array.from(body.rows)) if (tr.dataset.key !== undefined) old.set(tr.dataset.key, tr);
    body.querySelectorAll("tr.placeholder").forEach((tr) => tr.remove());
    board.rows.forEach((r, i) => {
      let tr = old.get(r.key);
      old.delete(r.key);
      if (!tr) tr = row(board, r);
      update(board, tr, r);
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
    });
    for (const tr of old.values()) tr.remove();
    if (!board.rows.length) {
      const tr = body.insertRow();
      tr.className = "placeholder";
      const td = tr.insertCell();
      td.colSpan = board.columns.length;
      td.className = "empty";
      td.textContent = "nothing yet";
    }
  }
}

async function poll() {
  try {
    const response = await fetch("/dashboard/state", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    document.body.dataset.polls = String(Number(document.body.dataset.polls) + 1);
    status.dataset.live = "true";
    status.textContent = "live · " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (e) {
    status.dataset.live = "false";
    status.textContent = "no answer (" + e.message + "), retrying";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
</script>
</body>
</html>
"""
