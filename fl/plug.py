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
    >>> updates = [{"w": torch.full((2, 2), float(v))} for v in (1, 0, 2, 1, 1)]
    >>> mean = secure_average(updates, weights=[1, 1, 2, 3, 1])
    >>> torch.allclose(mean["w"], torch.full((2, 2), 1.125), atol=1e-4)
    True
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

import secagg
from fl.core.aggregation import ClientUpdate, secure_weighted_mean
from fl.errors import ClippedValuesWarning, InputError

__all__ = ["DEFAULT_RANGE", "Layout", "flatten", "secure_average", "unflatten"]

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


DEFAULT_RANGE = 4.0
"""The value range ``[-4, 4]`` secure_average accepts when no ``clip`` is given."""


def _weight(index: int, value: object) -> int:
    """One weight as the exact integer it stands for, or a clear error with the real value."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"weights[{index}] = {value!r} is not a number; pass each client's example count"
        )
    if not math.isfinite(value):
        raise InputError(
            f"weights[{index}] = {value} is not a finite number; pass each client's example count"
        )
    if value != int(value):
        raise InputError(
            f"weights[{index}] = {value} is not a whole number: secure aggregation sums integer "
            "weights (example counts) exactly, and fractional ones are never rounded silently; "
            "pass counts, or scale all weights to integers yourself (the mean does not change "
            "when every weight is scaled alike), e.g. [round(w * 1000) for w in weights]"
        )
    if value < 1:
        raise InputError(
            f"weights[{index}] = {value} must be at least 1: a client with weight 0 adds "
            "nothing to the mean, so leave its update out (and weights cannot be negative)"
        )
    return int(value)


def _check_values(vectors: list[np.ndarray], clip: float | None) -> float:
    """The clipping bound to encode with; refuse what cannot be averaged as given.

    Raises:
        InputError: non-finite values, or (without ``clip``) values beyond the default range.
    """
    for index, vector in enumerate(vectors):
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        if bad:
            raise InputError(
                f"updates[{index}] holds {bad} NaN or infinite values (a diverged client); "
                "leave it out of the average"
            )
    bound = DEFAULT_RANGE if clip is None else clip
    outside = [int(np.count_nonzero(np.abs(v) > bound)) for v in vectors]
    if not any(outside):
        return bound
    largest = max(float(np.max(np.abs(v))) for v in vectors)
    if clip is None:
        index = next(i for i, count in enumerate(outside) if count)
        raise InputError(
            f"updates[{index}] has {outside[index]} values outside [-{bound:g}, {bound:g}] "
            f"(largest magnitude over all updates: {largest:.4g}); secure_average never clips "
            "silently: pass updates (local - global), not whole models, or pass clip= to clip "
            "at a bound you choose (a warning then counts the values clipped)"
        )
    total = sum(outside)
    warnings.warn(
        f"secure_average clipped {total} of {sum(v.size for v in vectors)} values, from "
        f"{sum(1 for c in outside if c)} of {len(vectors)} clients, to [-{bound:g}, {bound:g}] "
        f"(largest magnitude {largest:.4g})",
        ClippedValuesWarning,
        stacklevel=3,
    )
    return bound


def secure_average(
    updates: Sequence[Tree],
    *,
    weights: Sequence[int] | None = None,
    clip: float | None = None,
    precision_bits: int = 16,
    max_weight: int | None = None,
    dropouts: Mapping[int, secagg.Phase] | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    identities: bool = False,
    policy: secagg.ClientPolicy | None = None,
) -> Tree:
    """The weighted mean of the clients' updates, computed by secure aggregation.

    Nothing is changed silently: a weight or value that cannot be averaged exactly as given is
    an error naming it, and clipping happens only at a bound you pass, with a warning.

    Args:
        updates: one state dict (or tensor) per client, all of the same layout.
        weights: each client's weight, a whole number >= 1 (its example count; ints, integral
            floats and integer scalars of numpy or torch); equal weights if omitted. Weights are
            summed exactly, as integers, inside the protocol.
        clip: clip every value to ``[-clip, clip]``, with a :class:`~fl.errors.ClippedValuesWarning`
            counting the values clipped. Unset: values must lie in ``[-4, 4]`` (pass deltas,
            not whole models) and any beyond is an error.
        precision_bits: fixed-point precision; the mean is exact within 2^-precision_bits.
        max_weight: public bound on the weights, which sizes the ring (default: the largest
            weight given).
        dropouts: ``{client index: phase}`` for clients that vanish during the protocol;
            indices are positions in ``updates``.
        threshold, neighbours, identities: protocol parameters (see :func:`secagg.aggregate`).
        policy: the floors every client holds (:class:`secagg.ClientPolicy`; the secure
            defaults: at least 5 clients, a threshold safe against 5% colluders). Averaging
            fewer clients needs a policy that allows it, e.g. ``ClientPolicy(min_clients=3)``:
            with few clients the mean itself says much about each.

    Returns:
        The mean in the layout, dtypes and devices of ``updates[0]``.

    Raises:
        TypeError: a weight that is not a number.
        InputError: (a ``ValueError``) fewer than 2 updates, layouts that differ, a weight that
            is not a whole number >= 1 or exceeds ``max_weight``, non-finite values, values
            beyond the range without ``clip``, a dropout index out of range.
        secagg.ThresholdNotMet: too many dropouts; no mean is released.
        secagg.PolicyViolation: fewer clients, or a lower threshold, than ``policy`` accepts.
    """
    if len(updates) < 2:
        raise InputError(f"secure averaging needs at least 2 clients, got {len(updates)}")
    given = list(weights) if weights is not None else [1] * len(updates)
    if len(given) != len(updates):
        raise InputError(f"{len(given)} weights for {len(updates)} updates; pass one per update")
    counts = [_weight(i, w) for i, w in enumerate(given)]
    if max_weight is None:
        max_weight = max(counts)
    elif isinstance(max_weight, bool) or not isinstance(max_weight, int) or max_weight < 1:
        raise InputError(f"max_weight = {max_weight!r} must be an integer >= 1")
    for index, count in enumerate(counts):
        if count > max_weight:
            raise InputError(
                f"weights[{index}] = {count} exceeds max_weight = {max_weight}; raise max_weight "
                "(a public bound that sizes the ring) or leave it unset"
            )
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise InputError(f"clip = {clip!r} must be a positive finite bound")
    for index in dropouts or {}:
        if not (isinstance(index, int) and 0 <= index < len(updates)):
            raise InputError(
                f"dropouts names client {index!r}; indices are positions in updates, "
                f"0..{len(updates) - 1}"
            )
    flat = [flatten(update) for update in updates]
    layout = flat[0][1]
    if any([(n, s) for n, s, *_ in other] != [(n, s) for n, s, *_ in layout] for _, other in flat):
        raise InputError("all updates must have the same names and shapes")
    bound = _check_values([vector for vector, _ in flat], clip)
    outcome = secure_weighted_mean(
        {
            i + 1: ClientUpdate(vector, count)
            for i, ((vector, _), count) in enumerate(zip(flat, counts, strict=True))
        },
        max_weight=max_weight,
        clip=bound,
        precision_bits=precision_bits,
        threshold=threshold,
        neighbours=neighbours,
        identities=identities,
        dropouts={index + 1: phase for index, phase in (dropouts or {}).items()},
        policy=policy,
    )
    return unflatten(outcome.mean, layout, updates[0])
