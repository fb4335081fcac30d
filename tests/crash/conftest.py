"""The WAL crash matrix: its helper module on sys.path, and every scenario's result table in the terminal summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wal_crash_harness


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not wal_crash_harness.TABLES:
        return
    tr = terminalreporter
    mode = "long (ESPER_CRASH_LONG=1)" if wal_crash_harness.LONG else "short"
    tr.section(f"WAL crash matrix, {mode}")
    head = wal_crash_harness.HEAD
    for title, rows in wal_crash_harness.TABLES.items():
        cells = [head, *rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        tr.write_line("")
        tr.write_line(title)
        for i, c in enumerate(cells):
            tr.write_line("  ".join(s.ljust(w) for s, w in zip(c, widths, strict=True)).rstrip())
            if i == 0:
                tr.write_line("  ".join("-" * w for w in widths))
