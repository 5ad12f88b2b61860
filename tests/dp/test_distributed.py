"""Distributed DP noise: target variance of the aggregated noise, clipping, rotation, ring size."""

import math
import os

import numpy as np
import pytest

from dp.distributed import (
    DistributedNoiseEncoder,
    Mechanism,
    hadamard_rotate,
    sample_discrete_gaussian,
    sample_skellam,
)
from dp.errors import PrivacyConfigError
from secagg.randomness import DeterministicRandom

# two-sided chi-square test of a variance, false-failure rate 1e-6 (normal approximation of the
# sample variance: its standard error is sqrt(2 / (n - 1)) relative, for near-Gaussian noise)
Z_1E6 = 4.89


def _variance_within(sample: np.ndarray, target: float) -> bool:
    relative_error = sample.var(ddof=1) / target - 1
    excess_kurtosis_allowance = 1.05  # Skellam/discrete Gaussian at these scales are near-Gaussian
    return (
        abs(relative_error) < Z_1E6 * math.sqrt(2 / (sample.size - 1)) * excess_kurtosis_allowance
    )


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_aggregated_noise_has_the_target_variance(mechanism):
    """t clients each add variance V/t; the sum of their shares has variance V (per coordinate),
    checked on 200,000 coordinates with a fixed false-failure rate of 1e-6."""
    encoder = DistributedNoiseEncoder(
        mechanism, 4, l2_clip=1.0, noise_multiplier=0.5, cohort=8, noise_shares=5
    )
    local_variance = (encoder.local_sigma * encoder.scale) ** 2
    count = 200_000
    sampler = (
        sample_skellam
        if mechanism is Mechanism.SKELLAM
        else (lambda v, n, r: sample_discrete_gaussian(math.sqrt(v), n, r))
    )
    total = sum(
        sampler(local_variance, count, DeterministicRandom(i)) for i in range(encoder.noise_shares)
    )
    assert _variance_within(total.astype(np.float64), encoder.central_variance)
    assert abs(total.mean()) < Z_1E6 * math.sqrt(encoder.central_variance / count)


def test_samplers_match_their_variance_and_are_symmetric():
    """Skellam(lambda, lambda) has variance 2 lambda; N_Z(0, s^2) has variance close to s^2 for s >= 1."""
    skellam = sample_skellam(50.0, 200_000, DeterministicRandom(1)).astype(np.float64)
    gaussian = sample_discrete_gaussian(7.0, 200_000, DeterministicRandom(2)).astype(np.float64)
    assert _variance_within(skellam, 50.0)
    assert _variance_within(gaussian, 49.0)
    assert abs(skellam.mean()) < 0.1 and abs(gaussian.mean()) < 0.1


def test_noise_is_fresh_from_the_system_source():
    """Without a seeded source, two draws differ (noise comes from os.urandom)."""
    assert not np.array_equal(sample_skellam(100.0, 64), sample_skellam(100.0, 64))


def test_hadamard_rotation_is_orthogonal_and_invertible():
    """The randomized Hadamard transform keeps norms and its inverse undoes it."""
    values = np.random.default_rng(0).normal(size=256)
    signs = np.where(np.random.default_rng(1).random(256) < 0.5, -1.0, 1.0)
    rotated = hadamard_rotate(values, signs)
    assert np.linalg.norm(rotated) == pytest.approx(np.linalg.norm(values))
    assert np.allclose(hadamard_rotate(rotated, signs, inverse=True), values)


def test_clipping_bounds_each_update():
    """A huge update is clipped to L2 norm C before noise: the decoded single update has norm
    about C (noise made negligible)."""
    encoder = DistributedNoiseEncoder(
        Mechanism.SKELLAM, 100, l2_clip=1.0, noise_multiplier=1e-6, cohort=1, noise_shares=1
    )
    seed = os.urandom(32)
    encoded = encoder.encode(np.full(100, 50.0), rotation_seed=seed)
    decoded = encoder.decode(encoded, contributors=1, rotation_seed=seed)
    assert np.linalg.norm(decoded) == pytest.approx(1.0, abs=0.02)


def test_rounding_respects_the_sensitivity_bound():
    """Conditional rounding keeps every rounded vector within the L2 bound used for accounting."""
    encoder = DistributedNoiseEncoder(
        Mechanism.SKELLAM, 64, l2_clip=1.0, noise_multiplier=0.0001, cohort=4, noise_shares=2
    )
    seed = os.urandom(32)
    bound = encoder.sensitivities[1]
    for trial in range(20):
        update = np.random.default_rng(trial).normal(size=64)
        vector = encoder.encode(update, rotation_seed=seed, random_bytes=DeterministicRandom(trial))
        signed = vector.astype(np.int64)
        signed[signed >= 2**31] -= 2**32
        # noise is tiny here, so the encoded vector is the rounded one up to a few units
        assert (
            np.linalg.norm(signed)
            <= bound + 5 * math.sqrt(64) * encoder.local_sigma * encoder.scale + 1
        )


def test_ring_is_sized_for_the_noise():
    """The reported wrap-around probability meets the target; an impossible ring is refused."""
    encoder = DistributedNoiseEncoder(
        Mechanism.SKELLAM, 5000, l2_clip=1.0, noise_multiplier=2.0, cohort=100, noise_shares=60
    )
    assert encoder.wrap_probability <= 1e-6
    with pytest.raises(PrivacyConfigError, match="ring"):
        DistributedNoiseEncoder(
            Mechanism.SKELLAM,
            5000,
            l2_clip=1.0,
            noise_multiplier=2.0,
            cohort=5000,
            noise_shares=3000,
            ring_bits=8,
        )


def test_invalid_parameters():
    """Non-positive clip, negative noise and impossible share counts are refused."""
    with pytest.raises(PrivacyConfigError):
        DistributedNoiseEncoder(
            Mechanism.SKELLAM, 10, l2_clip=0.0, noise_multiplier=1.0, cohort=3, noise_shares=2
        )
    with pytest.raises(PrivacyConfigError):
        DistributedNoiseEncoder(
            Mechanism.SKELLAM, 10, l2_clip=1.0, noise_multiplier=-1.0, cohort=3, noise_shares=2
        )
    with pytest.raises(PrivacyConfigError):
        DistributedNoiseEncoder(
            Mechanism.SKELLAM, 10, l2_clip=1.0, noise_multiplier=1.0, cohort=3, noise_shares=4
        )
