"""The integer noise samplers: exact discrete Gaussian (Canonne, Kamath, Steinke 2020), Skellam
within a stated total-variation distance, and the randomness they draw.

Statistical tests replay seeded sources (DeterministicRandom), so they are deterministic; each
is a test whose false-failure rate, for a random seed, is 1e-6."""

import math

import numpy as np
import pytest
from scipy import stats

from dp.samplers import (
    _dyadic_variance,
    bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_skellam,
    skellam_table,
)
from secagg.randomness import DeterministicRandom

FALSE_FAILURE = 1e-6
Z = stats.norm.isf(FALSE_FAILURE / 2)  # two-sided


def _chi_square_p_value(draws: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Pearson's test of the draws against the pmf, cells with expected count >= 5 and the two
    tails pooled into one cell each."""
    n = draws.size
    expected = pmf * n
    keep = expected >= 5
    low, high = support[keep][0], support[keep][-1]
    observed = np.array([np.sum(draws == k) for k in support[keep]], dtype=np.float64)
    cells_obs = [np.sum(draws < low), *observed, np.sum(draws > high)]
    cells_exp = [pmf[support < low].sum() * n, *expected[keep], pmf[support > high].sum() * n]
    cells = [(o, e) for o, e in zip(cells_obs, cells_exp, strict=True) if e > 0]
    o, e = np.array(cells).T
    e = e * o.sum() / e.sum()
    return float(stats.chisquare(o, e).pvalue)


def _moments_agree(draws: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> bool:
    """Sample mean and variance within their false-failure-rate bounds (normal approximation,
    standard errors from the pmf's second and fourth moments)."""
    values = support.astype(np.float64)
    variance = float(pmf @ values**2)
    fourth = float(pmf @ values**4)
    n = draws.size
    mean_ok = abs(draws.mean()) < Z * math.sqrt(variance / n)
    variance_ok = abs(draws.astype(np.float64).var() - variance) < Z * math.sqrt(
        (fourth - variance**2) / n
    )
    return mean_ok and variance_ok


def _discrete_gaussian_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = _dyadic_variance(sigma**2, 64)
    half = int(12 * sigma) + 12
    support = np.arange(-half, half + 1)
    weights = np.exp(-(support.astype(np.float64) ** 2) * b / (2 * a))
    return support, weights / weights.sum()


@pytest.mark.parametrize(("sigma", "seed"), [(0.7, 1), (3.0, 2), (40.0, 3)])
def test_discrete_gaussian_matches_its_exact_pmf(sigma, seed):
    """N_Z(0, s^2) by rejection from a discrete Laplace (CKS 2020, Alg. 3): 200,000 draws pass
    a chi-square goodness-of-fit test against P(y) ~ exp(-y^2 / (2 s^2)) and tests of the
    mean and the variance, at false-failure rate 1e-6 each."""
    draws = sample_discrete_gaussian(sigma, 200_000, DeterministicRandom(seed))
    support, pmf = _discrete_gaussian_pmf(sigma)
    assert _chi_square_p_value(draws, support, pmf) > FALSE_FAILURE
    assert _moments_agree(draws, support, pmf)


@pytest.mark.parametrize(("variance", "seed"), [(0.7, 4), (50.0, 5), (3000.0, 6)])
def test_skellam_matches_its_pmf_within_its_stated_distance(variance, seed):
    """Sk(lambda, lambda) with 2 lambda = V: 200,000 draws pass a chi-square test against
    scipy's Skellam pmf and tests of the mean and variance, at false-failure rate 1e-6 each;
    the stated per-draw total-variation distance (threshold rounding, tails, decimal
    arithmetic) is below 1e-30."""
    draws = sample_skellam(variance, 200_000, DeterministicRandom(seed))
    half = int(12 * math.sqrt(variance)) + 12
    support = np.arange(-half, half + 1)
    pmf = stats.skellam.pmf(support, variance / 2, variance / 2)
    assert _chi_square_p_value(draws, support, pmf) > FALSE_FAILURE
    assert _moments_agree(draws, support, pmf)
    assert skellam_table(variance).tv_bound < 1e-30


def test_skellam_table_matches_an_independent_pmf():
    """The 128-bit CDF thresholds agree with scipy's Skellam CDF (double precision) to 1e-14."""
    variance = 200.0
    table = skellam_table(variance)
    support = np.arange(table.low, -table.low)
    ours = (
        table.high_words.astype(np.float64) * 2.0**-64
        + table.low_words.astype(np.float64) * 2.0**-128
    )
    reference = stats.skellam.cdf(support, variance / 2, variance / 2)
    assert np.max(np.abs(ours - reference)) < 1e-14


def test_discrete_laplace_has_its_exact_pmf():
    """P(y) ~ exp(-|y| / t) (CKS 2020, Alg. 2): chi-square at false-failure rate 1e-6."""
    scale = 5
    draws = sample_discrete_laplace(scale, 200_000, DeterministicRandom(7))
    support = np.arange(-120, 121)
    pmf = np.exp(-np.abs(support) / scale)
    assert _chi_square_p_value(draws, support, pmf / pmf.sum()) > FALSE_FAILURE


@pytest.mark.parametrize(
    ("numerator", "denominator"),
    [(0, 1), (1, 3), (1, 1), (7, 2), (10, 1), (3 * 2**70, 2**70 + 1)],
)
def test_bernoulli_exp_is_exact(numerator, denominator):
    """Bernoulli(exp(-n / d)) from uniform integers only (CKS 2020, Alg. 1), including the
    Python-integer path for numbers beyond 64 bits: 200,000 draws within the binomial bounds
    at false-failure rate 1e-6 (20,000 on the slow big-integer path)."""
    count = 200_000 if numerator < 2**62 else 20_000
    draws = bernoulli_exp(
        np.full(count, numerator, dtype=object), denominator, DeterministicRandom(8)
    )
    p = math.exp(-numerator / denominator)
    low, high = stats.binom.interval(1 - FALSE_FAILURE, draws.size, p)
    assert low <= int(draws.sum()) <= high


def test_samplers_replay_a_seeded_source_and_default_to_the_system():
    """The randomness is injected: one seeded source gives the same draws twice; by default the
    draws come from os.urandom and differ."""
    for sampler, parameter in ((sample_discrete_gaussian, 5.0), (sample_skellam, 25.0)):
        first = sampler(parameter, 1000, DeterministicRandom(9))
        assert np.array_equal(first, sampler(parameter, 1000, DeterministicRandom(9)))
        assert not np.array_equal(sampler(parameter, 1000), sampler(parameter, 1000))


def test_discrete_gaussian_never_has_less_variance_than_asked():
    """The variance parameter is rounded up to a dyadic rational: the noise is never smaller
    than requested (the accounting uses the requested value)."""
    for variance in (0.3, 1 / 3, 7.123456789, 65536.5):
        a, b = _dyadic_variance(variance, 64)
        assert a / b >= variance and a / b - variance <= max(1e-6 * variance, 1 / b)
