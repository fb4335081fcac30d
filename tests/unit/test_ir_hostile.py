"""Random and hostile blueprints: the validator and the loader either accept or raise their one typed error, never
anything else, and refuse oversized input before working on it (a hang would trip the timeout)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.compiler.exceptions import BlueprintLoadError, BlueprintValidationError
from esper.compiler.ir.build import BlueprintModule
from esper.compiler.ir.canonical import canonical_bytes
from esper.compiler.ir.load import parse_blueprint
from esper.compiler.ir.schema import OPS
from esper.compiler.ir.validate import SecurityValidator, ValidatedBlueprint
from esper.proto import leyline_pb2 as pb
from tests.ir_samples import examples

pytestmark = pytest.mark.timeout(120)

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
SMALL = st.integers(-3, 70)
IDS = st.sampled_from(["a", "b", "c", "d", "input", "", "a b", "x" * 70])
KEYS = st.sampled_from(sorted({k for s in OPS.values() for k in s.attrs} | {"", "__class__", "path"}))
EXAMPLES = list(examples().values())
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 0.1, 1e-5, 1.0, 0.5])


@st.composite
def attributes(draw: st.DrawFn) -> pb.Attribute:
    attr = pb.Attribute(key=draw(KEYS))
    case = draw(st.sampled_from(["i", "f", "s", "b", "ints", "floats", None]))
    if case == "i":
        attr.i = draw(SMALL | INT64)
    elif case == "f":
        attr.f = draw(FLOATS)
    elif case == "s":
        attr.s = draw(st.sampled_from(["none", "tanh", "", "../x", "\x00"]) | st.text(max_size=20))
    elif case == "b":
        attr.b = draw(st.booleans())
    elif case == "ints":
        attr.ints.values.extend(draw(st.lists(SMALL | INT64, max_size=10)))
    elif case == "floats":
        attr.floats.values.extend(draw(st.lists(FLOATS, max_size=10)))
    return attr


@st.composite
def op_nodes(draw: st.DrawFn) -> pb.OpNode:
    return pb.OpNode(
        id=draw(IDS | st.text(max_size=8)),
        op=draw(st.sampled_from(sorted(OPS)) | st.text(max_size=12)),
        inputs=draw(st.lists(IDS, max_size=4)),
        attributes=draw(st.lists(attributes(), max_size=6)),
    )


@st.composite
def hostile_ir(draw: st.DrawFn) -> pb.BlueprintIR:
    ir = pb.BlueprintIR(
        ir_version=draw(st.sampled_from([0, 1, 1, 2, (1 << 32) - 1])),
        name=draw(st.text(max_size=20)),
        blueprint_id=draw(st.text(max_size=10)),
        output=draw(IDS),
    )
    ir.input.shape.extend(draw(st.lists(st.sampled_from([-1, 1, 8, 64]) | SMALL | INT64, max_size=10)))
    ir.input.dtype = draw(st.integers(0, 9))
    ir.nodes.extend(draw(st.lists(op_nodes(), max_size=12)))
    for _ in range(draw(st.integers(0, 3))):
        ir.metadata.add(key=draw(st.text(max_size=10)), value=draw(st.text(max_size=20)))
    return ir


@st.composite
def mutated_examples(draw: st.DrawFn) -> pb.BlueprintIR:
    """An example with one node's op, inputs or an attribute swapped for a random one: deep paths, not just the
    first checks."""
    ir = pb.BlueprintIR()
    ir.CopyFrom(draw(st.sampled_from(EXAMPLES)))
    target = ir.nodes[draw(st.integers(0, len(ir.nodes) - 1))]
    what = draw(st.sampled_from(["op", "inputs", "attr", "shape", "retune", "retune"]))
    if what == "retune" and target.attributes:  # a plausible value of the same kind: often still valid
        attr = target.attributes[draw(st.integers(0, len(target.attributes) - 1))]
        case = attr.WhichOneof("value")
        if case == "i":
            attr.i = draw(st.integers(1, 64))
        elif case == "f":
            attr.f = draw(st.floats(0.0, 0.99))
        elif case == "ints":
            attr.ints.values[:] = draw(
                st.lists(st.integers(1, 8), min_size=len(attr.ints.values), max_size=len(attr.ints.values))
            )
    elif what == "op":
        target.op = draw(st.sampled_from(sorted(OPS)))
    elif what == "inputs":
        target.inputs[:] = draw(st.lists(st.sampled_from([n.id for n in ir.nodes] + ["input"]), max_size=3))
    elif what == "attr":
        target.attributes.append(draw(attributes()))
    else:
        ir.input.shape[:] = draw(st.lists(st.sampled_from([-1, 1, 2, 8, 16, 64, 0]), min_size=1, max_size=5))
    return ir


def _accept_or_typed_error(ir: pb.BlueprintIR) -> ValidatedBlueprint | None:
    try:
        v = SecurityValidator().validate(ir)
    except BlueprintValidationError as e:
        assert e.problems
        return None
    assert canonical_bytes(v)
    return v


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_ir())
def test_random_ir_never_crashes(ir: pb.BlueprintIR) -> None:
    _accept_or_typed_error(ir)


@settings(max_examples=200, deadline=None)
@given(mutated_examples())
def test_mutated_examples_never_crash_and_build_as_inferred(ir: pb.BlueprintIR) -> None:
    v = _accept_or_typed_error(ir)
    if v is not None:
        batch = 2 if v.input_shape[0] == -1 else v.input_shape[0]
        out = BlueprintModule(v, seed=0)(torch.randn(batch, *v.input_shape[1:]))
        assert tuple(out.shape) == (batch, *v.output_shape[1:])


def test_100k_nodes_are_refused_before_any_is_read() -> None:
    ir = pb.BlueprintIR(ir_version=1, output="n0")
    ir.input.shape.extend([-1, 64])
    ir.nodes.extend(pb.OpNode(id=f"n{i}", op="relu", inputs=["input"]) for i in range(100_000))
    with pytest.raises(BlueprintValidationError) as e:
        SecurityValidator().validate(ir)
    assert [p.problem for p in e.value.problems][-1].startswith("100000 nodes, over the limit")


def test_megabyte_strings_are_refused() -> None:
    for field in ("name", "author", "blueprint_id"):
        ir = pb.BlueprintIR()
        ir.CopyFrom(EXAMPLES[0])
        setattr(ir, field, "x" * (1 << 20))
        with pytest.raises(BlueprintValidationError) as e:
            SecurityValidator().validate(ir)
        assert "bytes serialized, over" in e.value.problems[0].problem


def test_a_long_chain_and_a_long_cycle_are_handled_without_recursion() -> None:
    chain = pb.BlueprintIR(ir_version=1, output="n3999")
    chain.input.shape.extend([-1, 8])
    chain.input.dtype = pb.DTYPE_FLOAT32
    chain.nodes.extend(pb.OpNode(id=f"n{i}", op="relu", inputs=[f"n{i - 1}" if i else "input"]) for i in range(4000))
    assert len(SecurityValidator().validate(chain).nodes) == 4000
    chain.nodes[0].inputs[:] = ["n3999"]  # now a 4000-node cycle
    with pytest.raises(BlueprintValidationError) as e:
        SecurityValidator().validate(chain)
    assert e.value.problems[0] == (
        "n0",
        "input 'n3999' names a later node (nodes come in order, so a cycle never passes)",
    )


JSONISH = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode), st.booleans())
def test_loader_on_garbage_raises_its_typed_error(raw: bytes, as_json: bool) -> None:
    try:
        parse_blueprint(raw, as_json=as_json)
    except BlueprintLoadError as e:
        assert e.problems


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "ir_version": JSONISH,
            "input": JSONISH | st.just({"shape": [-1, 64], "dtype": "float32"}),
            "nodes": JSONISH | st.lists(st.dictionaries(st.sampled_from(["id", "op", "inputs", "attrs"]), JSONISH)),
            "output": JSONISH,
            "metadata": JSONISH,
            "created_at": JSONISH,
        },
    ),
    st.booleans(),
    st.booleans(),
)
def test_loader_then_validator_on_random_documents(doc: dict[str, object], proto_form: bool, as_json: bool) -> None:
    if proto_form:
        doc["irVersion"] = doc.pop("ir_version", 1)
    raw = json.dumps(doc).encode() if as_json else yaml.safe_dump(doc).encode()
    try:
        ir = parse_blueprint(raw, as_json=as_json)
    except BlueprintLoadError as e:
        assert e.problems
        return
    _accept_or_typed_error(ir)


@pytest.mark.parametrize("as_json", [True, False])
def test_too_many_nodes_are_refused_before_conversion(as_json: bool) -> None:
    doc = {"nodes": [{"id": f"n{i}", "op": "relu", "inputs": ["input"]} for i in range(5000)]}
    raw = json.dumps(doc).encode()  # JSON is YAML too
    with pytest.raises(BlueprintLoadError) as e:
        parse_blueprint(raw, as_json=as_json)
    assert e.value.problems[0].problem == "5000 nodes, over the limit of 4096"


@pytest.mark.parametrize("as_json", [True, False])
def test_deep_nesting_is_a_load_error(as_json: bool) -> None:
    with pytest.raises(BlueprintLoadError):
        parse_blueprint(b"[" * 200_000, as_json=as_json)


def test_yaml_aliases_tags_and_duplicate_keys_are_refused() -> None:
    laughs = b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    for doc in (laughs, b"nodes: !!python/object/apply:os.system [ls]\n", b"name: a\nname: b\n"):
        with pytest.raises(BlueprintLoadError):
            parse_blueprint(doc, as_json=False)
    with pytest.raises(BlueprintLoadError):
        parse_blueprint(b'{"name": "a", "name": "b"}', as_json=True)
