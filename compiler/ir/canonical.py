"""The canonical bytes of a validated blueprint and their sha256: the blueprint's content address.

The canonical form keeps what determines the module and its initial weights, and nothing else: ir_version, the
input's shape and dtype, every node's id (it names the weights and seeds their initialisation), op and inputs in
order, every attribute of the op's schema with defaults filled in, sorted by key, and the output. Description
(blueprint_id, name, author, metadata, created_at) is left out, so re-describing a blueprint or writing a default
out does not change its address. The bytes are the deterministic protobuf serialization of that form (fields in
number order, no maps); floats are IEEE doubles with -0.0 written as 0.0.
"""

from __future__ import annotations

import hashlib

from esper.compiler.ir.schema import OPS, to_attribute
from esper.compiler.ir.validate import ValidatedBlueprint
from esper.proto import leyline_pb2 as pb

__all__ = ["canonical_bytes", "canonical_ir", "content_hash"]


def canonical_ir(blueprint: ValidatedBlueprint) -> pb.BlueprintIR:
    ir = blueprint.ir
    out = pb.BlueprintIR(ir_version=ir.ir_version, output=blueprint.output)
    out.input.shape.extend(blueprint.input_shape)
    out.input.dtype = ir.input.dtype
    for node in blueprint.nodes:
        specs = OPS[node.op].attrs
        out.nodes.add(
            id=node.id,
            op=node.op,
            inputs=node.inputs,
            attributes=[to_attribute(key, specs[key].kind, node.attrs[key]) for key in sorted(node.attrs)],
        )
    return out


def canonical_bytes(blueprint: ValidatedBlueprint) -> bytes:
    return canonical_ir(blueprint).SerializeToString(deterministic=True)


def content_hash(blueprint: ValidatedBlueprint) -> str:
    """sha256 of the canonical bytes, in hex."""
    return hashlib.sha256(canonical_bytes(blueprint)).hexdigest()
