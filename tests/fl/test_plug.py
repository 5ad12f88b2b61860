"""secure_average: the drop-in replacement for a loop's averaging line."""

import numpy as np
import pytest
import torch
from torch import nn

import secagg
from fl.errors import ClippedValuesWarning, InputError
from fl.plug import flatten, secure_average, unflatten


def test_state_dicts_round_trip_with_dtypes_and_integer_buffers():
    """flatten/unflatten keep names, shapes and dtypes; integer buffers are not averaged."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    state = model.state_dict()
    vector, layout = flatten(state)
    assert vector.size == sum(v.numel() for v in state.values() if torch.is_floating_point(v))
    rebuilt = unflatten(vector, layout, state)
    assert set(rebuilt) == set(state)
    assert all(
        torch.equal(rebuilt[k], state[k]) and rebuilt[k].dtype == state[k].dtype for k in state
    )


def test_secure_average_equals_the_weighted_mean_within_the_bound():
    """The result equals sum w_k u_k / sum w_k within 2^-16, for state dicts and for tensors."""
    generator = torch.Generator().manual_seed(0)
    updates = [
        {"a": torch.randn(4, 3, generator=generator), "b": torch.randn(5, generator=generator)}
        for _ in range(5)
    ]
    weights = [3, 1, 4, 1, 5]
    mean = secure_average(updates, weights=weights)
    for key in ("a", "b"):
        exact = sum(w * u[key] for u, w in zip(updates, weights, strict=True)) / sum(weights)
        assert torch.max(torch.abs(mean[key] - exact)) < 2**-16
    tensors = [u["b"] for u in updates]
    assert torch.allclose(secure_average(tensors), torch.stack(tensors).mean(0), atol=2**-16)


def test_dropouts_leave_those_clients_out():
    """A client dropping before its masked input is not in the mean."""
    updates = [torch.full((3,), i / 2) for i in range(6)]
    mean = secure_average(updates, dropouts={5: secagg.Phase.SHARE_KEYS})
    assert torch.allclose(mean, torch.full((3,), 1.0), atol=1e-4)


def test_bad_inputs():
    """Mismatched layouts or weights, and single clients, are clear errors."""
    with pytest.raises(ValueError, match="same names"):
        secure_average([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])
    with pytest.raises(ValueError, match="weights"):
        secure_average([torch.zeros(2), torch.zeros(2)], weights=[1])
    with pytest.raises(ValueError, match="at least 2"):
        secure_average([torch.zeros(2)])


def test_secure_average_with_fractional_weights_is_refused_with_the_value():
    """Weights [1.5, 2.9, 1] were truncated to [1, 2, 1], returning a wrong mean silently: now
    an error naming weights[0] = 1.5 and the fix (scale to integers). Whole-number floats and
    numpy/torch integer scalars are exact."""
    updates = [torch.zeros(2), torch.ones(2), torch.ones(2), torch.zeros(2), torch.zeros(2)]
    with pytest.raises(InputError, match=r"weights\[0\] = 1\.5 is not a whole number"):
        secure_average(updates, weights=[1.5, 2.9, 1, 1, 1])
    exact = secure_average(updates, weights=[3, 2, 1, 1, 1])
    for weights in ([3.0, 2.0, 1.0, 1.0, 1.0], [np.int64(3), torch.tensor(2), 1, 1, 1]):
        assert torch.allclose(secure_average(updates, weights=weights), exact, atol=2**-16)
    assert torch.allclose(exact, torch.full((2,), 3 / 8), atol=2**-16)


def test_secure_average_of_whole_models_is_refused_or_clipped_with_a_count():
    """Values beyond the range (whole models, 10/20/30) came back clipped to 4.0 silently: now
    refused without clip=, naming the update and the largest value; with an explicit clip=
    they are clipped and a warning counts them."""
    updates = [torch.full((2,), v) for v in (10.0, 20.0, 30.0, 1.0, 1.0)]
    with pytest.raises(InputError, match=r"updates\[0\] has 2 values outside \[-4, 4\]"):
        secure_average(updates)
    with pytest.warns(ClippedValuesWarning, match="clipped 6 of 10 values, from 3 of 5 clients"):
        mean = secure_average(updates, clip=5.0)
    assert torch.allclose(mean, torch.full((2,), 17 / 5), atol=1e-3)
    assert torch.allclose(secure_average(updates, clip=30.0), torch.full((2,), 62 / 5), atol=1e-3)


@pytest.mark.parametrize(
    ("weight", "error", "message"),
    [
        (0.5, InputError, r"weights\[1\] = 0\.5 is not a whole number"),
        (float("nan"), InputError, r"weights\[1\] = nan is not a finite number"),
        (float("inf"), InputError, r"weights\[1\] = inf is not a finite number"),
        (0, InputError, r"weights\[1\] = 0 must be at least 1"),
        (-3, InputError, r"weights\[1\] = -3 must be at least 1"),
        ("3", TypeError, r"weights\[1\] = '3' is not a number"),
        (True, TypeError, r"weights\[1\] = True is not a number"),
        (20, InputError, r"weights\[1\] = 20 exceeds max_weight = 10"),
    ],
)
def test_secure_average_bad_weights_name_the_real_value(weight, error, message):
    """Weight 0.5 was reported as "got 0" with the advice "raise max_weight", a NaN weight
    raised a bare ValueError: each bad weight now gets its own message with its real value."""
    updates = [torch.zeros(2) for _ in range(5)]
    with pytest.raises(error, match=message):
        secure_average(updates, weights=[1, weight, 1, 1, 1], max_weight=10)


def test_secure_average_refuses_non_finite_values_and_bad_dropout_indices():
    """A diverged client's NaN update, or a dropout index outside the updates, is an error."""
    updates = [torch.zeros(2) for _ in range(5)]
    with pytest.raises(InputError, match=r"updates\[2\] holds 1 NaN"):
        secure_average([*updates[:2], torch.tensor([0.0, float("nan")]), *updates[3:]])
    with pytest.raises(InputError, match="dropouts names client 5"):
        secure_average(updates, dropouts={5: secagg.Phase.SHARE_KEYS})


def test_averaging_fewer_clients_than_the_policy_allows_is_refused():
    """A user averaging three clients gets the clients' floor in the error, and can lower it
    explicitly (the clients' choice, never a silent default)."""
    updates = [torch.full((3,), float(v)) for v in (1, 2, 3)]
    with pytest.raises(secagg.PolicyViolation, match="cohort of 3 clients is below"):
        secure_average(updates)
    mean = secure_average(updates, policy=secagg.ClientPolicy(min_clients=3))
    assert torch.allclose(mean, torch.full((3,), 2.0), atol=2**-16)
