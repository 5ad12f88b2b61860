"""FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022), the client's side: its update is weighed by its staleness before it is masked.

A client trains on the model version it pulled; when its update joins a buffer, the server has
moved on by tau versions. The client scales its update by s(tau) = 1 / sqrt(1 + tau) (the
paper's choice) *before* encoding and masking it, so secure aggregation sums the weighed
updates and the server never holds an individual one, weighed or not (the secure version of
buffered aggregation, So et al. 2021). The example-count weights of the K buffered clients are
packed in the ring as in synchronous rounds: the server decodes
sum_k n_k s(tau_k) delta_k / sum_k n_k.
"""

from __future__ import annotations

import math

import numpy as np

from fl.core.aggregation import ClientUpdate

__all__ = ["staleness_weight", "weigh_update"]


def staleness_weight(staleness: int) -> float:
    """s(tau) = 1 / sqrt(1 + tau) (Nguyen et al. 2022, Sec. 5).

    Raises:
        ValueError: a negative staleness (a version from the future).

    Example:
        >>> staleness_weight(0), staleness_weight(3)
        (1.0, 0.5)
    """
    if staleness < 0:
        raise ValueError(f"staleness is the number of versions behind, >= 0; got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


def weigh_update(update: ClientUpdate, staleness: int) -> ClientUpdate:
    """The client's update scaled by s(staleness), its weight unchanged: what the client
    encodes and masks."""
    scale = staleness_weight(staleness)
    vector = update.vector if scale == 1.0 else (update.vector * scale).astype(update.vector.dtype)
    return ClientUpdate(vector=np.asarray(vector), weight=update.weight)
