"""Blueprints for the compiler/ir tests: the examples, and a friendly-form builder for small ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esper.compiler.ir.load import load_blueprint, parse_blueprint
from esper.proto import leyline_pb2 as pb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "blueprints"
DEMO_SLOT_SHAPE = (-1, 64)  # safety/demo.py: the seed slot sits between Linear(32, 64) and Linear(64, 1)


def examples() -> dict[str, pb.BlueprintIR]:
    return {p.name: load_blueprint(p) for p in sorted(EXAMPLES.iterdir())}


def node(id: str, op: str, *inputs: str, **attrs: Any) -> dict[str, Any]:
    return {"id": id, "op": op, "inputs": list(inputs), "attrs": attrs}


def blueprint(
    *nodes: dict[str, Any], shape: list[int] | None = None, output: str | None = None, **top: Any
) -> pb.BlueprintIR:
    """A friendly-form blueprint read through the loader; the output defaults to the last node."""
    data = {
        "ir_version": 1,
        "input": {"shape": shape or [-1, 64], "dtype": "float32"},
        "nodes": list(nodes),
        "output": output if output is not None else (nodes[-1]["id"] if nodes else ""),
        **top,
    }
    return parse_blueprint(json.dumps(data).encode(), as_json=True)
