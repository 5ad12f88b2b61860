"""Exact distributed noise under dropouts, end to end: the released sum carries the target
variance V / (m - c) * m ... whatever the dropouts, down to t (statistical checks)."""

from __future__ import annotations

import numpy as np
import pytest

import secagg
from dp.distributed import DistributedNoiseEncoder, Mechanism
from fl.core.aggregation import ClientUpdate, secure_noisy_mean

N, DIMENSION = 30, 16384
POLICY = secagg.ClientPolicy(corrupt_fraction=0.0, min_clients=5)
T = N // 2 + 1  # 2t > k + 1 + c with c = 0 in the complete graph


def _encoder() -> DistributedNoiseEncoder:
    return DistributedNoiseEncoder(
        mechanism=Mechanism.SKELLAM,
        dimension=DIMENSION,
        l2_clip=1.0,
        noise_multiplier=1.0,
        cohort=N,
        noise_shares=T,
        threshold=T,
        corrupt=0,
    )


def _released_noise_variance(dropped: int, *, exact: bool) -> tuple[float, float, int]:
    """(empirical variance of the released sum's noise, what the run says is left, |U3|), in
    units of the target V; every update is zero, so the sum is noise alone."""
    encoder = _encoder()
    outcome = secure_noisy_mean(
        {u: ClientUpdate(np.zeros(DIMENSION), 1) for u in range(1, N + 1)},
        encoder=encoder,
        rotation_seed=bytes(32),
        threshold=T,
        neighbours=N - 1,
        identities=True,
        dropouts={u: secagg.Phase.MASKED_INPUT for u in range(1, dropped + 1)},
        policy=POLICY,
        exact_noise=exact,
    )
    survivors = len(outcome.contributors)
    target = encoder.central_variance
    empirical = float((outcome.mean * survivors * encoder.scale).var()) / target
    left = outcome.noise_variance_left
    return empirical, (left if left is not None else survivors / T * target) / target, survivors


@pytest.mark.parametrize("dropped", [0, 3, N - T], ids=["none", "ten-percent", "down-to-t"])
def test_the_sum_carries_the_target_variance_whatever_the_dropouts(dropped):
    """With c = 0 the target is V: the variance left is within the ladder's 0.5% of it, and the
    released noise's empirical variance agrees (16384 coordinates: 5% is 4.5 standard errors).
    Without removal the same round carries |U3| / t times V (the test's power)."""
    empirical, left, survivors = _released_noise_variance(dropped, exact=True)
    assert survivors == N - dropped
    assert left >= 1 - 1e-9  # never below the target (up to the rounding of a float sum)
    assert left <= 1.005  # at most the ladder's tolerance above it
    assert empirical == pytest.approx(left, rel=0.05)
    plain_empirical, plain_left, _ = _released_noise_variance(dropped, exact=False)
    assert plain_left == pytest.approx(survivors / T)
    if survivors > T * 1.1:
        assert plain_empirical > 1.1 * empirical


def test_exact_noise_needs_identities():
    """Without signatures there is no certified survivor set to remove noise for."""
    from fl.errors import InputError

    with pytest.raises(InputError, match="identities"):
        secure_noisy_mean(
            {u: ClientUpdate(np.zeros(8), 1) for u in range(1, 8)},
            encoder=DistributedNoiseEncoder(
                mechanism=Mechanism.SKELLAM,
                dimension=8,
                l2_clip=1.0,
                noise_multiplier=1.0,
                cohort=7,
                noise_shares=4,
            ),
            rotation_seed=bytes(32),
            threshold=5,
            neighbours=6,
            exact_noise=True,
        )
