"""The one-run privacy audit (Steinke, Nasr, Jagielski 2023): below the claim with DP, clearly
above zero without it (the audit has power)."""

import pytest

from dp.audit import count_correct_guesses, epsilon_lower_bound
from dp.errors import PrivacyConfigError
from fl.audit import run_canary_audit


def test_lower_bound_stays_below_the_claimed_epsilon():
    """DP-SGD calibrated to epsilon = 4: the empirical lower bound (95% confidence) is below 4."""
    result = run_canary_audit(epsilon=4.0, seed=3)
    assert result.noise_multiplier > 0
    assert result.lower_bound < 4.0


def test_audit_has_power_without_dp():
    """Without DP the canaries are memorised: the audit refutes every epsilon below 1.5."""
    result = run_canary_audit(epsilon=None, seed=3)
    assert result.lower_bound > 1.5
    assert result.correct > 0.9 * result.guesses


def test_bound_follows_the_binomial_test():
    """All r guesses right refutes eps with p(eps)^r <= beta; half right refutes nothing."""
    bound = epsilon_lower_bound(100, 100, confidence=0.95)
    p = 0.05 ** (1 / 100)
    assert bound == pytest.approx(__import__("math").log(p / (1 - p)), abs=1e-6)
    assert epsilon_lower_bound(50, 100) == 0.0
    assert epsilon_lower_bound(90, 100) < epsilon_lower_bound(99, 100)


def test_guessing_uses_the_extremes():
    """'In' for the highest scores, 'out' for the lowest."""
    scores = [0.1, 0.9, 0.5, 0.2, 0.8]
    included = [False, True, True, False, False]
    assert count_correct_guesses(scores, included, guesses_in=1, guesses_out=2) == (3, 3)
    with pytest.raises(PrivacyConfigError):
        count_correct_guesses(scores, included, guesses_in=4, guesses_out=4)
