"""Secure data-parallel training on torch.distributed: 4 gloo processes on 127.0.0.1.

Each test starts its ranks with tests/fl/distributed_harness.py (all stopped in ``finally``,
every wait bounded) and runs one function of tests/fl/distributed_workers.py on each.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.fl import distributed_workers as workers
from tests.fl.distributed_harness import run_ranks, values


def test_the_secure_sum_equals_all_reduce_within_the_encoding_bound_over_50_steps():
    """secure_all_reduce replaces dist.all_reduce(op=SUM): over 50 steps of three gradient
    tensors on 4 ranks, every element is within n 2^-p of the exact sum (plus the float32
    rounding of the result), and within 1e-5 of gloo's own float32 all-reduce. A second group
    with rekey_every=20, whose ranks unmask one slice of the sum each and all-gather them,
    agrees fresh keys at steps 20 and 40 and is within the same bound."""
    results = values(run_ranks(workers.sum_over_steps, 4, steps=50))
    for result in results:
        assert result["worst_ratio"] <= 1.0, result
        assert result["worst_vs_plain"] < 1e-5, result
        assert result["generations"] == [1] * 20 + [2] * 20 + [3] * 10
        assert result["worst_rekeyed"] <= 1.0, result


@pytest.mark.parametrize("weakened", [False, True], ids=["masked", "weakened: no masks"])
def test_no_rank_receives_another_ranks_gradient(weakened):
    """Check the wire: every chunk a rank receives in the ring all-reduce and every value it
    reads from the store is searched for each other rank's gradient, as float32 bytes and as its
    fixed-point words (within the rounding). Nothing is found; with the masks removed, the same
    search finds the left neighbour's gradient in the first chunk it receives."""
    results = values(run_ranks(workers.wire, 4, steps=3, weakened=weakened))
    found = max(r["found_words"] for r in results)
    assert all(r["chunks"] == 3 * 2 * 3 for r in results)
    if weakened:
        assert found > 0.99
    else:
        assert found < 0.01
        assert not any(r["found_bytes"] for r in results)


POINTS = ["before", "transport", "seed", "gather"]


def test_a_rank_killed_at_a_random_step_never_hangs_the_others():
    """A random rank (rank 0 included) is killed at a random step and point (before the step,
    inside the all-reduce, after the sum but before revealing its seed, or after revealing it
    but before the all-gather of the unmasked slices). The others finish that step within the
    timeout bound - with the survivors' sum after a retry, with every input after rebuilding
    the lost seed from shares, or with every input unmasked locally - then re-key without it (a
    new session, a new id) and go on training."""
    _kill_and_check(random.Random().choice(POINTS))


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_rank_killed_at_each_point_never_hangs_the_others(point):
    """The test above at every point in turn (the default run draws one)."""
    _kill_and_check(point)


def _kill_and_check(point: str) -> None:
    rng = random.Random()
    victim, at_step = rng.randrange(4), rng.randrange(1, 4)
    results = run_ranks(
        workers.killed, 4, victims=[victim], at_step=at_step, point=point, steps=at_step + 3
    )
    scenario = f"rank {victim} killed at step {at_step}, {point}"
    assert results[victim].killed, scenario
    for result in results:
        if result.rank == victim:
            continue
        assert result.error is None, f"{scenario}: {result.message}\n{result.traceback}"
        log = result.value
        assert [entry.get("error") for entry in log] == [None] * len(log), (scenario, log)
        survivors = sorted(set(range(4)) - {victim})
        failing = log[at_step]
        assert failing["seconds"] < 3 * workers.TIMEOUT + 6, (scenario, failing)
        if point == "seed":  # the sum was complete: its seed is rebuilt, its input stays in
            assert failing["value"] == 10.0 and failing["recovered"] == [victim], (
                scenario,
                failing,
            )
        elif point == "gather":  # every seed was revealed: the survivors unmask it all
            assert failing["value"] == 10.0 and failing["recovered"] == [], (scenario, failing)
            assert failing["contributors"] == [0, 1, 2, 3], (scenario, failing)
        else:  # retried without it, in a new session
            assert failing["value"] == 10.0 - (victim + 1), (scenario, failing)
            assert failing["retried"] == 1 and failing["contributors"] == survivors
        after = log[at_step + 1 :]
        assert all(entry["contributors"] == survivors for entry in after), (scenario, after)
        assert all(entry["value"] == 10.0 - (victim + 1) for entry in after)
        sessions = {entry["session"] for entry in log}
        assert len(sessions) == 2 and log[0]["generation"] == 1 and after[-1]["generation"] == 2


def test_losing_two_of_four_ranks_raises_ranks_lost_naming_them():
    """With 2 of 4 ranks gone the step cannot be finished securely (t = 3): the survivors get
    RanksLost naming the missing ranks, within the timeout bound, with their input tensors
    unchanged (nothing is released). Their loop goes on: the next step, with 2 ranks below the
    policy's floor of 3, raises RanksLost again, without waiting."""
    results = run_ranks(workers.killed, 4, victims=[1, 2], at_step=1, point="transport", steps=3)
    for rank in (0, 3):
        log = results[rank].value
        assert log[0]["value"] == 10.0
        failure = log[1]
        assert failure["error"] == "RanksLost", failure
        assert failure["missing"] == [1, 2]
        assert failure["seconds"] < 3 * workers.TIMEOUT + 6
        assert failure["input_after"] == [float(rank + 1)] * 40
        again = log[2]
        assert again["error"] == "RanksLost" and "policy" in again["message"], again
        assert again["seconds"] < workers.TIMEOUT, again


def test_asynchronous_sgd_with_a_slow_rank():
    """Parameter-server mode, buffers of K = 3 among 4 workers, one worker 6x slower: it still
    contributes, stale, weighted by 1/sqrt(1 + staleness) before masking; every released mean
    is the mean of the K weighted gradients (within the encoding bound)."""
    results = values(run_ranks(workers.asynchronous, 5, buffers=12, slow=4))
    server, pushes = results[0], {rank: results[rank]["pushes"] for rank in range(1, 5)}
    weights = {
        (rank, push["buffer"]): push["weight"] for rank, items in pushes.items() for push in items
    }
    slow = pushes[4]
    assert slow and any(push["staleness"] >= 1 for push in slow)
    for push in slow:
        assert push["weight"] == pytest.approx((1 + push["staleness"]) ** -0.5)
    for buffer in server["buffers"]:
        contributors = buffer["contributors"]
        assert len(set(contributors)) == 3
        expected = sum(rank * weights[(rank, buffer["buffer"])] for rank in contributors) / 3
        # the sum is within 3 2^-p; the float32 mean adds its own rounding (2^-23 relative)
        bound = 2.0 ** -server["precision_bits"] + abs(expected) * 2.0**-23
        assert all(abs(v - expected) <= bound for v in buffer["mean"]), (buffer, expected)


def test_the_ddp_hook_gives_the_plain_hooks_model_after_one_epoch():
    """One epoch of DDP on 768 digits, 4 ranks: the model trained with register_secure_hook equals
    the one trained with DDP's default all-reduce to 1e-4 (the fixed-point error is 2^-25 per
    step), with the same test accuracy; DistributedEngine runs the same four steps."""
    results = values(run_ranks(workers.ddp, 4, epochs=1))
    for result in results:
        assert result["difference"] < 1e-4, result
        plain, secure = result["accuracy"]
        assert abs(plain - secure) < 0.01 and plain > 0.2  # chance is 0.1
        assert result["contributors"] == [4] and result["steps"] == 12
        assert all(r["released"] and r["cohort"] == [0, 1, 2, 3] for r in result["engine"])
    assert len({tuple(r["engine_parameters"]) for r in results}) == 1


def test_per_rank_dp_sgd_sums_every_ranks_noise_securely_and_accounts_it():
    """make_private_rank on 4 ranks. One step at noise multiplier 50: the secure sum equals the
    plain sum of the ranks' noisy gradients (within the encoding), and its noise has sqrt(4)
    times the standard deviation of one rank's draw, so every rank added its own full noise (a
    rank-0-only noise, as in Opacus' distributed optimizer, would give half of it). Then 3
    epochs on digits at multiplier 1: every rank holds the same model, well above chance, and
    each rank's ledger gives the epsilon Opacus' own RDP accountant gives for its steps."""
    results = values(run_ranks(workers.private_dpsgd, 4, timeout=180.0, epochs=3))
    for result in results:
        assert result["secure_minus_plain"] <= 4 * 2.0 ** -result["precision_bits"], result
        assert result["sum_moved"] < 1e-5, result  # the step applied the secure sum's mean
        ratio = result["heavy_sum_std"] / (2 * result["heavy_expected_std"])
        assert 0.85 < ratio < 1.15, result  # 650 coordinates: the std is known to within ~3%
        assert result["steps"] == 33 and abs(result["sampling_rate"] - 1 / 11) < 1e-12
        assert result["epsilon"] == pytest.approx(result["opacus_epsilon"], rel=1e-9)
        assert result["ledger_entries"] == 1 and result["accuracy"] > 0.4  # chance is 0.1
    assert len({tuple(r["parameters"]) for r in results}) == 1


def test_per_rank_dp_sgd_refuses_ranks_with_unequal_batches():
    """A rank with fewer batches per epoch would leave the others waiting in a step it never
    takes: every rank refuses before training, naming each rank's count."""
    for result in run_ranks(workers.private_dpsgd, 4, timeout=120.0, epochs=1, uneven=True):
        assert result.error == "InputError", result
        assert "{0: 11, 1: 11, 2: 11, 3: 7}" in result.message, result


def test_per_rank_dp_sgd_refuses_settings_out_of_range():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from fl.engines.distributed import make_private_rank
    from fl.errors import InputError

    model = nn.Linear(2, 2)
    loader = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for settings in (
        {"noise_multiplier": 0.0, "max_grad_norm": 1.0, "delta": 1e-5},
        {"noise_multiplier": 1.0, "max_grad_norm": -1.0, "delta": 1e-5},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0},
    ):
        with pytest.raises(InputError):
            make_private_rank(model, optimizer, loader, **settings)
