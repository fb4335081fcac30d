"""`make bench`: run every bench/bench_*.py module's run() and print one table of measured figures."""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row, print_table  # noqa: E402
from kafka_env import bench_broker  # noqa: E402

from esper.logs import configure as configure_logging  # noqa: E402


def main(selected: list[str]) -> int:
    configure_logging()
    rows: list[Row] = []
    failed = []
    try:
        for path in sorted(HERE.glob("bench_*.py")):
            name = path.stem
            if selected and not any(s in name for s in selected):
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                rows.extend(importlib.import_module(name).run())
            except Exception:
                traceback.print_exc()
                failed.append(name)
    finally:
        bench_broker().down()  # a no-op when it was not started (ESPER_BOOTSTRAP_SERVERS, or no Kafka bench)
    print_table(rows, "Esper benchmarks (measured on this machine)")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
