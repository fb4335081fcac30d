"""The security validator: the examples pass with the right figures, and each rule rejects what it should, every
problem at once, by node id."""

from __future__ import annotations

import pytest

from esper.compiler.exceptions import BlueprintValidationError, InvalidLimitsError
from esper.compiler.ir.infer import INFER
from esper.compiler.ir.limits import ValidationLimits
from esper.compiler.ir.schema import OPS
from esper.compiler.ir.validate import SecurityValidator
from esper.proto import leyline_pb2 as pb
from tests.ir_samples import DEMO_SLOT_SHAPE, blueprint, examples, node


def _problems(ir: pb.BlueprintIR, limits: ValidationLimits | None = None, **kw: bool) -> list[tuple[str, str]]:
    with pytest.raises(BlueprintValidationError) as e:
        SecurityValidator(limits).validate(ir, **kw)
    return [(p.node, p.problem) for p in e.value.problems]


def _one(ir: pb.BlueprintIR, node_id: str, fragment: str, limits: ValidationLimits | None = None) -> None:
    problems = _problems(ir, limits)
    assert any(n == node_id and fragment in p for n, p in problems), problems


def test_every_op_has_an_inference_rule() -> None:
    assert set(OPS) == set(INFER)


def test_the_examples_fit_the_demo_seed_slot() -> None:
    found = examples()
    assert {"mlp.yaml", "conv.yaml", "attention.yaml"} <= set(found)
    for ir in found.values():
        v = SecurityValidator().validate(ir)
        assert v.input_shape == v.output_shape == DEMO_SLOT_SHAPE
        assert v.dtype == pb.DTYPE_FLOAT32


def test_mlp_figures() -> None:
    v = SecurityValidator().validate(examples()["mlp.yaml"])
    shapes = {n.id: n.shape for n in v.nodes}
    assert shapes == {
        "norm": (-1, 64),
        "up": (-1, 256),
        "act": (-1, 256),
        "drop": (-1, 256),
        "down": (-1, 64),
        "residual": (-1, 64),
    }
    assert v.params == 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    assert v.flops == 5 * 64 + 2 * 64 * 256 + 256 + 256 + 2 * 256 * 64 + 64
    assert v.activation_bytes == 4 * (64 + 64 + 256 * 3 + 64 + 64)


def test_conv_and_attention_shapes() -> None:
    conv = SecurityValidator().validate(examples()["conv.yaml"])
    assert {n.id: n.shape for n in conv.nodes}["pool"] == (-1, 16, 4, 4)
    depthwise = next(n for n in conv.nodes if n.id == "depthwise")
    assert depthwise.params == 16 * 1 * 9 + 16  # one 3x3 filter per channel
    attn = SecurityValidator().validate(examples()["attention.yaml"])
    assert next(n for n in attn.nodes if n.id == "attn").params == 4 * 32 * 32 + 4 * 32


def test_every_problem_is_reported_by_node() -> None:
    ir = blueprint(
        node("a", "linear", "input"),  # out_features missing
        node("b", "exec", "a"),  # not whitelisted
        node("c", "relu", "ghost"),  # dangling
        node("d", "add", "input", "input", alpha=2),  # unknown attribute
        output="d",
    )
    got = _problems(ir)
    nodes = {n for n, _ in got}
    assert {"a", "b", "c", "d"} <= nodes
    assert any("needs attribute 'out_features'" in p for _, p in got)
    assert any("not on the whitelist" in p for _, p in got)
    assert any("dangling" in p for _, p in got)
    assert any("no attribute 'alpha'" in p for _, p in got)


@pytest.mark.parametrize(
    ("nodes", "where", "fragment"),
    [
        ([node("a", "linear", "input", out_features="64")], "a", "must be INT"),
        ([node("a", "linear", "input", out_features=0)], "a", "outside [1"),
        ([node("a", "linear", "input", out_features=-5)], "a", "outside [1"),
        ([node("a", "linear", "input", out_features=1 << 40)], "a", "outside [1"),
        ([node("a", "dropout", "input", p=float("nan"))], "a", "outside [0, 1)"),
        ([node("a", "dropout", "input", p=1.0)], "a", "outside [0, 1)"),
        ([node("a", "layer_norm", "input", eps=float("inf"))], "a", "outside (0, 1)"),
        ([node("a", "gelu", "input", approximate="import os")], "a", "not one of ['none', 'tanh']"),
        ([node("a", "relu", "a")], "a", "takes itself"),
        ([node("a", "relu", "b"), node("b", "relu", "a")], "a", "later node"),
        ([node("a", "relu", "input"), node("a", "relu", "a")], "a", "appears twice"),
        ([node("input", "relu", "input")], "input", "blueprint's input"),
        ([node("a/../etc", "relu", "input")], "a/../etc", "a node id must match"),
        ([node("x" * 65, "relu", "input")], "x" * 40 + "...", "a node id must match"),
        ([node("x" * 300, "relu", "input")], "nodes[0]", "id is 300 bytes, over the limit of 256"),
        ([node("", "relu", "input")], "nodes[0]", "a node needs an id"),
        ([node("a", "relu", "input"), node("b", "relu", "input")], "a", "does not contribute"),
        ([node("a", "add", "input")], "a", "takes 2 inputs"),
        ([node("a", "linear", "input", out_features=32)], "output", "differs from the input's"),
        ([node("a", "softmax", "input", dim=0)], "a", "not a non-batch dimension"),
        ([node("a", "reshape", "input", shape=[7, -1])], "a", "cannot reshape 64"),
        ([node("a", "permute", "input", dims=[1, 0])], "a", "starting with 0"),
        ([node("a", "conv1d", "input", out_channels=4, kernel_size=3)], "a", "rank 3"),
    ],
)
def test_a_rule_rejects(nodes: list[dict[str, object]], where: str, fragment: str) -> None:
    _one(blueprint(*nodes), where, fragment)


def test_output_must_name_a_node() -> None:
    _one(blueprint(node("a", "relu", "input"), output="input"), "output", "must name a node")
    _one(blueprint(node("a", "relu", "input"), output="nope"), "output", "must name a node")


def test_seed_slot_rule_can_be_lifted() -> None:
    ir = blueprint(node("a", "linear", "input", out_features=32))
    assert SecurityValidator().validate(ir, seed_slot=False).output_shape == (-1, 32)


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([64], "rank 1"),
        ([-1, 0], "dimension 1 is 0"),
        ([-1, -1], "dimension 1 is -1"),
        ([-1, 1 << 30], "dimension 1 is"),
        ([-2, 64], "batch dimension -2"),
        ([-1, *([2] * 9)], "rank 10"),
    ],
)
def test_input_shape_rules(shape: list[int], fragment: str) -> None:
    _one(blueprint(node("a", "relu", "input"), shape=shape), "input", fragment)


def test_dtype_whitelist() -> None:
    ir = blueprint(node("a", "relu", "input"))
    ir.input.dtype = pb.DTYPE_INT64
    _one(ir, "input", "dtype DTYPE_INT64 is not one of")
    ir.input.dtype = 99
    _one(ir, "input", "dtype 99 is not one of")


def test_resource_limits() -> None:
    ir = examples()["mlp.yaml"]
    _one(ir, "blueprint", "parameters, over the limit of 1000", ValidationLimits(max_parameters=1000))
    _one(ir, "blueprint", "FLOPs per sample, over", ValidationLimits(max_flops_per_sample=1000))
    _one(ir, "blueprint", "activation bytes per sample, over", ValidationLimits(max_activation_bytes=1000))
    _one(ir, "blueprint", "6 nodes, over the limit of 5", ValidationLimits(max_nodes=5))
    _one(ir, "blueprint", "bytes serialized, over", ValidationLimits(max_blueprint_bytes=64))


def test_no_paths_code_or_pickles_in_text() -> None:
    ir = examples()["mlp.yaml"]
    ir.name = "/etc/passwd"
    _one(ir, "blueprint", "looks like a path")
    ir.name = "ok"
    ir.metadata.add(key="loader", value="\x80\x04\x95cos\nsystem\n")  # a pickle's opening bytes
    _one(ir, "metadata", "non-printable")
    ir.metadata[-1].key = "__reduce__()"
    _one(ir, "metadata", "is not an identifier")


def test_oversized_strings_are_refused_not_echoed() -> None:
    ir = blueprint(node("a", "relu", "input"))
    ir.nodes[0].op = "x" * 1_000_000
    problems = _problems(ir)
    assert any("op is 1000000 bytes" in p for _, p in problems)
    assert all(len(p) < 300 for _, p in problems)


def test_problem_count_is_bounded() -> None:
    ir = blueprint(*[node(f"n{i}", "nope", "input") for i in range(300)], output="n0")
    with pytest.raises(BlueprintValidationError) as e:
        SecurityValidator(ValidationLimits(max_problems=50)).validate(ir)
    assert len(e.value.problems) == 50
    assert e.value.more > 250


def test_limits_are_checked_when_made() -> None:
    with pytest.raises(InvalidLimitsError) as e:
        ValidationLimits(max_nodes=0, max_dim=-1, dtypes=frozenset({pb.DTYPE_INT64}))
    assert len(e.value.problems) == 3
    with pytest.raises(InvalidLimitsError):
        ValidationLimits(max_parameters=1.5)  # type: ignore[arg-type]
