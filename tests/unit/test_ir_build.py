"""The builder: every op builds, outputs have the inferred shapes, initialisation is deterministic from the seed,
and the module traces whole under torch.compile(fullgraph=True)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from esper.compiler.exceptions import BlueprintValidationError
from esper.compiler.ir.build import BUILDERS, BlueprintModule
from esper.compiler.ir.schema import OPS
from esper.compiler.ir.validate import SecurityValidator, ValidatedBlueprint
from esper.proto import leyline_pb2 as pb
from tests.ir_samples import EXAMPLES as EXAMPLES_DIR
from tests.ir_samples import blueprint, examples, node

EXAMPLES = examples()


def _validated(name: str) -> ValidatedBlueprint:
    return SecurityValidator().validate(EXAMPLES[name])


def test_every_op_has_a_builder() -> None:
    assert set(BUILDERS) == set(OPS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_same_blueprint_and_seed_give_bit_identical_weights(name: str) -> None:
    v = _validated(name)
    before = torch.random.get_rng_state()
    a, b, c = BlueprintModule(v, seed=7), BlueprintModule(v, seed=7), BlueprintModule(v, seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 1)
    assert sum(p.numel() for p in a.parameters()) == v.params


_WEIGHTS_CHILD = """
import hashlib, sys
import torch
from esper.compiler.ir.build import BlueprintModule
from esper.compiler.ir.load import load_blueprint
from esper.compiler.ir.validate import SecurityValidator
torch.manual_seed(12345)  # the caller's RNG state must not matter
module = BlueprintModule(SecurityValidator().validate(load_blueprint(sys.argv[1])), seed=3)
digest = hashlib.sha256()
for key, value in sorted(module.state_dict().items()):
    digest.update(key.encode() + value.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def test_weights_are_bit_identical_in_another_process() -> None:
    module = BlueprintModule(_validated("conv.yaml"), seed=3)
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode() + value.contiguous().numpy().tobytes())
    done = subprocess.run(
        [sys.executable, "-c", _WEIGHTS_CHILD, str(EXAMPLES_DIR / "conv.yaml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == digest.hexdigest()


def test_a_nodes_weights_do_not_depend_on_other_nodes() -> None:
    small = SecurityValidator().validate(blueprint(node("fc", "linear", "input", out_features=64)))
    big = SecurityValidator().validate(
        blueprint(node("pre", "tanh", "input"), node("fc", "linear", "pre", out_features=64))
    )
    assert torch.equal(BlueprintModule(small).nodes["fc"].weight, BlueprintModule(big).nodes["fc"].weight)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_compile_whole_and_train_in_the_demo_host(name: str) -> None:
    module = BlueprintModule(_validated(name), seed=0)
    compiled = torch.compile(module, fullgraph=True, backend="eager", dynamic=True)
    host = nn.Sequential(nn.Linear(32, 64), nn.GELU(), compiled, nn.Linear(64, 1))
    for batch in (4, 7):  # a dynamic batch
        x = torch.randn(batch, 32)
        host(x).sum().backward()
    module.eval()
    x = torch.randn(5, 64)
    torch.testing.assert_close(compiled(x), module(x))


def test_dtype_follows_the_blueprint() -> None:
    ir = pb.BlueprintIR()
    ir.CopyFrom(EXAMPLES["attention.yaml"])
    ir.input.dtype = pb.DTYPE_BFLOAT16
    module = BlueprintModule(SecurityValidator().validate(ir))
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert module(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


# Candidate nodes for the property test, by the rank of the current tensor; the validator keeps those that fit.
SIZES = st.sampled_from([1, 2, 3, 4, 6, 8])


@st.composite
def _candidate(draw: st.DrawFn, rank: int, prev: str, earlier: list[str]) -> dict[str, object]:
    i = len(earlier)
    n = f"n{i}"
    common = [
        node(n, draw(st.sampled_from(["relu", "gelu", "silu", "tanh", "sigmoid"])), prev),
        node(n, "dropout", prev, p=0.25),
        node(n, "softmax", prev, dim=-1),
        node(n, "batch_norm", prev),
        node(n, "group_norm", prev, num_groups=draw(SIZES)),
        node(n, draw(st.sampled_from(["add", "mul"])), prev, draw(st.sampled_from(earlier))),
        node(n, "concat", prev, draw(st.sampled_from(earlier)), dim=draw(st.sampled_from([1, -1]))),
        node(n, "reshape", prev, shape=draw(st.sampled_from([[-1], [2, -1], [4, -1], [2, 2, -1]]))),
        node(n, "flatten", prev),
        node(n, "layer_norm", prev),
        node(n, "rms_norm", prev),
        node(n, "linear", prev, out_features=draw(SIZES), bias=draw(st.booleans())),
    ]
    if rank == 3:
        common += [
            node(
                n,
                "conv1d",
                prev,
                out_channels=draw(SIZES),
                kernel_size=draw(st.sampled_from([1, 2, 3])),
                stride=draw(st.sampled_from([1, 2])),
                padding=draw(st.sampled_from([0, 1])),
                dilation=draw(st.sampled_from([1, 2])),
                groups=draw(st.sampled_from([1, 2])),
            ),
            node(
                n, draw(st.sampled_from(["max_pool1d", "avg_pool1d"])), prev, kernel_size=draw(st.sampled_from([1, 2]))
            ),
            node(n, "self_attention", prev, num_heads=draw(st.sampled_from([1, 2])), causal=draw(st.booleans())),
            node(n, "permute", prev, dims=[0, 2, 1]),
        ]
    if rank == 4:
        k = draw(st.sampled_from([[1, 1], [2, 1], [3, 3]]))
        common += [
            node(
                n,
                "conv2d",
                prev,
                out_channels=draw(SIZES),
                kernel_size=k,
                padding=[k[0] // 2, k[1] // 2],
                groups=draw(st.sampled_from([1, 2])),
            ),
            node(n, draw(st.sampled_from(["max_pool2d", "avg_pool2d"])), prev, kernel_size=[2, 2], stride=[1, 2]),
            node(n, "permute", prev, dims=[0, 1, 3, 2]),
        ]
    return draw(st.sampled_from(common))


@st.composite
def valid_blueprints(draw: st.DrawFn) -> ValidatedBlueprint:
    validator = SecurityValidator()
    nodes: list[dict[str, object]] = [
        node("n0", "reshape", "input", shape=draw(st.sampled_from([[16], [4, 4], [2, 2, 4]])))
    ]
    current = validator.validate(blueprint(*nodes, shape=[-1, 16]), seed_slot=False)
    for _ in range(draw(st.integers(1, 8))):
        rank = len(current.output_shape)
        candidate = draw(_candidate(rank, str(nodes[-1]["id"]), ["input", *[str(x["id"]) for x in nodes]]))
        try:
            current = validator.validate(blueprint(*nodes, candidate, shape=[-1, 16]), seed_slot=False)
        except BlueprintValidationError:
            continue
        nodes.append(candidate)
    return current


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_blueprints(), st.integers(2, 5))
def test_built_shapes_equal_inferred_shapes(v: ValidatedBlueprint, batch: int) -> None:
    module = BlueprintModule(v, seed=1)
    seen: dict[str, tuple[int, ...]] = {}
    for node_id, sub in module.nodes.items():
        sub.register_forward_hook(lambda _m, _i, out, node_id=node_id: seen.__setitem__(node_id, tuple(out.shape)))
    out = module(torch.randn(batch, 16))
    expected = {n.id: tuple(batch if d == -1 else d for d in n.shape) for n in v.nodes}
    assert seen == expected
    assert tuple(out.shape) == expected[v.output]
    assert sum(p.numel() for p in module.parameters()) == v.params
