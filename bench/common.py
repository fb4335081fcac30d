"""What every benchmark returns: rows of (figure, value, unit, baseline, ratio), printed as one table.

Figures are measured, never asserted: a ratio compares our code with a baseline run side by side in the same
process, because these machines are noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    baseline: str = ""  # what the ratio is taken against ("" when the figure stands alone)
    ratio: float | None = None  # value / baseline value


def ratio_row(figure: str, value: float, unit: str, baseline_name: str, baseline_value: float) -> Row:
    return Row(figure, value, unit, baseline_name, value / baseline_value if baseline_value else None)


def per_call_ns(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Median over repeats of the mean time of one call, in nanoseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(samples)


def print_table(rows: Iterable[Row], title: str = "") -> None:
    rows = list(rows)
    if title:
        print(f"\n== {title}")
    header = ("figure", "value", "unit", "baseline", "ratio")
    cells = [header] + [
        (r.figure, f"{r.value:.4g}", r.unit, r.baseline, "" if r.ratio is None else f"{r.ratio:.3f}") for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for i, c in enumerate(cells):
        print("  ".join(s.ljust(w) for s, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
