"""Synthetic(alpha, beta): the heterogeneous federated data set of Li et al., "Federated
Optimization in Heterogeneous Networks" (FedProx, MLSys 2020, Sec. 5.1), following Shamir et
al. 2014.

Client k draws its own model and its own feature distribution:

* u_k ~ N(0, alpha^2); W_k in R^{60 x 10} and b_k in R^10 with entries ~ N(u_k, 1)
  (``alpha``: how much the clients' labelling models differ);
* B_k ~ N(0, beta^2); v_k in R^60 with entries ~ N(B_k, 1) (``beta``: how much their features
  differ);
* x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2;
* y = argmax(softmax(W_k^T x + b_k)).

The number of examples of a client follows the heavy-tailed law of the paper's released
generator: floor(exp(N(4, 2^2))) + 50 (a lognormal: the paper calls it a power law; a few
clients hold most of the data). Each client's data derives from ``(seed, client)`` alone, so
any number of clients can be generated, one at a time, and a client's data does not depend on
how many others there are. Features are float32, labels int64. (The paper writes N(0, alpha)
and N(0, beta); its generator draws them with standard deviations alpha and beta, as here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSES",
    "FEATURES",
    "SIZE_LOG_MEAN",
    "SIZE_LOG_STD",
    "SIZE_OFFSET",
    "ClientModel",
    "client_model",
    "client_size",
    "feature_variances",
    "synthetic_client",
]

FEATURES = 60
CLASSES = 10
SIZE_LOG_MEAN = 4.0
"""Mean of the log of a client's example count (before the offset)."""
SIZE_LOG_STD = 2.0
"""Standard deviation of the log of a client's example count."""
SIZE_OFFSET = 50
"""The fewest examples a client holds."""

_TAG = 0x5E7A  # separates this generator's streams from the seed's other uses


def _generator(client: int, seed: int) -> np.random.Generator:
    if client < 1:
        raise ValueError(f"client ids start at 1, got {client}")
    return np.random.default_rng([seed, _TAG, client])


def feature_variances() -> np.ndarray:
    """The diagonal of Sigma: j^-1.2 for j = 1..60."""
    return np.arange(1, FEATURES + 1, dtype=np.float64) ** -1.2


def client_size(client: int, *, seed: int) -> int:
    """How many examples client ``client`` (1-based) holds: floor(exp(N(4, 4))) + 50."""
    return int(_generator(client, seed).lognormal(SIZE_LOG_MEAN, SIZE_LOG_STD)) + SIZE_OFFSET


@dataclass(frozen=True, eq=False)
class ClientModel:
    """What client k's data is drawn from.

    Attributes:
        size: its number of examples.
        weights: W_k, (60, 10), entries ~ N(u_k, 1) with u_k ~ N(0, alpha^2).
        bias: b_k, (10,), entries ~ N(u_k, 1).
        centre: v_k, (60,), entries ~ N(B_k, 1) with B_k ~ N(0, beta^2).
    """

    size: int
    weights: np.ndarray
    bias: np.ndarray
    centre: np.ndarray


def _draw_model(generator: np.random.Generator, alpha: float, beta: float) -> ClientModel:
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got {alpha} and {beta}")
    size = int(generator.lognormal(SIZE_LOG_MEAN, SIZE_LOG_STD)) + SIZE_OFFSET
    # scaled standard normals: the same seed gives the same clients' draws for any alpha, beta
    model_mean = alpha * generator.standard_normal()
    feature_mean = beta * generator.standard_normal()
    centre = feature_mean + generator.standard_normal(FEATURES)
    weights = model_mean + generator.standard_normal((FEATURES, CLASSES))
    bias = model_mean + generator.standard_normal(CLASSES)
    return ClientModel(size, weights, bias, centre)


def client_model(client: int, *, alpha: float, beta: float, seed: int) -> ClientModel:
    """The parameters client ``client`` (1-based) of Synthetic(alpha, beta) draws its data from.

    u_k shifts every class's logit by the same amount, so, as the paper defines it, alpha moves
    W_k and b_k but not which class wins: the labels' law depends on beta and the N(0, 1) parts.
    """
    return _draw_model(_generator(client, seed), alpha, beta)


def synthetic_client(
    client: int, *, alpha: float, beta: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """All examples of client ``client`` (1-based) of Synthetic(alpha, beta).

    Args:
        client: the client id, from 1.
        alpha: spread of the clients' labelling models (u_k ~ N(0, alpha^2)).
        beta: spread of the clients' feature means (B_k ~ N(0, beta^2)).
        seed: the data set's seed.

    Returns:
        Features (examples, 60) float32 and labels (examples,) int64 in 0..9:
        x ~ N(v_k, Sigma) and y = argmax(W_k^T x + b_k) (the softmax's argmax).

    Example:
        >>> x, y = synthetic_client(1, alpha=1.0, beta=1.0, seed=0)
        >>> x.shape[1], x.dtype.name, int(y.max()) < 10, len(y) >= 50
        (60, 'float32', True, True)
    """
    generator = _generator(client, seed)
    model = _draw_model(generator, alpha, beta)
    noise = generator.standard_normal((model.size, FEATURES), dtype=np.float32)
    x = (noise * np.sqrt(feature_variances()) + model.centre).astype(np.float32)
    # softmax is monotone: its argmax is the argmax of the logits (of the features as stored)
    y = np.argmax(x @ model.weights + model.bias, axis=1)
    return x, y.astype(np.int64)
