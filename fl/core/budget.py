"""The privacy budget as a contract: a run's noise is calibrated once, for the target epsilon over
the rounds asked for when it started, and never recalibrated. Training past those rounds would
spend more than the target; it is refused unless asked for explicitly, with the epsilon it
would reach.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dp.ledger import ClientLevelEntry, PrivacyLedger, SampleLevelEntry
from fl.core.config import RunConfig
from fl.errors import BudgetError

__all__ = ["check_extension", "epsilon_spent", "projected_epsilon"]

Entry = SampleLevelEntry | ClientLevelEntry


def epsilon_spent(ledger: PrivacyLedger | None) -> float | None:
    """The epsilon a run has actually spent so far (None without DP).

    The one place that reads it from the ledger, for the header, ``summary.json`` and
    ``config.toml``.
    """
    return None if ledger is None else ledger.epsilon()


def projected_epsilon(
    ledger: PrivacyLedger, round_entries: Callable[[int], Sequence[Entry]], *, start: int, stop: int
) -> float:
    """The epsilon after rounds ``start..stop-1`` (0-based) if each releases its sum.

    Args:
        ledger: what the run has spent so far.
        round_entries: the ledger entries one round would add, by 0-based round index.
        start, stop: the rounds still to run.
    """
    extra = tuple(entry for r in range(start, stop) for entry in round_entries(r))
    return ledger.epsilon(extra=extra)


def check_extension(
    config: RunConfig,
    *,
    out: Path,
    calibrated_rounds: int,
    projected: float,
    allow_overspend: bool,
) -> None:
    """Refuse rounds past the ones the noise was calibrated for, when they would pass the target.

    The ``--max-epsilon`` path is always open: with a budget set, the run stops before a round
    could pass it, whatever the rounds asked for.

    Args:
        config: the resumed run's configuration (``training.rounds`` the rounds now asked for).
        out: the run's folder, for the message.
        calibrated_rounds: the rounds the noise was calibrated for when the run started.
        projected: the epsilon after ``training.rounds`` rounds (:func:`projected_epsilon`).
        allow_overspend: the user accepts spending past the target.

    Raises:
        BudgetError: the extra rounds would spend more than the target epsilon.
    """
    privacy, rounds = config.privacy, config.training.rounds
    target = privacy.epsilon
    if (
        target is None
        or rounds <= calibrated_rounds
        or allow_overspend
        or privacy.max_epsilon is not None
        or projected <= target * (1 + 1e-9)
    ):
        return
    raise BudgetError(
        f"{out}: --rounds {rounds} would spend epsilon {projected:.3f} (delta "
        f"{privacy.delta:g}), above the target {target:g} this run's noise was calibrated for "
        f"over {calibrated_rounds} rounds; pass --allow-overspend to spend it (recorded in "
        f"config.toml and summary.json), --max-epsilon {target:g} to train only while the "
        f"budget lasts, or start a new run with --rounds {rounds} --epsilon {target:g}"
    )
