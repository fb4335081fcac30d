"""The security validator on a 1,000-node blueprint (250 pre-norm residual MLP blocks at width 64), against merely
parsing its protobuf bytes; its content address; loading it from a YAML file; refusing a hostile 100k-node one."""

from __future__ import annotations

import yaml
from common import Row, per_call_ns, ratio_row

from esper.compiler.exceptions import BlueprintValidationError
from esper.compiler.ir.canonical import content_hash
from esper.compiler.ir.load import parse_blueprint
from esper.compiler.ir.validate import SecurityValidator
from esper.proto import leyline_pb2 as pb


def residual_chain(blocks: int, width: int = 64) -> dict[str, object]:
    """The friendly form of `blocks` blocks of 4 nodes: layer_norm, linear, gelu, add."""
    nodes: list[dict[str, object]] = []
    prev = "input"
    for b in range(blocks):
        nodes += [
            {"id": f"norm{b}", "op": "layer_norm", "inputs": [prev]},
            {"id": f"fc{b}", "op": "linear", "inputs": [f"norm{b}"], "attrs": {"out_features": width}},
            {"id": f"act{b}", "op": "gelu", "inputs": [f"fc{b}"]},
            {"id": f"res{b}", "op": "add", "inputs": [prev, f"act{b}"]},
        ]
        prev = f"res{b}"
    return {"ir_version": 1, "input": {"shape": [-1, width], "dtype": "float32"}, "nodes": nodes, "output": prev}


def _refuse(validator: SecurityValidator, ir: pb.BlueprintIR) -> None:
    try:
        validator.validate(ir)
    except BlueprintValidationError:
        return
    raise AssertionError("the hostile blueprint was accepted")


def run() -> list[Row]:
    doc = yaml.safe_dump(residual_chain(250), sort_keys=False).encode()
    ir = parse_blueprint(doc, as_json=False)
    raw = ir.SerializeToString()
    validator = SecurityValidator()
    validated = validator.validate(ir)
    assert len(validated.nodes) == 1000

    hostile = pb.BlueprintIR(ir_version=1, output="n0")
    hostile.input.shape.extend([-1, 64])
    hostile.nodes.extend(pb.OpNode(id=f"n{i}", op="relu", inputs=["input"]) for i in range(100_000))

    t_parse = per_call_ns(lambda: pb.BlueprintIR.FromString(raw), 20)
    t_validate = per_call_ns(lambda: validator.validate(pb.BlueprintIR.FromString(raw)), 5)
    t_hash = per_call_ns(lambda: content_hash(validated), 5)
    t_yaml = per_call_ns(lambda: parse_blueprint(doc, as_json=False), 1, repeats=3)
    t_refuse = per_call_ns(lambda: _refuse(validator, hostile), 5)
    return [
        Row("blueprint of 1,000 nodes, serialized", len(raw), "bytes"),
        ratio_row("parse + validate it (shapes, params, FLOPs)", t_validate / 1e6, "ms", "parse alone", t_parse / 1e6),
        ratio_row(
            "its content address (canonical bytes, sha256)", t_hash / 1e6, "ms", "parse + validate", t_validate / 1e6
        ),
        ratio_row("load it from YAML (friendly form)", t_yaml / 1e6, "ms", "parse + validate", t_validate / 1e6),
        ratio_row("refuse a 100k-node blueprint", t_refuse / 1e6, "ms", "validate 1,000 nodes", t_validate / 1e6),
    ]


if __name__ == "__main__":
    from common import print_table

    print_table(run(), "blueprint validation")
