"""The security validator's limits: one frozen object, checked when it is made.

The Tezzeret spec gives no figures for these; the defaults fit seed modules (a grafted block of a few million
parameters at most) with room to spare, and bound the validator's own work on hostile input.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from esper.compiler.exceptions import InvalidLimitsError
from esper.proto import leyline_pb2 as pb

__all__ = ["FLOAT_DTYPES", "ValidationLimits"]

FLOAT_DTYPES = frozenset({pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16})


@dataclass(frozen=True)
class ValidationLimits:
    max_file_bytes: int = 1 << 20  # a blueprint file, before it is parsed
    max_blueprint_bytes: int = 1 << 20  # the serialized BlueprintIR
    max_nodes: int = 4096
    max_inputs: int = 16  # per node
    max_attributes: int = 16  # per node
    max_metadata: int = 64  # entries
    max_string_bytes: int = 256  # any one string (ids, ops, keys, names, metadata values)
    max_rank: int = 8
    max_dim: int = 1 << 20  # any one dimension of any tensor
    max_parameters: int = 50_000_000
    max_flops_per_sample: int = 20_000_000_000
    max_activation_bytes: int = 1 << 30  # every node's output, for one sample
    max_problems: int = 200  # reported; past it the error says how many more
    dtypes: frozenset[int] = FLOAT_DTYPES
    ir_versions: frozenset[int] = frozenset({1})

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be a positive int, not {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name.startswith("max_") and not (type(getattr(self, f.name)) is int and getattr(self, f.name) > 0)
        ]
        if self.max_rank > 8:
            problems.append("max_rank must be at most 8 (the attribute schemas' dim ranges)")
        if not self.dtypes or not self.dtypes <= FLOAT_DTYPES:
            problems.append(f"dtypes must be a non-empty subset of float32, float16, bfloat16: {sorted(self.dtypes)}")
        if not self.ir_versions:
            problems.append("ir_versions must not be empty")
        if problems:
            raise InvalidLimitsError(problems)
