"""Blueprint files (YAML or JSON) to BlueprintIR, in either of two forms.

The friendly form maps onto the proto one to one: `attrs` is a mapping whose values become Attributes (a bool `b`,
an int `i` (or `f` where the op's schema wants a float), a float `f`, a string `s`, a list of ints `ints`, a list of
numbers `floats`), `metadata` a mapping of strings, a dtype `float32` or `DTYPE_FLOAT32`. A file whose nodes use
`attributes` lists, whose metadata is a list, or that uses camelCase names is read as the proto3 JSON mapping.

Reading is bounded and inert: the file's size is checked before it is parsed, YAML is read with the safe loader
with no anchors or aliases (no billion laughs) and no duplicate keys, and nothing in a file is ever executed.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from esper.compiler.exceptions import BlueprintLoadError, BlueprintProblem
from esper.compiler.ir.limits import ValidationLimits
from esper.compiler.ir.schema import OPS, AttrKind, AttrValue, to_attribute
from esper.proto import leyline_pb2 as pb

__all__ = ["HardenedYamlLoader", "load_blueprint", "parse_blueprint"]

_TOP = {"blueprint_id", "name", "ir_version", "input", "nodes", "output", "metadata", "author", "created_at"}
_NODE = {"id", "op", "inputs", "attrs"}
_PROTO_MARKS = {"blueprintId", "irVersion", "createdAt"}
_INT64 = (-(1 << 63), (1 << 63) - 1)


class HardenedYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases are not allowed {self.peek_event().start_mark}")
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(f"anchors are not allowed {event.start_mark}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool) or key in seen:
                raise yaml.YAMLError(f"duplicate or non-scalar key {str(key)[:40]!r} {key_node.start_mark}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key in {keys[:8]}")
    return dict(pairs)


def load_blueprint(path: str | Path, limits: ValidationLimits | None = None) -> pb.BlueprintIR:
    """Read a `.json` file as JSON, anything else as YAML; BlueprintLoadError lists what is wrong."""
    limits = limits or ValidationLimits()
    limit = limits.max_file_bytes
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise BlueprintLoadError([BlueprintProblem(str(path), f"cannot read: {e.strerror or e}")]) from e
    if len(raw) > limit:
        raise BlueprintLoadError([BlueprintProblem(str(path), f"over the limit of {limit} bytes")])
    return parse_blueprint(raw, as_json=path.suffix.lower() == ".json", where=str(path), limits=limits)


def parse_blueprint(
    raw: bytes, *, as_json: bool, where: str = "blueprint", limits: ValidationLimits | None = None
) -> pb.BlueprintIR:
    """The BlueprintIR a file's bytes describe (the file size check is the caller's: see load_blueprint); a
    document of more than max_nodes nodes is refused before any node is converted."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates) if as_json else yaml.load(text, HardenedYamlLoader)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError, RecursionError) as e:
        raise BlueprintLoadError([BlueprintProblem(where, f"not valid {'JSON' if as_json else 'YAML'}: {e}")]) from e
    if not isinstance(data, dict):
        raise BlueprintLoadError([BlueprintProblem(where, "a blueprint must be a mapping at the top level")])
    max_nodes = (limits or ValidationLimits()).max_nodes
    if isinstance(data.get("nodes"), list) and len(data["nodes"]) > max_nodes:
        raise BlueprintLoadError(
            [BlueprintProblem(where, f"{len(data['nodes'])} nodes, over the limit of {max_nodes}")]
        )
    if _is_proto_json(data):
        try:
            return json_format.ParseDict(data, pb.BlueprintIR())
        except (json_format.ParseError, RecursionError, ValueError, TypeError) as e:
            raise BlueprintLoadError([BlueprintProblem(where, f"not a BlueprintIR in proto3 JSON: {e}")]) from e
    problems: list[BlueprintProblem] = []
    ir = _friendly(data, problems)
    if problems:
        raise BlueprintLoadError(problems)
    return ir


def _is_proto_json(data: Mapping[str, Any]) -> bool:
    nodes = data.get("nodes")
    node_marks = isinstance(nodes, list) and any(isinstance(n, dict) and "attributes" in n for n in nodes)
    return node_marks or isinstance(data.get("metadata"), list) or bool(_PROTO_MARKS & data.keys())


def _friendly(data: Mapping[str, Any], problems: list[BlueprintProblem]) -> pb.BlueprintIR:
    ir = pb.BlueprintIR()
    for key in sorted(set(data) - _TOP, key=str):
        problems.append(BlueprintProblem("blueprint", f"unknown field {str(key)[:40]!r}"))
    for key in ("blueprint_id", "name", "output", "author"):
        if key in data:
            if isinstance(data[key], str):
                setattr(ir, key, data[key])
            else:
                problems.append(BlueprintProblem("blueprint", f"{key} must be a string"))
    version = data.get("ir_version", 1)
    if type(version) is int and 0 <= version < 1 << 32:
        ir.ir_version = version
    else:
        problems.append(BlueprintProblem("blueprint", "ir_version must be a non-negative int"))
    if "created_at" in data:
        when = data["created_at"]
        try:
            if isinstance(when, datetime.date):  # YAML reads an unquoted date or time as one
                if not isinstance(when, datetime.datetime):
                    when = datetime.datetime(when.year, when.month, when.day)
                ir.created_at.FromDatetime(when if when.tzinfo else when.replace(tzinfo=datetime.UTC))
            else:
                ir.created_at.FromJsonString(str(when))
        except (ValueError, OverflowError) as e:
            problems.append(BlueprintProblem("blueprint", f"created_at is not an RFC 3339 time: {e}"))
    _input(data.get("input"), ir.input, problems)
    metadata = data.get("metadata", {})
    if isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        ir.metadata.extend(pb.KeyValue(key=k, value=v) for k, v in metadata.items())
    else:
        problems.append(BlueprintProblem("metadata", "metadata must map strings to strings"))
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        problems.append(BlueprintProblem("blueprint", "nodes must be a list"))
        return ir
    for index, node in enumerate(nodes):
        _node(index, node, ir.nodes.add(), problems)
    return ir


def _input(spec: Any, out: pb.TensorSpec, problems: list[BlueprintProblem]) -> None:
    if not isinstance(spec, dict) or set(spec) - {"shape", "dtype"}:
        problems.append(BlueprintProblem("input", "input must be a mapping of shape and dtype"))
        return
    shape = spec.get("shape")
    if isinstance(shape, list) and all(type(d) is int and _INT64[0] <= d <= _INT64[1] for d in shape):
        out.shape.extend(shape)
    else:
        problems.append(BlueprintProblem("input", "shape must be a list of ints"))
    dtype = str(spec.get("dtype", "float32"))
    name = dtype if dtype.startswith("DTYPE_") else "DTYPE_" + dtype.upper()
    if name in pb.DType.DESCRIPTOR.values_by_name:
        out.dtype = pb.DType.Value(name)  # type: ignore[assignment]  # an int is what the field holds
    else:
        problems.append(BlueprintProblem("input", f"unknown dtype {dtype[:40]!r}"))


def _node(index: int, data: Any, out: pb.OpNode, problems: list[BlueprintProblem]) -> None:
    where = f"nodes[{index}]"
    if not isinstance(data, dict):
        problems.append(BlueprintProblem(where, "a node must be a mapping"))
        return
    if isinstance(data.get("id"), str):
        where = out.id = data["id"]
    else:
        problems.append(BlueprintProblem(where, "id must be a string"))
    if isinstance(data.get("op"), str):
        out.op = data["op"]
    else:
        problems.append(BlueprintProblem(where, "op must be a string"))
    for key in sorted(set(data) - _NODE, key=str):
        problems.append(BlueprintProblem(where, f"unknown field {str(key)[:40]!r}"))
    inputs = data.get("inputs", [])
    if isinstance(inputs, list) and all(isinstance(i, str) for i in inputs):
        out.inputs.extend(inputs)
    else:
        problems.append(BlueprintProblem(where, "inputs must be a list of node ids"))
    attrs = data.get("attrs", {})
    if not isinstance(attrs, dict):
        problems.append(BlueprintProblem(where, "attrs must be a mapping"))
        return
    spec = OPS.get(out.op)
    for key, value in attrs.items():
        kind = _kind(value, spec.attrs[key].kind if spec is not None and key in spec.attrs else None)
        if not isinstance(key, str) or kind is None:
            problems.append(BlueprintProblem(where, f"attribute {str(key)[:40]!r}: {str(value)[:40]!r} is no value"))
        else:
            out.attributes.append(to_attribute(key, kind, tuple(value) if isinstance(value, list) else value))


def _kind(value: AttrValue | list[Any], wanted: AttrKind | None) -> AttrKind | None:
    """The Attribute case for a parsed value: by its type, with ints read as floats where the schema wants that."""
    if isinstance(value, bool):
        return AttrKind.BOOL
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return None
        return AttrKind.FLOAT if wanted is AttrKind.FLOAT else AttrKind.INT
    if isinstance(value, float):
        return AttrKind.FLOAT
    if isinstance(value, str):
        return AttrKind.STRING
    if isinstance(value, list):
        if any(
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or (isinstance(v, int) and not _INT64[0] <= v <= _INT64[1])
            for v in value
        ):
            return None
        floats = wanted is AttrKind.FLOATS or any(isinstance(v, float) for v in value)
        return AttrKind.FLOATS if floats else AttrKind.INTS
    return None
