"""Central DP (trusted aggregator for the noise only): the clients clip, the server adds the
Gaussian noise once to the unmasked sum; the ledger against Opacus' accountants."""

import json
import math

import numpy as np
import pytest
from scipy import stats

import secagg
from dp.accounting import AccountantKind
from dp.ledger import CentralEntry, PrivacyLedger, PrivacyLevel
from fl.core import central as central_module
from fl.core.aggregation import ClientUpdate
from fl.core.central import (
    CentralPlan,
    central_encoder,
    central_noisy_mean,
    central_sensitivity,
    plan_central,
)
from fl.core.config import RunConfig
from fl.engines.inprocess import run_federation
from secagg.randomness import DeterministicRandom
from secagg.ring import to_signed

CASES = [(0.1, 1.1, 50), (0.01, 0.8, 500), (1.0, 5.0, 10), (0.2, 2.0, 100)]


def _ledger(q, z, rounds, accountant=AccountantKind.RDP):
    ledger = PrivacyLedger(level=PrivacyLevel.CENTRAL, delta=1e-5, accountant=accountant)
    for index in range(rounds):
        ledger.record_central(CentralEntry(index + 1, q, z, 65_599.2, participants=(1, 2)))
    return ledger


@pytest.mark.parametrize(("q", "z", "rounds"), CASES)
def test_central_ledger_equals_opacus_rdp(q, z, rounds):
    """R rounds of central DP are R Poisson-sampled Gaussians: the ledger's epsilon equals
    Opacus' RDPAccountant on the same (z, q, R) (relative 1e-9); no guarantee holds against
    the server, and the headline is the observers' epsilon."""
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = [(z, q, rounds)]
    report = _ledger(q, z, rounds).spent()
    assert report.observer == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert math.isinf(report.server) and report.trusted_server
    assert report.headline == report.observer


@pytest.mark.parametrize(("q", "z", "rounds"), CASES[:2])
def test_central_ledger_with_prv_is_close_to_opacus_prv(q, z, rounds):
    """With the PRV accountant the ledger is within 0.02 of Opacus' PRVAccountant."""
    from opacus.accountants import PRVAccountant

    reference = PRVAccountant()
    reference.history = [(z, q, rounds)]
    with np.errstate(divide="ignore"):
        expected = reference.get_epsilon(1e-5)
    ours = _ledger(q, z, rounds, AccountantKind.PRV).epsilon()
    assert ours == pytest.approx(expected, abs=0.02)


def test_central_ledger_round_trips_through_json():
    """privacy.json holds the central entries (epsilon against the server as null) and restores
    to the same epsilon."""
    ledger = _ledger(0.1, 1.1, 5)
    ledger.close_round()
    document = json.loads(ledger.to_json())
    assert document["epsilon_against_server"] is None and document["trusted_server"] is True
    assert len(document["central_entries"]) == 5
    restored = PrivacyLedger.from_json(ledger.to_json())
    assert restored.epsilon() == ledger.epsilon()


def test_calibration_meets_the_target_over_the_run():
    """The calibrated noise multiplier spends at most the target over training.rounds rounds,
    and only just (a 2% smaller multiplier would overspend)."""
    config = RunConfig().with_overrides(
        {
            "privacy.level": "central",
            "privacy.epsilon": 3.0,
            "training.clients": 200,
            "training.per_round": 20,
            "training.rounds": 40,
        }
    )
    plan = plan_central(config, dimension=1000)
    spent = _ledger(0.1, plan.noise_multiplier, 40).epsilon()
    assert spent <= 3.0 and spent > 2.9
    assert _ledger(0.1, 0.98 * plan.noise_multiplier, 40).epsilon() > 3.0
    assert plan.sensitivity == central_sensitivity(clip=1.0, precision_bits=16, dimension=1000)


def _updates(count, dimension, scale=3.0, seed=0):
    generator = np.random.default_rng(seed)
    return {
        u: ClientUpdate(generator.normal(0, scale, dimension), weight=100 + u)
        for u in range(1, count + 1)
    }


def _plan(z=0.5, clients=40, rate=0.25, dimension=4000, p=16):
    return CentralPlan(
        sampling_rate=rate,
        noise_multiplier=z,
        sensitivity=central_sensitivity(clip=1.0, precision_bits=p, dimension=dimension),
        clients=clients,
        precision_bits=p,
    )


@pytest.mark.parametrize("dropped", [0, 3])
def test_clients_send_clipped_updates_and_the_server_adds_the_noise_once(monkeypatch, dropped):
    """What each client encodes is its update clipped to L2 norm C, weight 1, with no noise;
    the server draws the noise once per round (one call, d values, std z Delta), whatever the
    dropouts; the released mean is (exact sum + that noise) / (q N 2^p)."""
    dimension, cohort = 4000, 10
    plan = _plan(dimension=dimension)
    updates = _updates(cohort, dimension)
    seen, draws = {}, []
    real_aggregate, real_sampler = secagg.aggregate, central_module.sample_discrete_gaussian

    def spy_aggregate(inputs, **kwargs):
        seen.update(inputs)
        return real_aggregate(inputs, **kwargs)

    def spy_sampler(sigma, count, source):
        draws.append((sigma, count))
        noise = real_sampler(sigma, count, source)
        spy_sampler.noise = noise
        return noise

    monkeypatch.setattr(secagg, "aggregate", spy_aggregate)
    monkeypatch.setattr(central_module, "sample_discrete_gaussian", spy_sampler)
    dropouts = {u: secagg.Phase.SHARE_KEYS for u in range(1, dropped + 1)}
    outcome = central_noisy_mean(
        updates,
        plan=plan,
        clip=1.0,
        secure=True,
        rounding_random=lambda u: DeterministicRandom(f"r{u}".encode()),
        noise_random=DeterministicRandom(b"noise"),
        dropouts=dropouts,
    )
    encoder = central_encoder(cohort=cohort, clip=1.0, precision_bits=16)
    for client, vector in seen.items():
        signed = to_signed(np.asarray(vector), encoder.ring_bits)
        assert signed[0] == 1  # every client counts once
        clipped = updates[client].vector / np.linalg.norm(updates[client].vector)
        assert np.max(np.abs(signed[1:] / 2.0**16 - clipped)) <= 2.0**-16
    assert draws == [(pytest.approx(plan.noise_std), dimension)]
    contributors = sorted(outcome.contributors)
    assert contributors == list(range(dropped + 1, cohort + 1))
    exact = sum(to_signed(np.asarray(seen[u]), encoder.ring_bits)[1:] for u in contributors)
    released = outcome.mean * plan.denominator * 2.0**16
    assert np.array_equal(np.round(released).astype(np.int64), exact + spy_sampler.noise)


def test_the_servers_noise_has_the_calibrated_variance():
    """The released sum minus the exact sum, over 4,000 coordinates and 5 rounds, has mean 0
    and variance (z Delta)^2 (chi-square and normal bounds at 1e-6), for the clipped sum of
    whichever clients contributed; the same with secure aggregation off."""
    dimension, cohort = 4000, 6
    plan = _plan(z=0.8, dimension=dimension)
    updates = _updates(cohort, dimension, scale=0.01)  # below the clip: nothing is scaled
    residuals = []
    for round_index, secure in enumerate([True, True, True, False, False]):
        outcome = central_noisy_mean(
            updates,
            plan=plan,
            clip=1.0,
            secure=secure,
            rounding_random=lambda u, r=round_index: DeterministicRandom(f"{r}/{u}".encode()),
        )
        exact = sum(u.vector for u in updates.values()) * 2.0**16
        residuals.append(outcome.mean * plan.denominator * 2.0**16 - exact)
    noise = np.concatenate(residuals)
    # stochastic rounding adds at most 1 per client and coordinate: negligible beside z Delta
    count, sigma = noise.size, plan.noise_std
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(count)
    ratio = noise.var(ddof=1) / sigma**2
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], count - 1) / (count - 1)
    assert low < ratio < high


def test_a_central_run_charges_one_sampled_gaussian_per_released_round(tmp_path):
    """`--dp central --epsilon 4`: Poisson cohorts, one ledger entry per released round naming
    its contributors, rate q = cohort / clients, the plan's noise multiplier; the final epsilon
    is at most the target, and the summary states that the server is trusted."""
    config = RunConfig().with_overrides(
        {
            "privacy.level": "central",
            "privacy.epsilon": 4.0,
            "training.clients": 40,
            "training.per_round": 10,
            "training.rounds": 3,
            "training.local_epochs": 1,
            "out": str(tmp_path / "central"),
        }
    )
    result = run_federation(config)
    ledger = PrivacyLedger.from_json((result.out / "privacy.json").read_text())
    released = [m for m in result.history if not m.failed]
    assert len(ledger.central_entries) == len(released) >= 1
    for entry, metrics in zip(ledger.central_entries, released, strict=True):
        assert entry.client_sampling_rate == 0.25
        assert len(entry.participants) == metrics.sampled - metrics.dropped
    assert result.summary["epsilon"] <= 4.0 + 1e-9
    assert result.summary["privacy_level"] == "central"
    assert math.isinf(result.summary["epsilon_against_server"])  # no guarantee against it
    on_disk = json.loads((result.out / "summary.json").read_text())
    assert on_disk["epsilon_against_server"] is None  # strict JSON


def test_central_level_takes_the_sweeps_and_the_clis_level(tmp_path):
    """`privagg sweep --level client,central` plans both levels, one shared non-private
    reference, each level in its own folder."""
    from fl.cli.sweep import plan_sweep

    base = RunConfig().with_overrides({"training.clients": 20, "training.per_round": 10})
    points = plan_sweep(
        base,
        epsilons=[1.0, 4.0, math.inf],
        level=[PrivacyLevel.CLIENT, PrivacyLevel.CENTRAL],
        seeds=2,
        out=tmp_path,
    )
    assert len(points) == 2 + 2 * 2 * 2
    assert {p.level for p in points} == {"none", "client", "central"}
    assert all(f"/{p.level}/eps-" in p.folder for p in points if p.level != "none")
    assert [p.folder for p in points if p.level == "none"] == [
        str(tmp_path / "eps-inf" / "seed-0"),
        str(tmp_path / "eps-inf" / "seed-1"),
    ]
