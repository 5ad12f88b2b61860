"""Secure weighted averaging equals plaintext weighted FedAvg within the quantisation bound."""

import numpy as np
import pytest

import secagg
from fl.core.aggregation import (
    ClientUpdate,
    contributes_in_the_clear,
    plain_weighted_mean,
    secure_weighted_mean,
)
from secagg.randomness import DeterministicRandom


def _updates(count, size, seed):
    generator = np.random.default_rng(seed)  # test data
    return {
        u: ClientUpdate(
            generator.normal(0, 0.5, size).astype(np.float32), int(generator.integers(1, 300))
        )
        for u in range(1, count + 1)
    }


@pytest.mark.parametrize("phase", [None, *secagg.Phase])
def test_secure_mean_matches_plain_weighted_mean(phase):
    """Same updates, same dropouts: the secure mean is within 2^-p of plaintext FedAvg, and both
    count the same contributors (a client whose masked input arrived is in the sum)."""
    updates = _updates(8, 300, seed=1)
    dropouts = {} if phase is None else {2: phase, 5: phase}
    identities = phase is secagg.Phase.CONSISTENCY_CHECK
    secure = secure_weighted_mean(
        updates,
        max_weight=1000,
        clip=4.0,
        precision_bits=16,
        dropouts=dropouts,
        identities=identities,
        rounding_random=lambda u: DeterministicRandom(u),
    )
    plain = plain_weighted_mean(updates, dropouts=dropouts)
    assert secure.contributors == plain.contributors
    assert secure.total_weight == plain.total_weight
    assert np.max(np.abs(secure.mean - plain.mean)) < secure.error_bound
    assert secure.bytes_up > 0 and secure.seconds > 0


def test_contributes_in_the_clear_follows_the_protocol():
    """Dropping before the masked input means not contributing; after it, still contributing."""
    assert contributes_in_the_clear(None)
    assert not contributes_in_the_clear(secagg.Phase.SHARE_KEYS)
    assert not contributes_in_the_clear(secagg.Phase.MASKED_INPUT)
    assert contributes_in_the_clear(secagg.Phase.UNMASK)


def test_too_many_dropouts_release_nothing():
    """Beyond the threshold no mean is returned."""
    updates = _updates(5, 10, seed=2)
    with pytest.raises(secagg.ThresholdNotMet):
        secure_weighted_mean(
            updates,
            max_weight=1000,
            clip=1.0,
            dropouts={u: secagg.Phase.SHARE_KEYS for u in (1, 2, 3)},
        )
