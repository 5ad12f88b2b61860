"""Default (k, t): the security and correctness rules of Bonawitz et al. 2017 / Bell et al. 2020."""

import math

import pytest

from secagg.parameters import _binomial_tail, recommend_parameters, recommend_threshold


@pytest.mark.parametrize("n", [50, 100, 1000, 10_000])
def test_choice_meets_both_probability_targets(n):
    """Bell et al. 2020 Sec. 4: a random neighbourhood keeps 2t > k+1+c (security) and t live
    holders (correctness) except with the stated probabilities."""
    delta, gamma = 0.1, 0.05
    choice = recommend_parameters(n, dropout_rate=delta, corrupt_fraction=gamma)
    k, t = choice.neighbours, choice.threshold
    assert choice.meets_targets
    if k < n - 1:
        # corrupt neighbours c with 2t <= k + 1 + c, i.e. c >= 2t - k - 1, are rare enough
        assert _binomial_tail(k, gamma, 2 * t - k - 1, k) <= 2**-40 / n
    assert _binomial_tail(k, 1 - delta, 0, t - 1) <= 2**-20 / n


def test_neighbourhoods_grow_slowly_with_n():
    """SecAgg+ neighbourhoods are far smaller than n for large cohorts (logarithmic growth)."""
    small, large = recommend_parameters(1000), recommend_parameters(100_000)
    assert small.neighbours < 1000 // 5
    assert large.neighbours < small.neighbours * 2


def test_small_cohorts_keep_the_security_rule_on_the_complete_graph():
    """When no graph meets the targets, the complete graph still has 2t > n + c, with
    c = ceil(gamma (n - 1)) colluders (t capped at n)."""
    for n in (2, 3, 5, 10, 20):
        choice = recommend_parameters(n)
        c = math.ceil(0.05 * (n - 1))
        assert (choice.neighbours, choice.threshold) == (n - 1, min(n, (n + c) // 2 + 1))
        assert 2 * choice.threshold > n + c or choice.threshold == n
        assert not choice.meets_targets


def test_more_dropouts_need_more_neighbours():
    """A higher expected dropout rate never shrinks the neighbourhood."""
    assert (
        recommend_parameters(500, dropout_rate=0.3).neighbours
        >= recommend_parameters(500).neighbours
    )


def test_threshold_for_a_given_neighbourhood():
    """With k fixed, t follows 2t > k + 1 + c and stays within the k + 1 holders."""
    t = recommend_threshold(1000, 100)
    assert 51 <= t <= 101
    assert recommend_threshold(10, 4) <= 5
    with pytest.raises(ValueError):
        recommend_threshold(10, 10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 1}, "n"),
        ({"n": 10, "dropout_rate": 1.0}, "dropout_rate"),
        ({"n": 10, "corrupt_fraction": 0.5}, "corrupt_fraction"),
    ],
)
def test_bad_arguments(kwargs, field):
    """Out-of-range arguments raise ValueError naming the argument."""
    kwargs = dict(kwargs)  # the parameter is shared between runs: never mutate it
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=field):
        recommend_parameters(n, **kwargs)


def test_binomial_tail_is_a_probability():
    """The tail helper sums to one over the full range and matches a hand value."""
    assert math.isclose(_binomial_tail(10, 0.3, 0, 10), 1.0)
    assert math.isclose(_binomial_tail(2, 0.5, 2, 2), 0.25)
    # an empty range holds no mass (a negative upper end must not wrap around the cached table)
    assert _binomial_tail(10, 0.3, 5, 2) == 0
    assert _binomial_tail(10, 0.3, 3, -2) == 0
