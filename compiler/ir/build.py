"""A validated blueprint to an nn.Module, with weights initialised deterministically from a seed.

Each node becomes one submodule, named by its node id (so state_dict keys read `nodes.<id>.weight`). The forward
walks a static plan fixed at build time: no Python branch depends on data, so torch.compile(fullgraph=True) traces
it whole. Each node's weights are drawn from a generator seeded by sha256(seed, node id), so a node's initial
weights do not change when other nodes are added or removed, and the global RNG is left alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from esper.compiler.ir.infer import Shape
from esper.compiler.ir.schema import AttrValue
from esper.compiler.ir.validate import INPUT, NodeInfo, ValidatedBlueprint
from esper.proto import leyline_pb2 as pb

__all__ = ["BUILDERS", "TORCH_DTYPES", "BlueprintModule", "SelfAttention", "node_seed"]

TORCH_DTYPES: Mapping[int, torch.dtype] = {
    pb.DTYPE_FLOAT32: torch.float32,
    pb.DTYPE_FLOAT16: torch.float16,
    pb.DTYPE_BFLOAT16: torch.bfloat16,
}


class _Binary(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn(x, y)


class _Concat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class _Permute(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SelfAttention(nn.Module):
    """Multi-head self-attention over (N, L, E) on F.scaled_dot_product_attention."""

    def __init__(self, embed: int, num_heads: int, bias: bool, causal: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.causal, self.dropout = num_heads, causal, dropout
        self.qkv = nn.Linear(embed, 3 * embed, bias=bias)
        self.out = nn.Linear(embed, embed, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, embed = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, embed // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.out(y.transpose(1, 2).reshape(n, length, embed))


Attrs = Mapping[str, AttrValue]
Builder = Callable[[Shape, Attrs], nn.Module]


def _i(a: Attrs, key: str) -> int:
    v = a[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{key} is not an int")
    return v


def _f(a: Attrs, key: str) -> float:
    v = a[key]
    if not isinstance(v, int | float):
        raise TypeError(f"{key} is not a number")
    return float(v)


def _t(a: Attrs, key: str) -> tuple[int, ...]:
    v = a[key]
    if not isinstance(v, tuple):
        raise TypeError(f"{key} is not a list")
    return tuple(int(x) for x in v)


def _conv(cls: type[nn.Conv1d] | type[nn.Conv2d], pair: bool) -> Builder:
    get = _t if pair else _i

    def build(s: Shape, a: Attrs) -> nn.Module:
        return cls(
            s[1],
            _i(a, "out_channels"),
            get(a, "kernel_size"),  # type: ignore[arg-type]  # an int or a pair, as the class takes
            stride=get(a, "stride"),  # type: ignore[arg-type]
            padding=get(a, "padding"),  # type: ignore[arg-type]
            dilation=get(a, "dilation"),  # type: ignore[arg-type]
            groups=_i(a, "groups"),
            bias=bool(a["bias"]),
        )

    return build


def _pool(cls: Callable[..., nn.Module], pair: bool) -> Builder:
    def build(s: Shape, a: Attrs) -> nn.Module:
        if pair:  # stride 0: the kernel size
            kernel, padding = _t(a, "kernel_size"), _t(a, "padding")
            stride = tuple(st or k for st, k in zip(_t(a, "stride"), kernel, strict=True))
            return cls(kernel, stride=stride, padding=padding)
        return cls(_i(a, "kernel_size"), stride=_i(a, "stride") or _i(a, "kernel_size"), padding=_i(a, "padding"))

    return build


def _batch_norm(s: Shape, a: Attrs) -> nn.Module:
    cls = nn.BatchNorm2d if len(s) == 4 else nn.BatchNorm1d
    return cls(s[1], eps=_f(a, "eps"), momentum=_f(a, "momentum"), affine=bool(a["affine"]))


BUILDERS: Mapping[str, Builder] = {
    "linear": lambda s, a: nn.Linear(s[-1], _i(a, "out_features"), bias=bool(a["bias"])),
    "conv1d": _conv(nn.Conv1d, pair=False),
    "conv2d": _conv(nn.Conv2d, pair=True),
    "layer_norm": lambda s, a: nn.LayerNorm(s[-1], eps=_f(a, "eps"), elementwise_affine=bool(a["elementwise_affine"])),
    "rms_norm": lambda s, a: nn.RMSNorm(s[-1], eps=_f(a, "eps"), elementwise_affine=bool(a["elementwise_affine"])),
    "batch_norm": _batch_norm,
    "group_norm": lambda s, a: nn.GroupNorm(_i(a, "num_groups"), s[1], eps=_f(a, "eps"), affine=bool(a["affine"])),
    "relu": lambda s, a: nn.ReLU(),
    "gelu": lambda s, a: nn.GELU(approximate=str(a["approximate"])),
    "silu": lambda s, a: nn.SiLU(),
    "tanh": lambda s, a: nn.Tanh(),
    "sigmoid": lambda s, a: nn.Sigmoid(),
    "softmax": lambda s, a: nn.Softmax(dim=_i(a, "dim")),
    "dropout": lambda s, a: nn.Dropout(_f(a, "p")),
    "add": lambda s, a: _Binary(torch.add),
    "mul": lambda s, a: _Binary(torch.mul),
    "concat": lambda s, a: _Concat(_i(a, "dim")),
    "reshape": lambda s, a: _Reshape(_t(a, "shape")),
    "flatten": lambda s, a: nn.Flatten(_i(a, "start_dim"), _i(a, "end_dim")),
    "permute": lambda s, a: _Permute(_t(a, "dims")),
    "max_pool1d": _pool(nn.MaxPool1d, pair=False),
    "avg_pool1d": _pool(nn.AvgPool1d, pair=False),
    "max_pool2d": _pool(nn.MaxPool2d, pair=True),
    "avg_pool2d": _pool(nn.AvgPool2d, pair=True),
    "self_attention": lambda s, a: SelfAttention(
        s[2], _i(a, "num_heads"), bool(a["bias"]), bool(a["causal"]), _f(a, "dropout")
    ),
}


def node_seed(seed: int, node_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BlueprintModule(nn.Module):
    """The module a blueprint describes, on the CPU in the blueprint's dtype: one submodule per node, run in the
    blueprint's order. The same blueprint and seed give bit-identical weights."""

    def __init__(self, blueprint: ValidatedBlueprint, seed: int = 0) -> None:
        super().__init__()
        shapes: dict[str, Shape] = {INPUT: blueprint.input_shape}
        slots: dict[str, int] = {INPUT: 0}
        self.nodes = nn.ModuleDict()
        plan: list[tuple[str, tuple[int, ...]]] = []
        dtype = TORCH_DTYPES[blueprint.dtype]
        for i, node in enumerate(blueprint.nodes, 1):
            self.nodes[node.id] = _build_node(node, shapes[node.inputs[0]], seed).to(dtype)
            plan.append((node.id, tuple(slots[name] for name in node.inputs)))
            shapes[node.id], slots[node.id] = node.shape, i
        self._plan = tuple(plan)
        self._output = slots[blueprint.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for node_id, args in self._plan:
            values.append(self.nodes[node_id](*[values[i] for i in args]))
        return values[self._output]


def _build_node(node: NodeInfo, first_input: Shape, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(node_seed(seed, node.id))  # the CPU's alone: modules are built there
        return BUILDERS[node.op](first_input, node.attrs)
