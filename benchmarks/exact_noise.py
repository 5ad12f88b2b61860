"""Exact distributed noise under dropouts: the variance left in the released sum, against the
target, with and without removal (n = 100, complete graph, identities, Skellam).

    python -m benchmarks.exact_noise

Every update is zero, so the released sum is noise alone; "empirical" is its variance over the
d coordinates, "left" what the run computed from the revealed seeds, both in units of V.
"Target" is the least the sum may carry so that its honest clients keep V: |U3| / (|U3| - c)
in the complete graph (1 with c = 0).
"""

from __future__ import annotations

import time

import numpy as np

import secagg
from dp.distributed import DistributedNoiseEncoder, Mechanism
from fl.core.aggregation import ClientUpdate, secure_noisy_mean

CLIENTS, DIMENSION = 100, 16384


def main() -> None:
    """Print one row per (corrupt fraction, dropouts, removal)."""
    print(
        "| c | t | dropped | U3 | removal | empirical / V | left / V | target / V | left / target | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    updates = {u: ClientUpdate(np.zeros(DIMENSION), 1) for u in range(1, CLIENTS + 1)}
    for corrupt_fraction in (0.0, 0.05):
        policy = secagg.ClientPolicy(corrupt_fraction=corrupt_fraction)
        shape = secagg.SecAggConfig.create(range(1, CLIENTS + 1), 1, neighbours=CLIENTS - 1)
        t = policy.minimum_threshold(shape)
        shape = secagg.SecAggConfig.create(
            range(1, CLIENTS + 1), 1, neighbours=CLIENTS - 1, threshold=t
        )
        c = policy.corrupt_neighbours(shape)
        encoder = DistributedNoiseEncoder(
            mechanism=Mechanism.SKELLAM,
            dimension=DIMENSION,
            l2_clip=1.0,
            noise_multiplier=1.0,
            cohort=CLIENTS,
            noise_shares=t - c,
            threshold=t,
            corrupt=c,
        )
        target_variance = encoder.central_variance
        for dropped in (0, CLIENTS // 10, CLIENTS - t):
            for exact in (False, True):
                started = time.perf_counter()
                outcome = secure_noisy_mean(
                    updates,
                    encoder=encoder,
                    rotation_seed=bytes(32),
                    threshold=t,
                    neighbours=CLIENTS - 1,
                    identities=True,
                    dropouts={u: secagg.Phase.MASKED_INPUT for u in range(1, dropped + 1)},
                    policy=policy,
                    exact_noise=exact,
                )
                seconds = time.perf_counter() - started
                survivors = len(outcome.contributors)
                empirical = float((outcome.mean * survivors * encoder.scale).var())
                left = outcome.noise_variance_left or survivors * target_variance / (t - c)
                target = target_variance * survivors / (survivors - c)
                print(
                    f"| {c} | {t} | {dropped} | {survivors} | {'yes' if exact else 'no'} | "
                    f"{empirical / target_variance:.4f} | {left / target_variance:.4f} | "
                    f"{target / target_variance:.4f} | {left / target:.4f} | {seconds:.1f} |"
                )


if __name__ == "__main__":
    main()
