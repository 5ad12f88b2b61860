"""Fixed-point encoding of weighted updates: the quantisation bound, unbiasedness, no wrap-around."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import secagg
from secagg import ConfigurationError, InvalidInput
from secagg.encoding import FixedPointEncoder, stochastic_round, uniform_floats
from secagg.randomness import DeterministicRandom

floats = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    clients=st.integers(2, 6),
    length=st.integers(1, 20),
    precision=st.integers(4, 24),
    data=st.data(),
)
def test_secure_sum_decodes_to_the_weighted_mean_within_the_bound(clients, length, precision, data):
    """FixedPointEncoder docstring bound: |decode(sum) - sum w x / sum w| < 2^-p elementwise,
    through the real secure-aggregation protocol."""
    encoder = FixedPointEncoder(
        num_clients=clients, max_weight=50, clip=3.0, precision_bits=precision
    )
    updates = [
        np.array(data.draw(st.lists(floats, min_size=length, max_size=length)))
        for _ in range(clients)
    ]
    weights = [data.draw(st.integers(1, 50)) for _ in range(clients)]
    encoded = {
        u + 1: encoder.encode(x, weight=w, random_bytes=DeterministicRandom(u))
        for u, (x, w) in enumerate(zip(updates, weights, strict=True))
    }
    result = secagg.aggregate(
        encoded,
        policy=secagg.ClientPolicy.permissive(),
        ring_bits=encoder.ring_bits,
        input_bound=encoder.entry_bound,
    )
    clipped = [np.clip(x, -3.0, 3.0) for x in updates]
    exact = sum(w * x for w, x in zip(weights, clipped, strict=True)) / sum(weights)
    assert np.all(np.abs(encoder.decode(result.total) - exact) < encoder.error_bound)
    assert encoder.decode_weight(result.total) == sum(weights)


def test_stochastic_rounding_is_unbiased():
    """E[SR(v)] = v: the mean of 200,000 roundings of 0.3 lies within 5 standard errors."""
    values = np.full(200_000, 0.3)
    rounded = stochastic_round(values, DeterministicRandom(1))
    standard_error = np.sqrt(0.3 * 0.7 / values.size)
    assert abs(rounded.mean() - 0.3) < 5 * standard_error
    assert set(np.unique(rounded)) <= {0, 1}


def test_stochastic_rounding_stays_within_one():
    """Every rounded value is the floor or the ceiling of its input."""
    values = np.linspace(-5, 5, 1001)
    rounded = stochastic_round(values, DeterministicRandom(2))
    assert np.all((rounded == np.floor(values)) | (rounded == np.ceil(values)))


def test_uniform_floats_are_in_the_unit_interval():
    """53-bit floats in [0, 1), mean about 1/2."""
    draws = uniform_floats(100_000, DeterministicRandom(3))
    assert draws.min() >= 0 and draws.max() < 1
    assert abs(draws.mean() - 0.5) < 0.01


def test_l2_clipping_bounds_the_norm():
    """With l2_clip = C the encoded update has L2 norm at most C (up to quantisation)."""
    encoder = FixedPointEncoder(
        num_clients=1, max_weight=1, clip=10.0, precision_bits=20, l2_clip=1.0
    )
    update = np.full(100, 3.0)
    decoded = encoder.decode(encoder.encode(update, weight=1))
    assert np.linalg.norm(decoded) <= 1.0 + 100 * encoder.error_bound


@pytest.mark.parametrize("weight", [0, 11, -1, 2.5, True])
def test_weights_outside_the_bound_are_errors(weight):
    """Weights above max_weight are refused, never clipped silently."""
    encoder = FixedPointEncoder(num_clients=2, max_weight=10, clip=1.0, precision_bits=8)
    with pytest.raises(InvalidInput, match="max_weight"):
        encoder.encode(np.zeros(3), weight=weight)


def test_non_finite_updates_are_errors():
    """NaN or infinity in an update is a clear error, not garbage in the sum."""
    encoder = FixedPointEncoder(num_clients=2, max_weight=10, clip=1.0, precision_bits=8)
    with pytest.raises(InvalidInput, match="NaN"):
        encoder.encode(np.array([0.0, np.nan]), weight=1)


def test_configurations_that_could_wrap_are_refused_with_fixes():
    """n * W * Q beyond the signed ring: refused, and each suggested fix works."""
    with pytest.raises(ConfigurationError) as error:
        FixedPointEncoder(
            num_clients=100, max_weight=1000, clip=4.0, precision_bits=16, ring_bits=32
        )
    message = str(error.value)
    precision = int(message.split("precision_bits <= ")[1].split()[0])
    FixedPointEncoder(
        num_clients=100, max_weight=1000, clip=4.0, precision_bits=precision, ring_bits=32
    )
    assert "ring_bits >= " in message and "max_weight <= " in message
    bits = FixedPointEncoder.required_ring_bits(100, 1000, 4.0, 16)
    FixedPointEncoder(num_clients=100, max_weight=1000, clip=4.0, precision_bits=16, ring_bits=bits)


def test_extreme_values_do_not_wrap():
    """All clients at the clip bound with the maximal weight decode exactly to the bound."""
    encoder = FixedPointEncoder(
        num_clients=4,
        max_weight=7,
        clip=2.0,
        precision_bits=10,
        ring_bits=FixedPointEncoder.required_ring_bits(4, 7, 2.0, 10),
    )
    total = sum(encoder.encode(np.array([5.0, -5.0]), weight=7) for _ in range(4)) & np.uint64(
        encoder.ring_mask
    )
    assert encoder.decode(total).tolist() == [2.0, -2.0]
