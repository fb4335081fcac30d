"""The dashboard's boards (pure): one row per entity with a stable key, tones by state, caps and order."""

from __future__ import annotations

from typing import Any

from esper.projections import reducers
from esper.projections.app import encode_state
from esper.projections.dashboard import MAX_EVENTS, MAX_ROWS, PAGE, boards, snapshot
from esper.proto import leyline_pb2 as pb
from tests.unit.test_projections_cli import _fact, _facts


def _by_name(tables: reducers.Tables) -> dict[str, dict[str, dict[str, Any]]]:
    return {b["name"]: {r["key"]: r for r in b["rows"]} for b in boards(tables)["boards"]}


def _sample() -> reducers.Tables:
    # The sample's result shares its request's event id (both at offset 0): a result of its own answers it.
    result = pb.CompilationResult(request_id="r1", blueprint_id="bp", success=True, strategy=pb.STRATEGY_FAST)
    result.cache_level = pb.CACHE_L2
    return reducers.fold_all([*_facts(), _fact("leyline.compilation.results", 99, result)])


def test_every_board_shows_its_entities_with_their_tone() -> None:
    shown = _by_name(_sample())
    assert shown["breakers"]["kasmina/k1/graft"]["tone"] == "OPEN"
    assert shown["breakers"]["kasmina/k1/graft"]["cells"]["transition"] == "CLOSED → OPEN"
    assert shown["conservative"]["tezzeret/k1"]["tone"] == "ACTIVE"
    pause = shown["pauses"]["k1/s0"]
    assert pause["tone"] == "PAUSED" and pause["cells"]["quota_left_ms"] == 5, pause
    assert shown["seeds"]["k1/s0"]["tone"] == "GERMINATED"
    compiled = shown["compilations"]["r1"]
    assert compiled["tone"] == "done" and compiled["cells"]["tier"] == "FAST" and compiled["cells"]["cache"] == "L2"
    assert shown["deadletters"]["leyline.safety"]["cells"]["count"] == 1
    assert set(shown["events"]) == {"breaker:kasmina/k1/graft", "pause:k1/s0", "seed:k1/s0", "conservative:tezzeret/k1"}


def test_the_snapshot_of_stored_states_equals_the_boards_of_the_states() -> None:
    tables = _sample()
    stored = {name: {k: encode_state(s) for k, s in t.items()} for name, t in tables.items()}
    assert snapshot(stored) == boards(tables)
    assert all(not b["rows"] for b in boards({})["boards"])


def test_long_boards_keep_the_newest_rows_and_count_the_rest() -> None:
    n = MAX_ROWS + 5
    facts = [
        _fact("leyline.compilation.requests", i, pb.CompilationRequest(request_id=f"r{i:04}", blueprint_id="bp"))
        for i in range(n)
    ]
    compile_board = next(b for b in boards(reducers.fold_all(facts))["boards"] if b["name"] == "compilations")
    assert compile_board["total"] == n and len(compile_board["rows"]) == MAX_ROWS
    assert [r["key"] for r in compile_board["rows"]][:2] == [f"r{n - 1:04}", f"r{n - 2:04}"]
    assert all(r["tone"] == "pending" for r in compile_board["rows"])
    assert MAX_EVENTS < MAX_ROWS and "/dashboard/state" in PAGE and "http" not in PAGE.replace("HTTP ", "")
