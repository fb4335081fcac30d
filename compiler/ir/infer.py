"""Static shape inference for every whitelisted op, with each node's parameter count and FLOPs per sample.

Shapes include the batch dimension (dimension 0, -1 when dynamic); ops never touch it, so per-sample figures are
taken over dimensions 1 and up. Sizes are Python ints (no overflow); the validator compares them with its limits.
FLOPs count a multiply-add as two, an elementwise op as one per element: an estimate for budgets, not a profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from esper.compiler.ir.schema import AttrValue

__all__ = ["INFER", "InferError", "Inferred", "Shape", "per_sample"]

Shape = tuple[int, ...]
Attrs = Mapping[str, AttrValue]


class InferError(Exception):
    """The op cannot take these input shapes with these attributes; the message says why."""


@dataclass(frozen=True)
class Inferred:
    shape: Shape
    params: int = 0
    flops: int = 0


InferFn = Callable[[Sequence[Shape], Attrs], Inferred]


def per_sample(shape: Shape) -> int:
    return math.prod(shape[1:])


def _int(attrs: Attrs, key: str) -> int:
    v = attrs[key]
    if not isinstance(v, int):
        raise InferError(f"{key} must be an int")
    return v


def _ints(attrs: Attrs, key: str) -> tuple[int, ...]:
    v = attrs[key]
    if not isinstance(v, tuple):
        raise InferError(f"{key} must be a list of ints")
    return tuple(int(x) for x in v)


def _flag(attrs: Attrs, key: str) -> bool:
    return bool(attrs[key])


def _rank(s: Shape, *ranks: int) -> None:
    if len(s) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise InferError(f"needs an input of rank {want}, got {list(s)}")


def _dim(s: Shape, dim: int, what: str = "dim") -> int:
    """dim as a non-negative index that is not the batch."""
    d = dim + len(s) if dim < 0 else dim
    if not 1 <= d < len(s):
        raise InferError(f"{what} {dim} is not a non-batch dimension of {list(s)}")
    return d


def _window(size: int, kernel: int, stride: int, padding: int, dilation: int, what: str) -> int:
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise InferError(f"{what}: kernel {kernel} (dilation {dilation}) does not fit size {size} + 2*{padding}")
    return out


def _linear(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    _rank(s, *range(2, 9))
    fin, fout = s[-1], _int(a, "out_features")
    weights = fin * fout
    return Inferred((*s[:-1], fout), weights + (fout if _flag(a, "bias") else 0), 2 * weights * per_sample(s[:-1]))


def _conv(spatial: int) -> InferFn:
    def infer(ins: Sequence[Shape], a: Attrs) -> Inferred:
        (s,) = ins
        _rank(s, 2 + spatial)
        cin, cout, groups = s[1], _int(a, "out_channels"), _int(a, "groups")
        if cin % groups or cout % groups:
            raise InferError(f"groups {groups} must divide in_channels {cin} and out_channels {cout}")
        per = [
            tuple(_ints(a, k)) if spatial == 2 else (_int(a, k),)
            for k in ("kernel_size", "stride", "padding", "dilation")
        ]
        kernel, stride, padding, dilation = per
        out_sizes = tuple(
            _window(s[2 + i], kernel[i], stride[i], padding[i], dilation[i], "conv") for i in range(spatial)
        )
        taps = (cin // groups) * math.prod(kernel)
        params = cout * taps + (cout if _flag(a, "bias") else 0)
        return Inferred((s[0], cout, *out_sizes), params, 2 * cout * taps * math.prod(out_sizes))

    return infer


def _pool(spatial: int) -> InferFn:
    def infer(ins: Sequence[Shape], a: Attrs) -> Inferred:
        (s,) = ins
        _rank(s, 2 + spatial)
        kernel = _ints(a, "kernel_size") if spatial == 2 else (_int(a, "kernel_size"),)
        stride = _ints(a, "stride") if spatial == 2 else (_int(a, "stride"),)
        padding = _ints(a, "padding") if spatial == 2 else (_int(a, "padding"),)
        stride = tuple(st or k for st, k in zip(stride, kernel, strict=True))
        if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
            raise InferError(f"padding {list(padding)} must be at most half of kernel_size {list(kernel)}")
        out = tuple(_window(s[2 + i], kernel[i], stride[i], padding[i], 1, "pool") for i in range(spatial))
        shape = (s[0], s[1], *out)
        return Inferred(shape, 0, per_sample(shape) * math.prod(kernel))

    return infer


def _norm_last(weights_per_dim: int) -> InferFn:
    def infer(ins: Sequence[Shape], a: Attrs) -> Inferred:
        (s,) = ins
        _rank(s, *range(2, 9))
        params = weights_per_dim * s[-1] if _flag(a, "elementwise_affine") else 0
        return Inferred(s, params, 5 * per_sample(s))

    return infer


def _batch_norm(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    _rank(s, 2, 3, 4)
    return Inferred(s, 2 * s[1] if _flag(a, "affine") else 0, 4 * per_sample(s))


def _group_norm(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    _rank(s, *range(2, 9))
    groups = _int(a, "num_groups")
    if s[1] % groups:
        raise InferError(f"num_groups {groups} must divide the {s[1]} channels")
    return Inferred(s, 2 * s[1] if _flag(a, "affine") else 0, 5 * per_sample(s))


def _elementwise(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    return Inferred(s, 0, per_sample(s))


def _softmax(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    _dim(s, _int(a, "dim"))
    return Inferred(s, 0, 3 * per_sample(s))


def _binary(ins: Sequence[Shape], a: Attrs) -> Inferred:
    x, y = ins
    if x != y:
        raise InferError(f"inputs must have one shape, got {list(x)} and {list(y)}")
    return Inferred(x, 0, per_sample(x))


def _concat(ins: Sequence[Shape], a: Attrs) -> Inferred:
    first = ins[0]
    d = _dim(first, _int(a, "dim"))
    for s in ins[1:]:
        if len(s) != len(first) or any(s[i] != first[i] for i in range(len(s)) if i != d):
            raise InferError(f"inputs must match outside dim {d}, got {list(first)} and {list(s)}")
    return Inferred((*first[:d], sum(s[d] for s in ins), *first[d + 1 :]))


def _reshape(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    target = _ints(a, "shape")
    if 0 in target or target.count(-1) > 1:
        raise InferError(f"shape {list(target)} may hold positive sizes and at most one -1")
    n, known = per_sample(s), math.prod(d for d in target if d != -1)
    if -1 in target:
        if n % known:
            raise InferError(f"cannot reshape {n} elements per sample to {list(target)}")
        target = tuple(n // known if d == -1 else d for d in target)
    elif known != n:
        raise InferError(f"cannot reshape {n} elements per sample to {list(target)}")
    return Inferred((s[0], *target))


def _flatten(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    start, end = _dim(s, _int(a, "start_dim"), "start_dim"), _dim(s, _int(a, "end_dim"), "end_dim")
    if end < start:
        raise InferError(f"end_dim {end} is before start_dim {start}")
    return Inferred((*s[:start], math.prod(s[start : end + 1]), *s[end + 1 :]))


def _permute(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    dims = _ints(a, "dims")
    if sorted(dims) != list(range(len(s))) or dims[0] != 0:
        raise InferError(f"dims {list(dims)} must be a permutation of 0..{len(s) - 1} starting with 0")
    return Inferred(tuple(s[d] for d in dims))


def _self_attention(ins: Sequence[Shape], a: Attrs) -> Inferred:
    (s,) = ins
    _rank(s, 3)
    tokens, embed, heads = s[1], s[2], _int(a, "num_heads")
    if embed % heads:
        raise InferError(f"num_heads {heads} must divide the embedding size {embed}")
    params = 4 * embed * embed + (4 * embed if _flag(a, "bias") else 0)
    projections = 2 * tokens * embed * 4 * embed  # q, k, v and out
    scores = 2 * 2 * tokens * tokens * embed  # q @ k^T and weights @ v
    return Inferred(s, params, projections + scores + 3 * heads * tokens * tokens)


INFER: Mapping[str, InferFn] = {
    "linear": _linear,
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "layer_norm": _norm_last(2),
    "rms_norm": _norm_last(1),
    "batch_norm": _batch_norm,
    "group_norm": _group_norm,
    "relu": _elementwise,
    "gelu": _elementwise,
    "silu": _elementwise,
    "tanh": _elementwise,
    "sigmoid": _elementwise,
    "softmax": _softmax,
    "dropout": _elementwise,
    "add": _binary,
    "mul": _binary,
    "concat": _concat,
    "reshape": _reshape,
    "flatten": _flatten,
    "permute": _permute,
    "max_pool1d": _pool(1),
    "avg_pool1d": _pool(1),
    "max_pool2d": _pool(2),
    "avg_pool2d": _pool(2),
    "self_attention": _self_attention,
}
