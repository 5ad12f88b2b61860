"""The privacy ledger: monotone epsilon, JSON round trip, and refusal of edited files."""

import json
import math

import pytest

from dp.accounting import AccountantKind, PoissonSampledEvent, RdpAccountant
from dp.errors import DPError
from dp.ledger import ClientLevelEntry, CountEntry, PrivacyLedger, PrivacyLevel, SampleLevelEntry


def _ledger_with_rounds(rounds, accountant=AccountantKind.RDP):
    ledger = PrivacyLedger(level=PrivacyLevel.SAMPLE, delta=1e-5, accountant=accountant)
    for r in range(1, rounds + 1):
        for client in (1, 2):
            ledger.record_sample(SampleLevelEntry(r, client, 0.1 * client, 1.5, 20, 1.0))
        ledger.close_round()
    return ledger


def test_epsilon_is_monotone_in_rounds():
    """Each round adds privacy loss; the ledger never reports a smaller epsilon later."""
    ledger = _ledger_with_rounds(6)
    assert ledger.epsilons == sorted(ledger.epsilons)
    assert ledger.epsilons[0] > 0


def test_worst_client_is_reported():
    """At sample level the run's epsilon is the largest client epsilon."""
    ledger = _ledger_with_rounds(3)
    assert (
        ledger.epsilon()
        == max(ledger.client_epsilon(1), ledger.client_epsilon(2))
        == ledger.client_epsilon(2)
    )


def test_round_trip_through_json():
    """from_json(to_json()) restores entries and epsilons exactly (resume keeps spent budget)."""
    ledger = _ledger_with_rounds(4)
    restored = PrivacyLedger.from_json(ledger.to_json())
    assert restored.epsilons == ledger.epsilons
    assert restored.sample_entries == ledger.sample_entries
    assert restored.epsilon() == pytest.approx(ledger.epsilon())


def test_prospective_entries_do_not_change_the_ledger():
    """Asking what a round would cost does not record it."""
    ledger = _ledger_with_rounds(2)
    before = ledger.epsilon()
    extra = (SampleLevelEntry(3, 1, 0.5, 1.0, 50, 1.0),)
    assert ledger.epsilon(extra=extra) > before
    assert ledger.epsilon() == before


def test_corrupted_ledger_is_refused():
    """A ledger that does not parse is a DPError, not a silent reset of the budget."""
    with pytest.raises(DPError):
        PrivacyLedger.from_json('{"level": "sample"}')


def _client_entry(round_index, participants, *, rate=0.2, distance=0.0):
    return ClientLevelEntry(
        round=round_index,
        mechanism="skellam",
        client_sampling_rate=rate,
        l1_sensitivity=400.0,
        l2_sensitivity=40.0,
        variance=1600.0 * 4,
        local_sigma=0.0,
        noise_shares=5,
        dimension=64,
        l2_clip=1.0,
        wrap_probability=0.0,
        threshold=6,
        corrupt=1,
        participants=participants,
        sampler_distance=distance,
    )


def test_client_level_ledger_reports_observer_and_server_epsilons():
    """Against observers each round is Poisson-subsampled (Zhu & Wang 2019); against the server,
    who sees the cohorts, the worst client composes its own rounds without amplification:
    client 1 took part in 3 of 4 rounds, so the server epsilon is 3 unsampled rounds."""
    ledger = PrivacyLedger(level=PrivacyLevel.CLIENT, delta=1e-5)
    for r, participants in enumerate([(1, 2), (1, 3), (1,), (2, 3)], start=1):
        ledger.record_client(_client_entry(r, participants))
        ledger.close_round()
    report = ledger.spent()
    inner = _client_entry(1, ()).inner_event()
    assert report.server == pytest.approx(RdpAccountant().compose(inner, 3).get_epsilon(1e-5))
    observer = RdpAccountant().compose(PoissonSampledEvent(0.2, inner), 4).get_epsilon(1e-5)
    assert report.observer == pytest.approx(observer)
    assert report.headline == report.server > report.observer
    assert ledger.epsilons[-1] == report.server and ledger.observer_epsilons[-1] == observer
    assert {c: sum(n.values()) for c, n in ledger.participations().items()} == {1: 3, 2: 2, 3: 2}


def test_rounds_without_recorded_participants_count_for_every_client():
    """A ledger that does not know who took part (an older file, another engine) assumes the
    worst: every client took part in every such round."""
    ledger = PrivacyLedger(level=PrivacyLevel.CLIENT, delta=1e-5)
    for r in range(1, 4):
        ledger.record_client(_client_entry(r, ()))
    inner = _client_entry(1, ()).inner_event()
    assert ledger.spent().server == pytest.approx(
        RdpAccountant().compose(inner, 3).get_epsilon(1e-5)
    )


def test_sampler_distance_is_added_to_delta():
    """A noise sampler within total-variation distance d of the analysed law makes an
    (eps, delta) mechanism (eps, delta + (1 + e^eps) d): the ledger states that delta."""
    ledger = PrivacyLedger(level=PrivacyLevel.CLIENT, delta=1e-5)
    ledger.record_client(_client_entry(1, (1,), distance=1e-20))
    ledger.record_client(_client_entry(2, (1,), distance=2e-20))
    report = ledger.spent()
    assert report.delta == pytest.approx(1e-5 + (1 + math.exp(report.headline)) * 3e-20)
    assert json.loads(ledger.to_json())["delta_with_samplers"] == report.delta


def test_a_record_count_is_released_once_and_charged():
    """The noisy record count is a Gaussian mechanism of sensitivity 1 (CKS 2020, Thm. 4),
    charged once in the client's epsilon; releasing it twice is refused."""
    ledger = _ledger_with_rounds(2)
    before = ledger.client_epsilon(1)
    ledger.record_count(CountEntry(1, 120, 16.0))
    assert ledger.client_epsilon(1) > before
    assert ledger.client_epsilon(2) == pytest.approx(_ledger_with_rounds(2).client_epsilon(2))
    with pytest.raises(DPError, match="already released"):
        ledger.record_count(CountEntry(1, 121, 16.0))


def test_participants_and_counts_survive_the_json_round_trip():
    """Resuming restores who took part and the released counts, so both epsilons continue."""
    ledger = PrivacyLedger(level=PrivacyLevel.CLIENT, delta=1e-5)
    ledger.record_client(_client_entry(1, (3, 1)))
    ledger.close_round()
    restored = PrivacyLedger.from_json(ledger.to_json())
    assert restored.client_entries == ledger.client_entries
    assert restored.spent() == ledger.spent()
    sample = _ledger_with_rounds(1)
    sample.record_count(CountEntry(2, 77, 16.0))
    assert PrivacyLedger.from_json(sample.to_json()).noisy_counts() == {2: 77}
