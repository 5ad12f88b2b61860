"""The one-run privacy audits (Steinke, Nasr, Jagielski 2023) at both levels: each check of a
claim passes with DP on and fails with DP off (the audit has the power to refute the claim),
and the audit is sized so that it can refute the claim at all."""

import math

import pytest

from dp.audit import (
    count_correct_guesses,
    epsilon_lower_bound,
    guesses_to_refute,
    max_refutable_epsilon,
)
from dp.errors import PrivacyConfigError
from fl.core.audit import MAX_SAMPLE_CANARIES, audit_size, run_canary_audit, run_client_canary_audit
from fl.core.config import RunConfig


def _claim_holds(result) -> bool:
    """The check an audit makes of a claim: its lower bound stays at or below the claim."""
    return result.lower_bound <= result.claimed_epsilon


def test_sample_level_audit_holds_with_dp_and_refutes_the_claim_without_it():
    """DP-SGD calibrated to epsilon 2 with 500 canary records: the lower bound stays below 2;
    the same audit trained without DP refutes 2 (the check fails, as it must). Seeded
    replay; a few seconds."""
    sizes = {"base_examples": 300, "epochs": 15, "seed": 3}
    private = run_canary_audit(epsilon=2.0, **sizes)
    assert private.noise_multiplier > 0 and private.refutable
    assert _claim_holds(private)
    open_model = run_canary_audit(epsilon=None, **sizes)
    assert open_model.lower_bound > private.claimed_epsilon  # the check would fail


@pytest.mark.parametrize("claim", [2.0, 4.0])
def test_client_level_audit_holds_with_dp_and_refutes_the_claim_without_it(claim):
    """`privagg audit` on a client-level config: canary clients (orthonormal updates of norm C,
    zero updates for the excluded ones) go through the client-level mechanism calibrated to the
    claim; the lower bound stays below it. Without noise the same canaries refute the claim,
    including epsilon 4, which the former 100-guess audit could never refute (3.49 at most)."""
    config = RunConfig().with_overrides(
        {"privacy.level": "client", "privacy.epsilon": claim, "training.rounds": 3}
    )
    private = run_client_canary_audit(config, dimension=2048, seed=1)
    assert private.level == "client" and private.noise_multiplier > 0
    assert private.claimed_epsilon == pytest.approx(claim, rel=1e-3)
    assert private.refutable and _claim_holds(private)
    open_run = run_client_canary_audit(config, dp=False, dimension=2048, seed=1)
    assert open_run.correct == open_run.guesses  # orthogonal canaries: told apart exactly
    assert open_run.lower_bound > private.claimed_epsilon  # the check would fail


def test_audit_size_grows_with_the_claim_and_says_when_it_cannot_refute():
    """r guesses refute at most log(p / (1 - p)), p = 0.05^(1/r) (3.49 for 100); the audit sizes
    itself so that a perfect attack refutes the claim plus one, e^eps times more guesses, and
    beyond its cap (2,000 records at sample level) it reports that the claim is out of reach."""
    assert max_refutable_epsilon(100) == pytest.approx(3.4929, abs=1e-4)
    for claim in (1.0, 2.0, 4.0, 8.0):
        guesses = guesses_to_refute(claim)
        assert max_refutable_epsilon(guesses) >= claim + 1 - 1e-9
        assert max_refutable_epsilon(guesses - 1) < claim + 1
    assert guesses_to_refute(8.0) > 100 * guesses_to_refute(2.0)
    canaries = audit_size(8.0, guess_fraction=0.2, confidence=0.95, largest=MAX_SAMPLE_CANARIES)
    assert canaries == MAX_SAMPLE_CANARIES
    assert max_refutable_epsilon(round(0.2 * canaries)) < 8.0


def test_privagg_audit_of_a_client_level_config_audits_canary_clients():
    """The report audits the configuration it is given: a client-level config runs the
    client-level canary audit (not a non-DP model), reports its progress, and states how much
    the audit can refute."""
    from fl.cli.audit_report import build_report, render_markdown

    config = RunConfig().with_overrides(
        {"privacy.level": "client", "privacy.epsilon": 3.0, "training.rounds": 3}
    )
    seen = []
    report = build_report(
        config, run_tests=False, audit_seed=2, progress=lambda *step: seen.append(step)
    )
    audit = report["empirical_audit"]
    assert audit["level"] == "client" and audit["noise_multiplier"] > 0
    assert audit["claimed_epsilon"] == pytest.approx(3.0, rel=1e-3)
    assert ("empirical audit", 3, 3) in seen
    text = render_markdown(report)
    assert "canary clients" in text and "can refute at most epsilon" in text


def test_bound_follows_the_binomial_test():
    """All r guesses right refutes eps with p(eps)^r <= beta; half right refutes nothing."""
    bound = epsilon_lower_bound(100, 100, confidence=0.95)
    p = 0.05 ** (1 / 100)
    assert bound == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    assert epsilon_lower_bound(50, 100) == 0.0
    assert epsilon_lower_bound(90, 100) < epsilon_lower_bound(99, 100)


def test_guessing_uses_the_extremes():
    """'In' for the highest scores, 'out' for the lowest."""
    scores = [0.1, 0.9, 0.5, 0.2, 0.8]
    included = [False, True, True, False, False]
    assert count_correct_guesses(scores, included, guesses_in=1, guesses_out=2) == (3, 3)
    with pytest.raises(PrivacyConfigError):
        count_correct_guesses(scores, included, guesses_in=4, guesses_out=4)
