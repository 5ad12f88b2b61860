"""Attacks on multi-step sessions, each also run against a deliberately weakened member.

The property under test (SECURITY.md, "Secure data-parallel training"): every step's pairwise
masks are derived from the pair secret *and the step digest*, so masked vectors of two steps
cannot be subtracted to cancel them. A weakened member derives them from the pair secret alone
(session-level masks, the same every step); the same adversary then reads a gradient.

The adversary sees each member's masked vector individually, as the asynchronous engine's
parameter server does (and as a ring neighbour sees a chunk of it in gloo's all-reduce).
"""

from __future__ import annotations

import numpy as np
import pytest

from secagg.hazmat.prg import MaskTerm, accumulate
from secagg.multistep import Outcome, StepContext, decode
from secagg.multistep import keys as step_keys
from tests.secagg.multistep_helpers import decision, make_session, masked_step, run_step

LENGTH = 2048


@pytest.fixture(params=["per-step", "weakened: session-level pairwise masks"])
def derivation(request, monkeypatch):
    """The real per-step derivation, or the weakened one that ignores the step digest."""
    if request.param != "per-step":
        original = step_keys.step_mask_seed
        monkeypatch.setattr(
            step_keys,
            "step_mask_seed",
            lambda secret, step_digest, a, b: original(secret, bytes(32), a, b),
        )
    return request.param


def _gradient() -> np.ndarray:
    """A recognisable 'gradient' in ring words (what a member would encode)."""
    return (np.arange(LENGTH, dtype=np.uint32) * np.uint32(2654435761)) >> np.uint32(6)


def _strip(vector, config, context, owner, seed, known_pairs):
    """Subtract from ``owner``'s masked vector its self mask and the pairwise masks the
    adversary knows (pairs with the members whose pair secrets it holds)."""
    residual = vector.copy()
    digest = context.digest(config)
    terms = [MaskTerm(step_keys.self_mask_seed(seed, digest, owner), subtract=True)]
    for peer, secret in known_pairs.items():
        step_seed = step_keys.step_mask_seed(secret, digest, owner, peer)
        terms.append(MaskTerm(step_seed, subtract=owner < peer))  # undo owner's +-PRG
    accumulate(residual, terms)
    return residual


def _matches(found: np.ndarray, secret: np.ndarray) -> float:
    return float(np.mean(found == secret))


@pytest.mark.parametrize("size", [4, 16, 32])
def test_a_curious_member_cannot_difference_a_neighbours_vectors_across_steps(derivation, size):
    """Semi-honest, no collusion: member 2 sees member 1's masked vector in two complete steps
    (all seeds revealed, as they always are once a step completes). Member 1's gradient at step 0
    is g, at step 1 zero. With per-step masks, 1's vectors minus everything 2 knows differ by
    noise; with session-level masks the difference is g itself. Cross-silo sizes from 4 to 32
    members (the attack needs no more than the two steps, whatever the size)."""
    members, config = make_session(tuple(range(1, size + 1)))
    g = _gradient()
    views = []
    for step, x1 in ((0, g), (1, np.zeros(LENGTH, np.uint32))):
        context = StepContext.every_member(config, step=step, length=LENGTH)
        inputs = {i: np.zeros(LENGTH, np.uint32) for i in config.members} | {1: x1}
        masked, _offers = masked_step(members, config, context, inputs)
        reveal = decision(config, context, Outcome.REVEAL)
        seeds = {i: decode(members[i].reveal(reveal)).payload.seed for i in config.members}
        known = {2: members[2]._pair_secrets[1]}  # the adversary's own pair with member 1
        views.append(_strip(masked[1], config, context, 1, seeds[1], known))
    difference = views[0] - views[1]
    if derivation == "per-step":
        assert _matches(difference, g) < 0.01
    else:
        assert np.array_equal(difference, g)


@pytest.mark.parametrize("size", [4, 16])
def test_a_rank_slow_in_one_step_and_not_the_next_keeps_its_gradient(derivation, size):
    """Active aggregator with two colluding members (c = 2 < t). The last member is slow in step 0
    (below, "member 4" is that member; sizes 4 and 16):
    its masked vector arrives after the aggregator decided RETRY, and the step is summed again
    without it. The aggregator then lies to member 4 with a REVEAL decision for the abandoned
    attempt and obtains its self-mask seed; in step 1 member 4 contributes normally (gradient
    zero). Everything it can strip from member 4's two vectors leaves the honest member 3's
    pairwise masks, which per-step derivation makes different in the two steps: the aggregator
    learns nothing of member 4's step-0 gradient. With session-level masks they cancel and the
    gradient is read exactly."""
    members, config = make_session(tuple(range(1, size + 1)))
    g = _gradient()
    zero = np.zeros(LENGTH, np.uint32)
    target, everyone = size, config.members
    colluders = {1: members[1]._pair_secrets[target], 2: members[2]._pair_secrets[target]}

    late = StepContext.every_member(config, step=0, length=LENGTH)
    masked, _ = masked_step(
        members, config, late, {i: g if i == target else zero for i in everyone}
    )
    for i in everyone:
        if i != target:
            members[i].abandon(late)
    lie = decision(config, late, Outcome.REVEAL)  # told only to the target
    seed_late = decode(members[target].reveal(lie)).payload.seed
    view_late = _strip(masked[target], config, late, target, seed_late, colluders)

    others = tuple(i for i in everyone if i != target)
    retry = StepContext(step=0, attempt=1, contributors=others, length=LENGTH)
    total, _ = run_step(members, config, retry, {i: zero for i in others})
    assert np.array_equal(total, zero)  # the released sum of step 0 holds no trace of the target

    step1 = StepContext.every_member(config, step=1, length=LENGTH)
    masked, _offers = masked_step(members, config, step1, {i: zero for i in everyone})
    reveal = decision(config, step1, Outcome.REVEAL)
    seeds = {i: decode(members[i].reveal(reveal)).payload.seed for i in everyone}
    view_next = _strip(masked[target], config, step1, target, seeds[target], colluders)

    difference = view_late - view_next
    if derivation == "per-step":
        assert _matches(difference, g) < 0.01
    else:
        assert np.array_equal(difference, g)


def test_the_step_digest_binds_step_attempt_contributors_and_length():
    """Changing any of the four gives a different step digest (so different masks and seeds)."""
    _, config = make_session((1, 2, 3, 4))
    base = StepContext(step=5, attempt=0, contributors=(1, 2, 3), length=10)
    variants = [
        StepContext(step=6, attempt=0, contributors=(1, 2, 3), length=10),
        StepContext(step=5, attempt=1, contributors=(1, 2, 3), length=10),
        StepContext(step=5, attempt=0, contributors=(1, 2, 4), length=10),
        StepContext(step=5, attempt=0, contributors=(1, 2, 3), length=11),
    ]
    digests = {base.digest(config), *(v.digest(config) for v in variants)}
    assert len(digests) == 5
