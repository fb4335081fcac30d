"""Initial weights as safetensors bytes (never pickle: decoding them runs no code)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["decode_weights", "encode_weights"]


def encode_weights(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of the tensors (moved to the CPU, detached); tied tensors must be given once."""
    from safetensors.torch import save

    return save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})


def decode_weights(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)
