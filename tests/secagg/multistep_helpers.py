"""A multi-step session run in one process through the real bytes (no transport, no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from secagg import ClientPolicy
from secagg.multistep import (
    Decision,
    Outcome,
    SessionMember,
    StepContext,
    StepUnmasker,
    encode,
)

POLICY = ClientPolicy(min_clients=3)


def make_session(ids: Sequence[int] = (1, 2, 3, 4), *, policy: ClientPolicy = POLICY, **kwargs):
    """Members that advertised and joined one session; returns (members by id, config)."""
    session_id = os.urandom(32)
    members = {i: SessionMember(session_id, i, policy=policy, **kwargs) for i in ids}
    adverts = {i: member.advertise() for i, member in members.items()}
    configs = [member.join(adverts) for member in members.values()]
    assert all(config == configs[0] for config in configs)
    return members, configs[0]


def decision(config, context: StepContext, outcome: Outcome, ids: Sequence[int] = ()) -> bytes:
    """The one decision of a step, as the coordinator would publish it."""
    return encode(
        Decision(context.attempt, outcome, tuple(ids)),
        session_id=config.session_id,
        step=context.step,
        sender=0,
    )


def masked_step(members, config, context, inputs):
    """Every contributor masks its input; returns (masked vectors, offers) by member."""
    masked, offers = {}, {}
    for member_id in context.contributors:
        vector = np.array(inputs[member_id], dtype=config.word_dtype)
        offers[member_id] = members[member_id].mask(context, vector)
        masked[member_id] = vector
    return masked, offers


def run_step(members, config, context, inputs):
    """A complete step (everyone reveals); returns the unmasked sum and the masked vectors."""
    masked, offers = masked_step(members, config, context, inputs)
    total = np.sum(list(masked.values()), axis=0, dtype=config.word_dtype)
    unmasker = StepUnmasker(config, context)
    reveal = decision(config, context, Outcome.REVEAL)
    for member_id in context.contributors:
        unmasker.add_offer(offers[member_id])
        unmasker.add_seed(members[member_id].reveal(reveal))
    unmasker.unmask(total)
    return total, masked
