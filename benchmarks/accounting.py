"""Accountant cost: noise calibration and a run's ledger, RDP against PRV.

    python -m benchmarks.accounting [--epsilon 1.5] [--rounds 20] [--accountants rdp,prv]

For the default sample-level federation (``privagg run --dp sample --epsilon 1.5``: 10 clients
on the Dirichlet digits split, 2 local epochs, batch 16), one JSON object per accountant, each
measured in a fresh process: the seconds to calibrate every client's noise multiplier, the
seconds to keep the ledger over the rounds (every client records its steps, the round closes,
``privacy.json`` is rendered, as the engine does each round), the epsilon spent, and the peak
resident memory of the process (imports included). The noisy record counts are seeded, so both
accountants see the same clients.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(accountant: str, epsilon: float, rounds: int) -> dict:
    """Calibrate and keep the ledger in this process; returns the measurements."""
    from dp.ledger import PrivacyLedger, PrivacyLevel
    from fl.core.config import RunConfig
    from fl.core.data import build_federated_data
    from fl.core.privacy import plan_sample_level

    config = RunConfig().with_overrides(
        {
            "privacy.level": "sample",
            "privacy.epsilon": epsilon,
            "privacy.accountant": accountant,
            "training.rounds": rounds,
            "privacy.reproducible_noise": True,  # the same noisy record counts for both
        }
    )
    data = build_federated_data(config.data, clients=config.training.clients, seed=config.seed)
    ledger = PrivacyLedger(
        level=PrivacyLevel.SAMPLE, delta=config.privacy.delta, accountant=config.privacy.accountant
    )
    started = time.perf_counter()
    plan = plan_sample_level(config, data, ledger=ledger, progress=lambda done, total: None)
    calibration = time.perf_counter() - started
    started = time.perf_counter()
    for round_index in range(rounds):
        for client in plan.noise:
            ledger.record_sample(plan.entry(round_index, client, config.privacy.clip))
        ledger.close_round()
        ledger.to_json()
    keeping = time.perf_counter() - started
    return {
        "accountant": accountant,
        "target_epsilon": epsilon,
        "rounds": rounds,
        "clients": len(plan.noise),
        "calibration_seconds": round(calibration, 3),
        "ledger_seconds": round(keeping, 3),
        "total_seconds": round(calibration + keeping, 3),
        "epsilon_spent": round(ledger.epsilons[-1], 4),
        "noise_multipliers": sorted({round(v, 3) for v in plan.noise.values()}),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epsilon", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--accountants", default="rdp,prv")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        print(json.dumps(measure(args.inside, args.epsilon, args.rounds)))
        return
    for accountant in args.accountants.split(","):
        command = [sys.executable, "-m", "benchmarks.accounting", "--inside", accountant]
        command += ["--epsilon", str(args.epsilon), "--rounds", str(args.rounds)]
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
