"""Exact distributed noise under dropouts (add then remove, Dordis, EuroSys 2024)."""

from __future__ import annotations

import numpy as np
import pytest

from dp.errors import PrivacyConfigError
from dp.removable import NoiseSeeds, RemovableNoise
from secagg.randomness import DeterministicRandom


@pytest.mark.parametrize("shares, most", [(29, 56), (49, 95), (51, 100), (10, 11)])
def test_every_honest_floor_keeps_at_least_its_share_and_at_most_the_tolerance_more(shares, most):
    """For every m the ladder leaves each client between V / m and V / m (1 + tolerance): the
    honest clients of any sum keep V, and little more."""
    ladder = RemovableNoise(total_variance=1000.0, noise_shares=shares, most_honest=most)
    for floor in range(1, most + 5):
        left = ladder.variance_left(ladder.removal(floor))
        need = 1000.0 / min(max(floor, shares), most)
        assert need <= left <= need * (1 + ladder.tolerance)


def test_without_removal_the_share_is_the_worst_cases():
    """Base plus every component is the usual V / (t - c) share: no removal, no change."""
    ladder = RemovableNoise(total_variance=300.0, noise_shares=30, most_honest=90)
    whole = ladder.base_variance + sum(ladder.component_variances)
    assert whole == pytest.approx(ladder.share_variance) == pytest.approx(10.0)
    assert ladder.removal(30) == ()


def test_a_component_is_regenerated_exactly_from_its_seed():
    """The server subtracts exactly what the client added: the same seed gives the same draw."""
    ladder = RemovableNoise(total_variance=5000.0, noise_shares=20, most_honest=80)
    seeds = NoiseSeeds.generate(ladder, DeterministicRandom(1))
    base_source = DeterministicRandom(2)
    share = seeds.noise(ladder, 2048, base_source)
    revealed = dict(seeds.reveal(ladder.removal(80)))
    kept = share - ladder.excess(revealed, 2048)
    assert revealed and set(revealed) == set(range(ladder.size))
    # what is left is the base alone
    from dp.samplers import sample_skellam

    assert np.array_equal(kept, sample_skellam(ladder.base_variance, 2048, DeterministicRandom(2)))


def test_the_ladder_draws_have_the_variances_it_claims():
    """Statistical check (Skellam variances add): each component and the whole share."""
    ladder = RemovableNoise(total_variance=4000.0, noise_shares=40, most_honest=100)
    seeds = NoiseSeeds.generate(ladder, DeterministicRandom(3))
    count = 200_000
    share = seeds.noise(ladder, count, DeterministicRandom(4))
    assert share.var() == pytest.approx(ladder.share_variance, rel=0.02)
    top = ladder.size - 1
    assert ladder.component(seeds.seeds[top], top, count).var() == pytest.approx(
        ladder.component_variances[top], rel=0.02
    )


def test_bad_ladders_and_seeds_are_refused():
    """A ladder with t - c above the most honest clients, or a short seed, is a clear error."""
    with pytest.raises(PrivacyConfigError, match="t - c"):
        RemovableNoise(total_variance=1.0, noise_shares=10, most_honest=5)
    ladder = RemovableNoise(total_variance=1.0, noise_shares=5, most_honest=10)
    with pytest.raises(PrivacyConfigError, match="32 bytes"):
        ladder.component(b"short", 0, 4)
    with pytest.raises(PrivacyConfigError, match="no ladder component"):
        ladder.component(bytes(32), ladder.size, 4)
