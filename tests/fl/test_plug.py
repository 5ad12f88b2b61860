"""secure_average: the drop-in replacement for a loop's averaging line."""

import pytest
import torch
from torch import nn

import secagg
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
    updates = [torch.full((3,), float(i)) for i in range(6)]
    mean = secure_average(updates, dropouts={5: secagg.Phase.SHARE_KEYS})
    assert torch.allclose(mean, torch.full((3,), 2.0), atol=1e-4)


def test_bad_inputs():
    """Mismatched layouts or weights, and single clients, are clear errors."""
    with pytest.raises(ValueError, match="same names"):
        secure_average([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])
    with pytest.raises(ValueError, match="weights"):
        secure_average([torch.zeros(2), torch.zeros(2)], weights=[1])
    with pytest.raises(ValueError, match="at least 2"):
        secure_average([torch.zeros(2)])
