"""Synthetic(alpha, beta) of the FedProx paper (Li et al. 2020, Sec. 5.1): client sizes,
feature model and label model, per the paper's definition and its released generator."""

import math

import numpy as np
import pytest
from scipy import stats

from fl.core.config import RunConfig
from fl.core.data import SyntheticClients, build_federated_data, synthetic_federation
from fl.core.synthetic import (
    CLASSES,
    FEATURES,
    SIZE_LOG_MEAN,
    SIZE_LOG_STD,
    SIZE_OFFSET,
    client_model,
    client_size,
    feature_variances,
    synthetic_client,
)
from fl.errors import DataError


def _within(observed: float, expected: float, std: float, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * std


def test_client_sizes_follow_the_heavy_tailed_law():
    """Sizes are floor(exp(N(4, 2^2))) + 50 (the paper's generator; its "power law"): the
    fraction of clients above each cut matches the lognormal tail within 5 binomial standard
    deviations, the smallest size is 50, and a tenth of the clients hold most examples."""
    clients = 4000
    sizes = np.array([client_size(k, seed=3) for k in range(1, clients + 1)])
    assert sizes.min() >= SIZE_OFFSET
    for cut in (5, 55, 400, 3000):
        expected = stats.norm.sf((math.log(cut) - SIZE_LOG_MEAN) / SIZE_LOG_STD)
        observed = float(np.mean(sizes - SIZE_OFFSET >= cut))
        assert _within(observed, expected, math.sqrt(expected * (1 - expected) / clients)), cut
    top_tenth = np.sort(sizes)[-clients // 10 :].sum() / sizes.sum()
    assert top_tenth > 0.5  # heavy tail: 10% of the clients hold over half the data


def test_features_follow_the_clients_centre_and_the_diagonal_covariance():
    """x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2: a large client's feature means sit at v_k and
    their variances at j^-1.2 (chi-square bounds per feature)."""
    client = next(k for k in range(1, 500) if client_size(k, seed=0) >= 3000)
    x, _ = synthetic_client(client, alpha=1.0, beta=1.0, seed=0)
    model = client_model(client, alpha=1.0, beta=1.0, seed=0)
    n = len(x)
    variances = feature_variances()
    assert np.allclose(variances, np.arange(1, FEATURES + 1) ** -1.2)
    mean_error = (x.mean(axis=0) - model.centre) / np.sqrt(variances / n)
    assert np.all(np.abs(mean_error) < 5)
    ratio = x.var(axis=0, ddof=1) / variances
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], n - 1) / (n - 1)
    assert np.all((ratio > low) & (ratio < high))


def test_labels_are_the_argmax_of_each_clients_linear_model():
    """y = argmax(softmax(W_k^T x + b_k)), with the client's own W_k and b_k; ten classes."""
    for client in (1, 2, 3):
        x, y = synthetic_client(client, alpha=1.0, beta=1.0, seed=5)
        model = client_model(client, alpha=1.0, beta=1.0, seed=5)
        logits = x.astype(np.float64) @ model.weights + model.bias
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        assert np.array_equal(y, np.argmax(softmax, axis=1))
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < CLASSES
        assert x.shape == (model.size, FEATURES) and x.dtype == np.float32


@pytest.mark.parametrize("spread", [0.0, 1.0, 3.0])
def test_alpha_and_beta_spread_the_clients_models_and_centres(spread):
    """u_k ~ N(0, alpha^2) is the mean of W_k's and b_k's entries, B_k ~ N(0, beta^2) that of
    v_k's: across 3,000 clients the variance of a client's mean W entry is alpha^2 + 1/600, of
    its mean centre entry beta^2 + 1/60 (chi-square bounds)."""
    clients = 3000
    models = [client_model(k, alpha=spread, beta=spread / 2, seed=1) for k in range(1, clients + 1)]
    for values, expected in (
        ([m.weights.mean() for m in models], spread**2 + 1 / (FEATURES * CLASSES)),
        ([m.centre.mean() for m in models], (spread / 2) ** 2 + 1 / FEATURES),
    ):
        ratio = np.var(values, ddof=1) / expected
        low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], clients - 1) / (clients - 1)
        assert low < ratio < high


def test_alpha_shifts_every_logit_alike():
    """The paper's u_k is the mean of every entry of W_k and b_k, so it shifts all ten logits
    by the same amount: for one seed, the labels do not depend on alpha (only on beta)."""
    _, y0 = synthetic_client(4, alpha=0.0, beta=1.0, seed=2)
    _, y5 = synthetic_client(4, alpha=5.0, beta=1.0, seed=2)
    _, other_beta = synthetic_client(4, alpha=0.0, beta=3.0, seed=2)
    assert np.array_equal(y0, y5)
    assert not np.array_equal(y0, other_beta)


def test_clients_do_not_depend_on_how_many_there_are_and_seeds_differ():
    """A client's data derives from (seed, client) alone: the first 5 of a 20-client federation
    are those of a 5-client one; another seed gives other data."""
    config = RunConfig().with_overrides({"data.dataset": "fedprox-synthetic"}).data
    small = build_federated_data(config, clients=5, seed=0)
    large = build_federated_data(config, clients=20, seed=0)
    for k in range(1, 6):
        assert np.array_equal(small.client_arrays(k)[0], large.client_arrays(k)[0])
    other = build_federated_data(config, clients=5, seed=1)
    assert not np.array_equal(small.client_arrays(1)[0], other.client_arrays(1)[0])


def test_each_client_holds_out_its_test_fraction():
    """The test set is every client's held-out share (10% in the paper), never trained on."""
    config = (
        RunConfig()
        .with_overrides({"data.dataset": "fedprox-synthetic", "data.test_fraction": 0.1})
        .data
    )
    data = build_federated_data(config, clients=8, seed=0)
    sizes = [client_size(k, seed=0) for k in range(1, 9)]
    held_out = [max(1, round(0.1 * n)) for n in sizes]
    assert list(data.client_sizes) == [n - h for n, h in zip(sizes, held_out, strict=True)]
    assert len(data.test_y) == sum(held_out)
    assert data.num_classes == CLASSES and data.num_features == FEATURES
    train_rows = {row.tobytes() for k in range(1, 9) for row in data.client_arrays(k)[0]}
    assert not any(row.tobytes() in train_rows for row in data.test_x)


def test_clients_generated_on_demand_are_the_materialised_federation_bit_for_bit():
    """A run's Synthetic(alpha, beta) generates each client's training examples when the client
    is sampled (O(cohort) memory): every client's examples, the sizes and the test set are those
    of the federation built with every client in memory, for the same seed, bit for bit; the
    on-demand form holds no training example (only the test set)."""
    config = (
        RunConfig()
        .with_overrides(
            {
                "data.dataset": "fedprox-synthetic",
                "data.synthetic_alpha": 0.5,
                "data.synthetic_beta": 2,
            }
        )
        .data
    )
    lazy = build_federated_data(config, clients=30, seed=4)
    eager = synthetic_federation(config, clients=30, seed=4)
    assert isinstance(lazy, SyntheticClients)
    assert lazy.client_sizes == eager.client_sizes
    for k in (30, 1, 17, 1):  # any order, twice: generation depends on (seed, client) alone
        for mine, reference in zip(lazy.client_arrays(k), eager.client_arrays(k), strict=True):
            assert mine.dtype == reference.dtype and np.array_equal(mine, reference)
    assert np.array_equal(lazy.test_x, eager.test_x) and np.array_equal(lazy.test_y, eager.test_y)
    assert (lazy.num_features, lazy.num_classes) == (eager.num_features, eager.num_classes)
    held = sum(v.nbytes for v in vars(lazy).values() if isinstance(v, np.ndarray))
    assert held == lazy.test_x.nbytes + lazy.test_y.nbytes < eager.train_x.nbytes
    with pytest.raises(DataError, match="client ids run from 1 to 30"):
        lazy.client_arrays(31)
