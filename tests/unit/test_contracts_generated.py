"""The generated Python code of the Leyline contracts matches the .proto (run `make proto` when this fails)."""

from __future__ import annotations

from pathlib import Path

from esper.proto.generate import PROTO_DIR, generate


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("leyline_pb2.py", "leyline_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert fresh == committed, f"proto/{name} is stale: run `make proto`"
