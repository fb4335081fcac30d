"""Content addresses: what an artifact id is computed from, and the facts of this process that decide reuse.

Kept free of torch at import time: `esper artifact verify` recomputes ids without paying for `import torch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
import typing
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from esper.compiler.exceptions import InvalidArtifactIdError
from esper.proto.enums import CompilationStrategy, DType

__all__ = [
    "ReuseKey",
    "artifact_id",
    "canonical_json",
    "check_artifact_id",
    "check_field_types",
    "current_reuse_key",
]

_ID = re.compile(r"[0-9a-f]{64}")
_ADDRESS_FORMAT = 1  # bumped when what goes into an id changes, so old and new ids never collide


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, ASCII only (what is hashed and signed)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


_HINTS: dict[type, dict[str, Any]] = {}  # resolving string annotations costs more than the check: once per class


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check_field_types(obj: Any) -> None:
    """TypeError unless every str, int and bool field of the dataclass `obj` holds exactly that type: JSON from
    outside must not pass "2" for 2, or true for 1."""
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        t = hints[f.name]
        if t in (str, int, bool) and type(getattr(obj, f.name)) is not t:
            raise TypeError(f"{type(obj).__name__}.{f.name} must be {t.__name__}")


@dataclass(frozen=True)
class ReuseKey:
    """What a consumer must match for the compiled code to be reused rather than silently recompiled (torch's
    cache key as TORCH-NOTES lists it). Weights are not in it: torch's compile cache does not key on them (different
    weights still hit), so an artifact's id does not either; the manifest still hashes the weights file."""

    torch_version: str  # version and git build: two builds of one version may generate different code
    device: str  # "cpu" or "cuda"
    device_name: str  # the GPU's name, or the CPU model (inductor's C++ targets its ISA)
    cuda_version: str  # "" without CUDA
    triton_version: str  # "" without triton
    num_threads: int  # in inductor's CPU key (cpp_runtime_thread_count); a mismatch misses or raises
    dtype: str  # the parameters' DType name, e.g. "FLOAT32"
    input_shape: tuple[int, ...]  # -1 for a dynamic dimension
    input_dtype: str
    input_requires_grad: bool
    compile_options: tuple[tuple[str, str], ...]  # sorted by key, `dynamic` and the inductor config among them

    def __post_init__(self) -> None:
        check_field_types(self)
        if not all(type(d) is int for d in self.input_shape):
            raise TypeError("ReuseKey.input_shape must hold ints")
        for name in (self.dtype, self.input_dtype):
            if name not in DType.__members__:
                raise ValueError(f"not a DType name: {name!r}")
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "compile_options", tuple(sorted((str(k), str(v)) for k, v in self.compile_options)))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["compile_options"] = [list(kv) for kv in self.compile_options]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReuseKey:
        """From `to_json`'s shape; a KeyError or TypeError on any other (the caller makes it a typed refusal)."""
        key = cls(
            **{
                **d,
                "input_shape": tuple(d["input_shape"]),
                "compile_options": tuple((k, v) for k, v in d["compile_options"]),
            }
        )
        if key.to_json() != d:  # wrong types (a string thread count, a float dimension) do not round-trip
            raise TypeError("reuse key fields of the wrong type")
        return key


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def current_reuse_key(
    *,
    device: str,
    dtype: str,
    input_shape: tuple[int, ...],
    input_dtype: str,
    input_requires_grad: bool,
    compile_options: dict[str, str],
) -> ReuseKey:
    """The reuse key of code compiled in this process for `device` ("cpu", "cuda", "cuda:1")."""
    import torch

    kind = torch.device(device).type
    try:
        triton = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton = ""
    return ReuseKey(
        torch_version=f"{torch.__version__}+git{torch.version.git_version}",
        device=kind,
        device_name=torch.cuda.get_device_name(torch.device(device)) if kind == "cuda" else _cpu_name(),
        cuda_version=torch.version.cuda or "",
        triton_version=triton,
        num_threads=torch.get_num_threads(),
        dtype=dtype,
        input_shape=input_shape,
        input_dtype=input_dtype,
        input_requires_grad=input_requires_grad,
        compile_options=tuple(compile_options.items()),
    )


def artifact_id(ir: bytes, tier: CompilationStrategy, key: ReuseKey) -> str:
    """sha256 (hex) over the canonical IR bytes, the tier and the reuse key: same inputs, same id, on any host."""
    return hashlib.sha256(
        canonical_json(
            {
                "format": _ADDRESS_FORMAT,
                "ir_sha256": hashlib.sha256(ir).hexdigest(),
                "tier": tier.name,
                "reuse_key": key.to_json(),
            }
        )
    ).hexdigest()


def check_artifact_id(value: str) -> str:
    """`value` when it is an artifact id (64 lower-case hex digits): ids become directory names, so nothing else
    (a path, `..`) reaches the filesystem."""
    if not _ID.fullmatch(value):
        raise InvalidArtifactIdError(f"not an artifact id (64 lower-case hex digits): {value!r}")
    return value
