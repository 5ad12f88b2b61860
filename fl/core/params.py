"""Model parameters as one flat float32 vector, and back."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_vector", "parameter_count", "to_vector"]


def to_vector(model: nn.Module) -> torch.Tensor:
    """All trainable parameters, concatenated in registration order, as a float32 CPU vector."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in model.parameters()])


def load_vector(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a flat vector (as made by :func:`to_vector`) into the model's parameters, in place."""
    expected = parameter_count(model)
    if vector.numel() != expected:
        raise ValueError(f"vector has {vector.numel()} values, the model has {expected} parameters")
    offset = 0
    with torch.no_grad():
        for parameter in model.parameters():
            count = parameter.numel()
            parameter.copy_(vector[offset : offset + count].view_as(parameter))
            offset += count


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameter values."""
    return sum(p.numel() for p in model.parameters())
