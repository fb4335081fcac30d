"""The security validator: a BlueprintIR is accepted, with every node's shape, dtype and cost, or rejected with
every problem by node id.

Work is bounded before it starts: the node count and the serialized size are checked first (a 100k-node or
megabyte blueprint is refused before any node is looked at), then each node costs time in proportion to its own
bounded size. The graph checks are iterative (no recursion on hostile depth), and sizes are Python ints compared
with the limits as they grow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esper.compiler.exceptions import BlueprintProblem, BlueprintValidationError
from esper.compiler.ir.infer import INFER, InferError, Shape, per_sample
from esper.compiler.ir.limits import ValidationLimits
from esper.compiler.ir.schema import OPS, AttrKind, AttrSpec, AttrValue, attribute_value
from esper.proto import leyline_pb2 as pb

__all__ = ["DTYPE_BYTES", "INPUT", "NodeInfo", "SecurityValidator", "ValidatedBlueprint"]

INPUT = "input"  # the name nodes use for the blueprint's input
DTYPE_BYTES: dict[int, int] = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT16: 2, pb.DTYPE_BFLOAT16: 2}
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # also a valid nn.Module attribute name
_BLUEPRINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_SHOWN = 40  # characters of a hostile value echoed in a problem


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


@dataclass(frozen=True)
class NodeInfo:
    """A validated node: its attributes with defaults filled in, output shape and dtype, and its costs."""

    id: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, AttrValue]
    shape: Shape
    dtype: int
    params: int
    flops: int  # per sample
    activation_bytes: int  # its output, per sample


@dataclass(frozen=True)
class ValidatedBlueprint:
    """A blueprint the validator accepted, and what it inferred; the builder and the canonical form take this."""

    ir: pb.BlueprintIR
    input_shape: Shape
    dtype: int
    nodes: tuple[NodeInfo, ...]
    output: str
    params: int
    flops: int
    activation_bytes: int  # the input and every node's output, per sample

    @property
    def output_shape(self) -> Shape:
        return next(n.shape for n in self.nodes if n.id == self.output)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": {"shape": list(self.input_shape), "dtype": pb.DType.Name(self.dtype)},
            "output": {"node": self.output, "shape": list(self.output_shape)},
            "parameters": self.params,
            "flops_per_sample": self.flops,
            "activation_bytes_per_sample": self.activation_bytes,
            "nodes": [
                {
                    "id": n.id,
                    "op": n.op,
                    "inputs": list(n.inputs),
                    "shape": list(n.shape),
                    "dtype": pb.DType.Name(n.dtype),
                    "parameters": n.params,
                    "flops_per_sample": n.flops,
                    "activation_bytes_per_sample": n.activation_bytes,
                }
                for n in self.nodes
            ],
        }


class _Problems:
    """Collects problems up to the limit and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.items: list[BlueprintProblem] = []
        self.more = 0
        self._limit = limit

    def add(self, node: str, problem: str) -> None:
        if len(self.items) < self._limit:
            self.items.append(BlueprintProblem(node if len(node) <= _SHOWN else node[:_SHOWN] + "...", problem))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> BlueprintValidationError:
        return BlueprintValidationError(self.items, self.more)


class SecurityValidator:
    """Checks a BlueprintIR against the op whitelist, the attribute schemas, the graph rules and the limits."""

    def __init__(self, limits: ValidationLimits | None = None) -> None:
        self.limits = limits or ValidationLimits()

    def validate(self, ir: pb.BlueprintIR, *, seed_slot: bool = True) -> ValidatedBlueprint:
        """The accepted blueprint with what was inferred, or BlueprintValidationError listing every problem.

        seed_slot: the blueprint fills a seed slot, so its output must have its input's shape and dtype.
        """
        lim = self.limits
        problems = _Problems(lim.max_problems)
        size = ir.ByteSize()
        if size > lim.max_blueprint_bytes:
            problems.add("blueprint", f"{size} bytes serialized, over the limit of {lim.max_blueprint_bytes}")
        if len(ir.nodes) > lim.max_nodes:
            problems.add("blueprint", f"{len(ir.nodes)} nodes, over the limit of {lim.max_nodes}")
        if problems:  # refuse before doing work in proportion to the input
            raise problems.error()
        self._check_header(ir, problems)
        input_shape = self._check_input(ir.input, problems)
        nodes = self._check_nodes(ir, input_shape, problems)
        self._check_graph(ir, problems)
        if not problems and input_shape is not None:
            return self._accept(ir, input_shape, nodes, problems, seed_slot)
        raise problems.error()

    def _check_string(self, where: str, what: str, value: str, problems: _Problems) -> bool:
        n = len(value.encode("utf-8", "surrogatepass"))
        if n > self.limits.max_string_bytes:
            problems.add(where, f"{what} is {n} bytes, over the limit of {self.limits.max_string_bytes}")
            return False
        return True

    def _check_text(self, where: str, what: str, value: str, problems: _Problems) -> None:
        """Free text (name, author, metadata values) describes; it never names a file or carries code or bytes."""
        if not self._check_string(where, what, value, problems):
            return
        if not value.isprintable():
            problems.add(where, f"{what} holds control or non-printable characters: {_show(value)}")
        elif "/" in value or "\\" in value:
            problems.add(where, f"{what} looks like a path (holds / or \\): {_show(value)}")

    def _check_header(self, ir: pb.BlueprintIR, problems: _Problems) -> None:
        lim = self.limits
        if ir.ir_version not in lim.ir_versions:
            problems.add("blueprint", f"ir_version {ir.ir_version} is not one of {sorted(lim.ir_versions)}")
        if ir.blueprint_id and (
            self._check_string("blueprint", "blueprint_id", ir.blueprint_id, problems)
            and not _BLUEPRINT_ID.fullmatch(ir.blueprint_id)
        ):
            problems.add("blueprint", f"blueprint_id {_show(ir.blueprint_id)} is not [A-Za-z0-9][A-Za-z0-9_.:-]*")
        self._check_text("blueprint", "name", ir.name, problems)
        self._check_text("blueprint", "author", ir.author, problems)
        if len(ir.metadata) > lim.max_metadata:
            problems.add("metadata", f"{len(ir.metadata)} entries, over the limit of {lim.max_metadata}")
            return
        seen: set[str] = set()
        for kv in ir.metadata:
            if not self._check_string("metadata", "a key", kv.key, problems):
                continue
            if not _ID.fullmatch(kv.key):
                problems.add("metadata", f"key {_show(kv.key)} is not an identifier")
            elif kv.key in seen:
                problems.add("metadata", f"key {kv.key!r} appears twice")
            seen.add(kv.key)
            self._check_text("metadata", f"the value of {_show(kv.key)}", kv.value, problems)

    def _check_input(self, spec: pb.TensorSpec, problems: _Problems) -> Shape | None:
        lim, shape = self.limits, tuple(spec.shape)
        ok = True
        if spec.dtype not in lim.dtypes:
            name = pb.DType.Name(spec.dtype) if spec.dtype in pb.DType.values() else str(spec.dtype)
            allowed = ", ".join(sorted(pb.DType.Name(d) for d in lim.dtypes))
            problems.add(INPUT, f"dtype {name} is not one of {allowed}")
            ok = False
        if not 2 <= len(shape) <= lim.max_rank:
            problems.add(INPUT, f"rank {len(shape)} must be 2..{lim.max_rank}: (batch, features...)")
            return None
        if not (shape[0] == -1 or 1 <= shape[0] <= lim.max_dim):
            problems.add(INPUT, f"batch dimension {shape[0]} must be -1 (dynamic) or 1..{lim.max_dim}")
            ok = False
        for i, d in enumerate(shape[1:], 1):
            if not 1 <= d <= lim.max_dim:
                problems.add(INPUT, f"dimension {i} is {d}: must be 1..{lim.max_dim} (only the batch is dynamic)")
                ok = False
        return shape if ok else None

    def _resolve_attrs(
        self, node: pb.OpNode, specs: Mapping[str, AttrSpec], problems: _Problems
    ) -> dict[str, AttrValue] | None:
        """The node's attributes checked against the schema, with defaults filled in; None if any is wrong."""
        values: dict[str, AttrValue] = {}
        ok = True
        for attr in node.attributes:
            if not self._check_string(node.id, "an attribute key", attr.key, problems):
                ok = False
                continue
            spec = specs.get(attr.key)
            if spec is None:
                known = ", ".join(sorted(specs)) or "none"
                problems.add(node.id, f"{node.op} has no attribute {_show(attr.key)} (it takes: {known})")
                ok = False
            elif attr.key in values:
                problems.add(node.id, f"attribute {attr.key!r} appears twice")
                ok = False
            else:
                value = self._attr_value(node.id, attr, spec, problems)
                if value is None:
                    ok = False
                else:
                    values[attr.key] = value
        for key, spec in specs.items():
            if key not in values:
                if spec.default is not None:
                    values[key] = spec.default
                elif not any(a.key == key for a in node.attributes):
                    problems.add(node.id, f"{node.op} needs attribute {key!r}")
                    ok = False
        return values if ok else None

    def _attr_value(self, where: str, attr: pb.Attribute, spec: AttrSpec, problems: _Problems) -> AttrValue | None:
        case, value = attr.WhichOneof("value"), attribute_value(attr)
        key = attr.key
        if case != spec.kind.value or value is None:
            problems.add(where, f"attribute {key!r} must be {spec.kind.name}, got {case or 'no value'}")
            return None
        if spec.kind is AttrKind.STRING:
            if not isinstance(value, str) or value not in spec.choices:
                problems.add(where, f"attribute {key!r} is {_show(value)}, not one of {list(spec.choices)}")
                return None
        elif spec.kind in (AttrKind.INTS, AttrKind.FLOATS):
            assert isinstance(value, tuple)  # the oneof case says so
            lo, hi = spec.length
            if not lo <= len(value) <= hi:
                problems.add(where, f"attribute {key!r} has {len(value)} elements, must have {lo}..{hi}")
                return None
            bad = [v for v in value if not spec.in_range(v)]
            if bad:
                problems.add(where, f"attribute {key!r} holds {_show(bad[0])}, outside {spec.describe_range()}")
                return None
        elif spec.kind in (AttrKind.INT, AttrKind.FLOAT):
            assert isinstance(value, int | float)
            if not spec.in_range(value):
                problems.add(where, f"attribute {key!r} is {_show(value)}, outside {spec.describe_range()}")
                return None
        return value

    def _check_nodes(self, ir: pb.BlueprintIR, input_shape: Shape | None, problems: _Problems) -> list[NodeInfo]:
        lim = self.limits
        shapes: dict[str, Shape | None] = {INPUT: input_shape}
        defined: set[str] = set()
        all_ids = {n.id for n in ir.nodes}
        infos: list[NodeInfo] = []
        for index, node in enumerate(ir.nodes):
            where = node.id if node.id and len(node.id) <= lim.max_string_bytes else f"nodes[{index}]"
            shape: Shape | None = None
            if not node.id:
                problems.add(where, "a node needs an id")
            elif where != node.id:
                self._check_string(where, "id", node.id, problems)
            elif not _ID.fullmatch(node.id):
                problems.add(where, "a node id must match [A-Za-z][A-Za-z0-9_]* (64 characters at most)")
            elif node.id == INPUT:
                problems.add(where, f"{INPUT!r} names the blueprint's input; no node may take it")
            elif node.id in defined:
                problems.add(where, "a node id appears twice")
            in_shapes = self._check_inputs(where, node, shapes, defined, all_ids, problems)
            spec = OPS.get(node.op)
            if spec is None:
                if self._check_string(where, "op", node.op, problems):
                    problems.add(where, f"op {_show(node.op)} is not on the whitelist")
            elif len(node.attributes) > lim.max_attributes:
                problems.add(where, f"{len(node.attributes)} attributes, over the limit of {lim.max_attributes}")
            else:
                if not spec.min_inputs <= len(node.inputs) <= spec.max_inputs:
                    want = f"{spec.min_inputs}" + ("" if spec.min_inputs == spec.max_inputs else f"..{spec.max_inputs}")
                    problems.add(where, f"{node.op} takes {want} inputs, got {len(node.inputs)}")
                    in_shapes = None
                attrs = self._resolve_attrs(node, spec.attrs, problems)
                if attrs is not None and in_shapes is not None:
                    shape = self._infer(where, node, in_shapes, attrs, ir.input.dtype, infos, problems)
            defined.add(node.id)
            shapes.setdefault(node.id, shape)
        return infos

    def _check_inputs(
        self,
        where: str,
        node: pb.OpNode,
        shapes: Mapping[str, Shape | None],
        defined: set[str],
        all_ids: set[str],
        problems: _Problems,
    ) -> list[Shape] | None:
        """The shapes of the node's inputs, None when one is unknown or wrong (each wrong one is a problem)."""
        if len(node.inputs) > self.limits.max_inputs:
            problems.add(where, f"{len(node.inputs)} inputs, over the limit of {self.limits.max_inputs}")
            return None
        out: list[Shape] = []
        ok = True
        for name in node.inputs:
            if name == node.id:
                problems.add(where, "takes itself as input (a cycle)")
                ok = False
            elif name != INPUT and name not in defined:
                problems.add(
                    where,
                    f"input {_show(name)} names a later node (nodes come in order, so a cycle never passes)"
                    if name in all_ids
                    else f"input {_show(name)} names no node (dangling)",
                )
                ok = False
            else:
                shape = shapes.get(name)
                if shape is None:  # its own problem is reported already
                    ok = False
                else:
                    out.append(shape)
        return out if ok else None

    def _infer(
        self,
        where: str,
        node: pb.OpNode,
        in_shapes: list[Shape],
        attrs: dict[str, AttrValue],
        ir_dtype: int,
        infos: list[NodeInfo],
        problems: _Problems,
    ) -> Shape | None:
        lim = self.limits
        try:
            out = INFER[node.op](in_shapes, attrs)
        except InferError as e:
            problems.add(where, f"{node.op}: {e}")
            return None
        if len(out.shape) > lim.max_rank or any(d > lim.max_dim for d in out.shape[1:]):
            problems.add(where, f"output shape {list(out.shape)} is over rank {lim.max_rank} or dim {lim.max_dim}")
            return None
        dtype = ir_dtype  # every whitelisted op keeps its inputs' dtype, and all descend from the one input
        infos.append(
            NodeInfo(
                id=node.id,
                op=node.op,
                inputs=tuple(node.inputs),
                attrs=attrs,
                shape=out.shape,
                dtype=dtype,
                params=out.params,
                flops=out.flops,
                activation_bytes=per_sample(out.shape) * DTYPE_BYTES.get(dtype, 4),
            )
        )
        return out.shape

    def _check_graph(self, ir: pb.BlueprintIR, problems: _Problems) -> None:
        """One output; every node contributes to it (walked back iteratively from the output)."""
        ids = {n.id: n for n in ir.nodes}
        if ir.output == INPUT or ir.output not in ids:
            problems.add("output", f"output {_show(ir.output)} must name a node")
            return
        reached, stack = {ir.output}, [ir.output]
        while stack:
            for name in ids[stack.pop()].inputs:
                if name in ids and name not in reached:
                    reached.add(name)
                    stack.append(name)
        for n in ir.nodes:
            if n.id not in reached:
                problems.add(n.id or "nodes", "does not contribute to the output")

    def _accept(
        self,
        ir: pb.BlueprintIR,
        input_shape: Shape,
        infos: list[NodeInfo],
        problems: _Problems,
        seed_slot: bool,
    ) -> ValidatedBlueprint:
        lim = self.limits
        params, flops = sum(n.params for n in infos), sum(n.flops for n in infos)
        activation = per_sample(input_shape) * DTYPE_BYTES[ir.input.dtype] + sum(n.activation_bytes for n in infos)
        for what, value, limit in (
            ("parameters", params, lim.max_parameters),
            ("FLOPs per sample", flops, lim.max_flops_per_sample),
            ("activation bytes per sample", activation, lim.max_activation_bytes),
        ):
            if value > limit:
                problems.add("blueprint", f"{value} {what}, over the limit of {limit}")
        out = next(n for n in infos if n.id == ir.output)
        if seed_slot and out.shape != input_shape:
            problems.add(
                "output", f"shape {list(out.shape)} differs from the input's {list(input_shape)} (a seed slot)"
            )
        if problems:
            raise problems.error()
        return ValidatedBlueprint(ir, input_shape, ir.input.dtype, tuple(infos), ir.output, params, flops, activation)
