"""Empirical privacy auditing in one training run (Steinke, Nasr, Jagielski, NeurIPS 2023).

Insert m canaries, each independently with probability 1/2; train once; score every canary
(higher: "looks included"); guess "in" for the highest scores and "out" for the lowest, abstaining
on the rest. Under pure epsilon-DP, the number of correct guesses among r guesses is
stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) (Steinke et al. 2023, Thm. 3 with
delta = 0), so observing many correct guesses refutes small epsilons: the largest epsilon refuted
at confidence 1 - beta is an empirical **lower bound** on the privacy loss.

A lower bound above the claimed epsilon would reveal a bug (in the accounting or in the
mechanism); a lower bound far below it says nothing about the claim's tightness. The bound uses
the delta = 0 form of the theorem: with a claimed delta > 0 the true test allows roughly an
extra m * delta probability of correct guesses, which is small (0.005 for m = 500, delta = 1e-5)
next to beta = 0.05 but not modelled here. This module is pure math; the training experiment is
:func:`fl.core.audit.run_canary_audit`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from dp.errors import PrivacyConfigError

__all__ = [
    "count_correct_guesses",
    "epsilon_lower_bound",
    "guesses_to_refute",
    "max_refutable_epsilon",
]


def count_correct_guesses(
    scores: np.ndarray, included: np.ndarray, *, guesses_in: int, guesses_out: int
) -> tuple[int, int]:
    """Guess "in" for the ``guesses_in`` highest scores and "out" for the ``guesses_out`` lowest.

    Returns:
        (correct guesses, guesses made).
    """
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or guesses_in + guesses_out > scores.size:
        raise PrivacyConfigError("one score per canary, and at most one guess per canary")
    order = np.argsort(scores, kind="stable")
    correct = int(included[order[scores.size - guesses_in :]].sum()) if guesses_in else 0
    correct += int((~included[order[:guesses_out]]).sum())
    return correct, guesses_in + guesses_out


def epsilon_lower_bound(correct: int, guesses: int, *, confidence: float = 0.95) -> float:
    """The largest epsilon refuted by ``correct`` of ``guesses`` at the given confidence.

    Solves ``P[Binomial(guesses, e^eps / (1 + e^eps)) >= correct] = 1 - confidence`` for eps
    (the tail grows with eps); 0 when even eps = 0 is not refuted.
    """
    if not 0 <= correct <= guesses or guesses == 0:
        raise PrivacyConfigError(
            f"need 0 <= correct <= guesses and guesses > 0, got {correct}/{guesses}"
        )
    beta = 1 - confidence

    def tail(epsilon: float) -> float:
        p = 1 / (1 + math.exp(-epsilon))
        return float(stats.binom.sf(correct - 1, guesses, p))

    if tail(0.0) > beta:
        return 0.0
    low, high = 0.0, 1.0
    while tail(high) <= beta:
        low, high = high, 2 * high
        if high > 100:
            return low
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if tail(middle) <= beta else (low, middle)
    return low


def max_refutable_epsilon(guesses: int, *, confidence: float = 0.95) -> float:
    """The largest epsilon an audit with ``guesses`` guesses can refute: the bound when every
    guess is right, ``log(p / (1 - p))`` with ``p = (1 - confidence)^(1 / guesses)``.

    A claim at or above this can never be refuted by that audit, whatever the mechanism does
    (100 guesses: 3.49).
    """
    if guesses < 1:
        raise PrivacyConfigError(f"an audit needs at least one guess, got {guesses}")
    p = (1 - confidence) ** (1 / guesses)
    return math.log(p / (1 - p))


def guesses_to_refute(epsilon: float, *, confidence: float = 0.95, margin: float = 1.0) -> int:
    """The guesses an audit needs so that a perfect attack would refute ``epsilon + margin``:
    about ``log(1 / (1 - confidence)) e^(epsilon + margin)`` (the inverse of
    :func:`max_refutable_epsilon`); it grows exponentially with the claim."""
    if not epsilon > 0:
        raise PrivacyConfigError(f"the claimed epsilon must be positive, got {epsilon}")
    target = epsilon + margin
    # all r guesses right refute eps when p^r <= 1 - confidence with p = e^eps / (1 + e^eps)
    p = 1 / (1 + math.exp(-target))
    return max(1, math.ceil(math.log(1 - confidence) / math.log(p)))
