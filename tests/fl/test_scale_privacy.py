"""Client-level calibration at scale: the claim counts each distinct mechanism once."""

from fl.core import privacy
from fl.core.config import RunConfig


def test_client_level_claim_is_the_worst_over_every_cohort_size():
    """client_level_claim (each distinct ledger entry evaluated once) equals the maximum of the
    observer and server epsilons over every cohort size the plan covers, evaluated one by one."""
    config = RunConfig().with_overrides(
        {
            "training.clients": 60,
            "training.fraction": 0.3,
            "training.rounds": 6,
            "privacy.level": "client",
            "privacy.epsilon": 4.0,
            "privacy.delta": 1e-3,
        }
    )
    sizes = privacy.cohort_sizes(config)
    plan = privacy.ClientLevelPlan(0.3, 2.0, privacy.participation_cap(60, 6, 0.3), sizes)
    naive = 0.0
    for cohort in range(sizes[0], sizes[1] + 1):
        encoder = privacy.client_encoder(config, plan, cohort=cohort, dimension=100)
        entry = encoder.ledger_entry(round_index=1, client_sampling_rate=0.3)
        naive = max(naive, *privacy._client_epsilons(config, plan, entry))
    assert sizes[1] - sizes[0] > 10
    assert privacy.client_level_claim(config, plan, 100) == naive
