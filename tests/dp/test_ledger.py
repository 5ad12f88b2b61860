"""The privacy ledger: monotone epsilon, JSON round trip, and refusal of edited files."""

import pytest

from dp.accounting import AccountantKind
from dp.errors import DPError
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry


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
