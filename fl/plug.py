"""Secure aggregation for an existing PyTorch FedAvg loop, in one call.

Replace the line of your loop that averages the clients' updates (or models) by
:func:`secure_average`: it flattens each state dict or tensor, runs the real protocol with every
client in this process (through the byte messages, with the dropouts you inject), and returns the
weighted mean in the same shape, dtype and device as the inputs. For clients that live
elsewhere, use :class:`secagg.Client` and :class:`secagg.Server` over your own transport, with
:func:`flatten` / :func:`unflatten` and :class:`secagg.encoding.FixedPointEncoder` for the
bookkeeping.

Example:
    >>> import torch
    >>> from fl.plug import secure_average
    >>> updates = [{"w": torch.ones(2, 2)}, {"w": torch.zeros(2, 2)}, {"w": torch.full((2, 2), 2.0)}]
    >>> mean = secure_average(updates, weights=[1, 1, 2])
    >>> torch.allclose(mean["w"], torch.full((2, 2), 1.25), atol=1e-4)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

import secagg
from fl.aggregation import ClientUpdate, secure_weighted_mean

__all__ = ["Layout", "flatten", "secure_average", "unflatten"]

Layout = list[tuple[str, torch.Size, torch.dtype, torch.device]]
Tree = Mapping[str, torch.Tensor] | torch.Tensor


def flatten(values: Tree) -> tuple[np.ndarray, Layout]:
    """A state dict (or one tensor) as one float64 vector, with the layout to rebuild it.

    Only floating-point entries are averaged; integer buffers (such as BatchNorm's
    ``num_batches_tracked``) are left out of the vector.
    """
    items = {"": values} if isinstance(values, torch.Tensor) else dict(values)
    layout: Layout = []
    parts = []
    for name, tensor in items.items():
        if not torch.is_floating_point(tensor):
            continue
        layout.append((name, tensor.shape, tensor.dtype, tensor.device))
        parts.append(tensor.detach().to("cpu", torch.float64).reshape(-1).numpy())
    return (np.concatenate(parts) if parts else np.zeros(0)), layout


def unflatten(vector: np.ndarray, layout: Layout, like: Tree) -> Tree:
    """The inverse of :func:`flatten`; non-floating entries are copied from ``like``."""
    rebuilt: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape, dtype, device in layout:
        size = int(np.prod(shape)) if len(shape) else 1
        rebuilt[name] = (
            torch.from_numpy(vector[offset : offset + size].copy()).reshape(shape).to(device, dtype)
        )
        offset += size
    if isinstance(like, torch.Tensor):
        return rebuilt[""]
    return {name: rebuilt.get(name, tensor) for name, tensor in like.items()}


def secure_average(
    updates: Sequence[Tree],
    *,
    weights: Sequence[int] | None = None,
    clip: float = 4.0,
    precision_bits: int = 16,
    max_weight: int | None = None,
    dropouts: Mapping[int, secagg.Phase] | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    identities: bool = False,
) -> Tree:
    """The weighted mean of the clients' updates, computed by secure aggregation.

    Args:
        updates: one state dict (or tensor) per client, all of the same layout.
        weights: each client's weight (its example count); equal weights if omitted.
        clip: elementwise clipping range of the updates (pass deltas, not whole models, when
            the parameters themselves exceed it).
        precision_bits: fixed-point precision; the mean is exact within 2^-precision_bits.
        max_weight: public bound on the weights (default: the largest weight given).
        dropouts: ``{client index: phase}`` for clients that vanish during the protocol;
            indices are positions in ``updates``.
        threshold, neighbours, identities: protocol parameters (see :func:`secagg.aggregate`).

    Returns:
        The mean in the layout, dtypes and devices of ``updates[0]``.

    Raises:
        ValueError: the updates do not share one layout, or weights do not match.
        secagg.ThresholdNotMet: too many dropouts; no mean is released.
    """
    if len(updates) < 2:
        raise ValueError(f"secure averaging needs at least 2 clients, got {len(updates)}")
    weights = list(weights) if weights is not None else [1] * len(updates)
    if len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    flat = [flatten(update) for update in updates]
    layout = flat[0][1]
    if any([(n, s) for n, s, *_ in other] != [(n, s) for n, s, *_ in layout] for _, other in flat):
        raise ValueError("all updates must have the same names and shapes")
    outcome = secure_weighted_mean(
        {
            i + 1: ClientUpdate(vector, int(w))
            for i, ((vector, _), w) in enumerate(zip(flat, weights, strict=True))
        },
        max_weight=max_weight or max(int(w) for w in weights),
        clip=clip,
        precision_bits=precision_bits,
        threshold=threshold,
        neighbours=neighbours,
        identities=identities,
        dropouts={index + 1: phase for index, phase in (dropouts or {}).items()},
    )
    return unflatten(outcome.mean, layout, updates[0])
