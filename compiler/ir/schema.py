"""The op whitelist: every op a blueprint may use, its number of inputs and its typed attribute schema.

Attribute values are plain data (numbers, booleans, short enumerated strings, lists of numbers): no attribute holds
free text, so nothing in a node can carry code, a path or a pickle. Shapes follow PyTorch: dimension 0 is the batch
(-1 when dynamic), convolutions and pooling are channel-first, attention takes (batch, tokens, embedding).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from esper.proto import leyline_pb2 as pb

__all__ = ["OPS", "AttrKind", "AttrSpec", "AttrValue", "OpSpec", "attribute_value", "to_attribute"]

AttrValue = int | float | bool | str | tuple[int, ...] | tuple[float, ...]

SIZE = 1 << 20  # a structural bound on widths, channels, kernels; the resource limits live in ValidationLimits


class AttrKind(enum.Enum):
    """The Attribute oneof case that carries the value."""

    INT = "i"
    FLOAT = "f"
    STRING = "s"
    BOOL = "b"
    INTS = "ints"
    FLOATS = "floats"


@dataclass(frozen=True)
class AttrSpec:
    """One attribute: its kind, required or its default, the closed range [lo, hi] of its values (of each element
    for lists), a half-open range where open_lo/open_hi say so, the choices of a string, the length of a list."""

    kind: AttrKind
    default: AttrValue | None = None  # None: required
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[str, ...] = ()
    length: tuple[int, int] = (0, 0)  # (min, max) elements of INTS / FLOATS

    def in_range(self, x: float) -> bool:
        if math.isnan(x) or math.isinf(x):
            return False
        if self.lo is not None and (x < self.lo or (self.open_lo and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.open_hi and x == self.hi)))

    def describe_range(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.open_lo else '['}{lo}, {hi}{')' if self.open_hi else ']'}"


@dataclass(frozen=True)
class OpSpec:
    name: str
    min_inputs: int
    max_inputs: int
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    doc: str = ""


def _size(default: int | None = None, lo: int = 1, pair: bool = False) -> AttrSpec:
    """A size (or, with pair, a (height, width) pair of sizes) in [lo, SIZE]."""
    if pair:
        return AttrSpec(AttrKind.INTS, None if default is None else (default, default), lo=lo, hi=SIZE, length=(2, 2))
    return AttrSpec(AttrKind.INT, default, lo=lo, hi=SIZE)


_BOOL_TRUE = AttrSpec(AttrKind.BOOL, True)
_BOOL_FALSE = AttrSpec(AttrKind.BOOL, False)
_EPS = AttrSpec(AttrKind.FLOAT, 1e-5, lo=0.0, hi=1.0, open_lo=True, open_hi=True)
_P = AttrSpec(AttrKind.FLOAT, 0.0, lo=0.0, hi=1.0, open_hi=True)
_DIM = AttrSpec(AttrKind.INT, -1, lo=-8, hi=7)  # validated against the rank during inference


def _conv(pair: bool) -> dict[str, AttrSpec]:
    return {
        "out_channels": _size(),
        "kernel_size": _size(pair=pair),
        "stride": _size(1, pair=pair),
        "padding": _size(0, lo=0, pair=pair),
        "dilation": _size(1, pair=pair),
        "groups": _size(1),
        "bias": _BOOL_TRUE,
    }


def _pool(pair: bool) -> dict[str, AttrSpec]:
    # stride 0 means "the kernel size", as PyTorch's stride=None
    return {"kernel_size": _size(pair=pair), "stride": _size(0, lo=0, pair=pair), "padding": _size(0, lo=0, pair=pair)}


def _unary(name: str, doc: str, attrs: Mapping[str, AttrSpec] | None = None) -> OpSpec:
    return OpSpec(name, 1, 1, attrs or {}, doc)


_SPECS = [
    _unary("linear", "last dimension -> out_features", {"out_features": _size(), "bias": _BOOL_TRUE}),
    _unary("conv1d", "(N, C, L); groups = C is depthwise", _conv(pair=False)),
    _unary("conv2d", "(N, C, H, W); pairs are (height, width); groups = C is depthwise", _conv(pair=True)),
    _unary("layer_norm", "over the last dimension", {"eps": _EPS, "elementwise_affine": _BOOL_TRUE}),
    _unary("rms_norm", "over the last dimension", {"eps": _EPS, "elementwise_affine": _BOOL_TRUE}),
    _unary(
        "batch_norm",
        "over dimension 1 of (N, C), (N, C, L) or (N, C, H, W)",
        {"eps": _EPS, "momentum": AttrSpec(AttrKind.FLOAT, 0.1, lo=0.0, hi=1.0), "affine": _BOOL_TRUE},
    ),
    _unary(
        "group_norm",
        "over dimension 1 in num_groups groups",
        {"num_groups": _size(), "eps": _EPS, "affine": _BOOL_TRUE},
    ),
    _unary("relu", "elementwise"),
    _unary("gelu", "elementwise", {"approximate": AttrSpec(AttrKind.STRING, "none", choices=("none", "tanh"))}),
    _unary("silu", "elementwise"),
    _unary("tanh", "elementwise"),
    _unary("sigmoid", "elementwise"),
    _unary("softmax", "along dim (never the batch)", {"dim": _DIM}),
    _unary("dropout", "elementwise, in training only", {"p": _P}),
    OpSpec("add", 2, 2, {}, "two inputs of one shape (residuals)"),
    OpSpec("mul", 2, 2, {}, "two inputs of one shape (gates)"),
    OpSpec("concat", 2, 16, {"dim": _DIM}, "along dim (never the batch)"),
    _unary(
        "reshape",
        "to (batch, *shape); one -1 is inferred",
        {"shape": AttrSpec(AttrKind.INTS, None, lo=-1, hi=SIZE, length=(1, 7))},
    ),
    _unary(
        "flatten",
        "dims start_dim..end_dim into one (never the batch)",
        {"start_dim": AttrSpec(AttrKind.INT, 1, lo=-8, hi=7), "end_dim": _DIM},
    ),
    _unary(
        "permute",
        "dims[0] must be 0 (the batch stays first)",
        {"dims": AttrSpec(AttrKind.INTS, None, lo=0, hi=7, length=(2, 8))},
    ),
    _unary("max_pool1d", "(N, C, L); stride 0 = kernel_size; padding at most kernel_size / 2", _pool(pair=False)),
    _unary("avg_pool1d", "(N, C, L); stride 0 = kernel_size; padding at most kernel_size / 2", _pool(pair=False)),
    _unary("max_pool2d", "(N, C, H, W); stride 0 = kernel_size; padding at most kernel_size / 2", _pool(pair=True)),
    _unary("avg_pool2d", "(N, C, H, W); stride 0 = kernel_size; padding at most kernel_size / 2", _pool(pair=True)),
    _unary(
        "self_attention",
        "multi-head self-attention on scaled_dot_product_attention over (N, L, E)",
        {"num_heads": _size(), "bias": _BOOL_TRUE, "causal": _BOOL_FALSE, "dropout": _P},
    ),
]

OPS: Mapping[str, OpSpec] = {s.name: s for s in _SPECS}


def attribute_value(attr: pb.Attribute) -> AttrValue | None:
    """The value an Attribute holds, as plain Python; None when its oneof is unset."""
    case = attr.WhichOneof("value")
    if case is None:
        return None
    if case == "ints":
        return tuple(attr.ints.values)
    if case == "floats":
        return tuple(attr.floats.values)
    value: AttrValue = getattr(attr, case)
    return value


def to_attribute(key: str, kind: AttrKind, value: AttrValue) -> pb.Attribute:
    """An Attribute of `kind`; -0.0 becomes 0.0 so that equal values have equal bytes."""
    attr = pb.Attribute(key=key)
    if kind is AttrKind.INTS and isinstance(value, tuple):
        attr.ints.values.extend(int(v) for v in value)
    elif kind is AttrKind.FLOATS and isinstance(value, tuple):
        attr.floats.values.extend(float(v) + 0.0 for v in value)
    elif kind is AttrKind.FLOAT and isinstance(value, int | float):
        attr.f = float(value) + 0.0
    elif kind is AttrKind.INT and isinstance(value, int) and not isinstance(value, bool):
        attr.i = value
    elif kind is AttrKind.BOOL and isinstance(value, bool):
        attr.b = value
    elif kind is AttrKind.STRING and isinstance(value, str):
        attr.s = value
    else:
        raise TypeError(f"attribute {key!r}: {type(value).__name__} is not {kind.name}")
    return attr
