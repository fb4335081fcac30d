"""Start times of the managed broker: cold (new data dir, no class archive) and warm (formatted, AppCDS)."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from common import Row, print_table, ratio_row

from esper.settings import load_settings
from esper.streams.local.broker import LocalBroker

ROUNDS = 3


def _timed_up(broker: LocalBroker) -> float:
    start = time.perf_counter()
    broker.up(timeout_s=180)
    elapsed = time.perf_counter() - start
    broker.down()
    return elapsed


def run() -> list[Row]:
    settings = load_settings(broker_port=19392, controller_port=19393, bootstrap_servers=None)
    broker = LocalBroker(settings.cluster(), name="bench-broker")
    broker.dist.provision()  # Maven resolution is a one-time cost, not part of a start
    cold, warm = [], []
    try:
        for _ in range(ROUNDS):
            broker.down()
            shutil.rmtree(broker.dir, ignore_errors=True)
            cold.append(_timed_up(broker))  # formats storage, loads classes from jars, dumps the archive at exit
            warm.append(_timed_up(broker))  # existing data, classes mapped from the archive
    finally:
        broker.down()
        shutil.rmtree(Path(broker.dir), ignore_errors=True)
    c, w = statistics.median(cold), statistics.median(warm)
    return [
        Row("broker cold start (format + start + ready)", c, "s"),
        ratio_row("broker warm start (AppCDS, existing data)", w, "s", "cold start", c),
    ]


if __name__ == "__main__":
    print_table(run(), "broker start")
