"""Canonical bytes: identical across processes and runs, blind to description and spelling, and changed by anything
that changes the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from esper.compiler.ir.canonical import canonical_bytes, canonical_ir, content_hash
from esper.compiler.ir.validate import SecurityValidator
from esper.proto import leyline_pb2 as pb
from tests.ir_samples import EXAMPLES, examples

ALL = examples()

_CHILD = """
import json, sys
from esper.compiler.ir.canonical import canonical_bytes, content_hash
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
out = {}
for path in sys.argv[1:]:
    v = SecurityValidator().validate(load_blueprint(path))
    out[path] = [content_hash(v), canonical_bytes(v).hex()]
print(json.dumps(out))
"""


def _hash(ir: pb.BlueprintIR) -> str:
    return content_hash(SecurityValidator().validate(ir))


def _copy(name: str) -> pb.BlueprintIR:
    ir = pb.BlueprintIR()
    ir.CopyFrom(ALL[name])
    return ir


def test_bytes_are_identical_across_processes() -> None:
    paths = [str(p) for p in sorted(EXAMPLES.iterdir())]
    runs = []
    for hash_seed in ("1", "4242"):  # a different str hash order in each child
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, *paths], env=env, capture_output=True, text=True, check=True, timeout=120
        )
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1]
    for path, (digest, hexbytes) in runs[0].items():
        name = os.path.basename(path)
        v = SecurityValidator().validate(ALL[name])
        assert (digest, hexbytes) == (content_hash(v), canonical_bytes(v).hex())


def test_friendly_yaml_and_proto_json_of_one_blueprint_share_an_address() -> None:
    assert _hash(ALL["mlp.yaml"]) == _hash(ALL["mlp_proto.json"])


def _reorder_attributes(ir: pb.BlueprintIR) -> None:
    for n in ir.nodes:
        attrs = list(n.attributes)[::-1]
        del n.attributes[:]
        n.attributes.extend(attrs)


def _write_defaults(ir: pb.BlueprintIR) -> None:
    ir.nodes[1].attributes.add(key="bias", b=True)  # linear's default
    ir.nodes[0].attributes.add(key="eps", f=1e-5)  # layer_norm's


def _describe(ir: pb.BlueprintIR) -> None:
    ir.name, ir.author, ir.blueprint_id = "renamed", "someone", "bp-2"
    ir.metadata.add(key="zzz", value="note")
    ir.created_at.FromSeconds(1_700_000_000)


@pytest.mark.parametrize("change", [_reorder_attributes, _write_defaults, _describe])
def test_description_and_spelling_do_not_change_the_address(change: Callable[[pb.BlueprintIR], None]) -> None:
    ir = _copy("mlp.yaml")
    change(ir)
    assert _hash(ir) == _hash(ALL["mlp.yaml"])


def _attr(ir: pb.BlueprintIR) -> None:
    next(a for a in ir.nodes[3].attributes if a.key == "p").f = 0.2


def _op(ir: pb.BlueprintIR) -> None:
    ir.nodes[2].op = "silu"
    del ir.nodes[2].attributes[:]


def _inputs(ir: pb.BlueprintIR) -> None:
    ir.nodes[5].inputs[:] = ["down", "input"]


def _dtype(ir: pb.BlueprintIR) -> None:
    ir.input.dtype = pb.DTYPE_BFLOAT16


def _batch(ir: pb.BlueprintIR) -> None:
    ir.input.shape[0] = 8


def _rename(ir: pb.BlueprintIR) -> None:  # ids name the weights and seed them
    ir.nodes[1].id = "up2"
    ir.nodes[2].inputs[:] = ["up2"]


@pytest.mark.parametrize("change", [_attr, _op, _inputs, _dtype, _batch, _rename])
def test_what_determines_the_module_changes_the_address(change: Callable[[pb.BlueprintIR], None]) -> None:
    ir = _copy("mlp.yaml")
    change(ir)
    assert _hash(ir) != _hash(ALL["mlp.yaml"])


def test_canonical_form_is_a_valid_blueprint_with_sorted_complete_attributes() -> None:
    v = SecurityValidator().validate(ALL["conv.yaml"])
    canon = canonical_ir(v)
    assert not canon.name and not canon.metadata and not canon.HasField("created_at")
    for n in canon.nodes:
        keys = [a.key for a in n.attributes]
        assert keys == sorted(keys)
    assert [a.key for a in canon.nodes[1].attributes] == sorted(
        ["bias", "dilation", "groups", "kernel_size", "out_channels", "padding", "stride"]
    )
    again = SecurityValidator().validate(canon)
    assert canonical_bytes(again) == canonical_bytes(v)


def test_negative_zero_is_written_as_zero() -> None:
    ir = _copy("mlp.yaml")
    next(a for a in ir.nodes[3].attributes if a.key == "p").f = 0.0
    plus = _hash(ir)
    next(a for a in ir.nodes[3].attributes if a.key == "p").f = -0.0
    assert _hash(ir) == plus
