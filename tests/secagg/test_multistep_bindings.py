"""Every multi-step message is bound to its session, step, attempt and sender: each part of each
binding is checked on its own (a check that tested only the whole tuple would let one part
slip)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from secagg import ConfigurationError, InconsistentRequest, UnknownSender, WrongSession
from secagg.hazmat import shamir
from secagg.multistep import (
    Outcome,
    SessionMember,
    ShareReveal,
    StepContext,
    StepUnmasker,
    decode,
    encode,
)
from tests.secagg.multistep_helpers import POLICY, decision, make_session, masked_step


def _step(ids=(1, 2, 3, 4), length=16):
    members, config = make_session(ids)
    context = StepContext.every_member(config, step=0, length=length)
    inputs = {i: np.full(length, i, dtype=np.uint32) for i in ids}
    _, offers = masked_step(members, config, context, inputs)
    return members, config, context, offers


@pytest.mark.parametrize("member_id", [0, -1, True, 1.0])
def test_a_member_id_must_be_a_positive_integer(member_id):
    """0, negative ids, booleans and floats are refused at construction."""
    with pytest.raises(ConfigurationError, match="member_id"):
        SessionMember(os.urandom(32), member_id, policy=POLICY)


def test_an_advert_filed_under_another_member_or_from_another_session_is_refused():
    """join() checks the sender and the session of each advert, each on its own."""
    session_id = os.urandom(32)
    members = {i: SessionMember(session_id, i, policy=POLICY) for i in (1, 2, 3)}
    adverts = {i: m.advertise() for i, m in members.items()}
    swapped = {**adverts, 2: adverts[3], 3: adverts[2]}  # right session, wrong slot
    with pytest.raises(WrongSession, match="filed under member 2"):
        members[1].join(swapped)
    stranger = SessionMember(os.urandom(32), 2, policy=POLICY).advertise()  # right slot
    with pytest.raises(WrongSession, match="another session"):
        members[1].join({**adverts, 2: stranger})


def test_an_offer_must_match_the_step_in_every_field():
    """reveal_shares() refuses an offer whose envelope is right but whose step length differs,
    and one filed under another owner."""
    members, config, context, offers = _step()
    members[1].reveal(decision(config, context, Outcome.REVEAL))
    recover = decision(config, context, Outcome.RECOVER, (4,))
    original = decode(offers[4])
    altered = encode(
        dataclasses.replace(original.payload, length=context.length + 1),
        session_id=config.session_id,
        step=context.step,
        sender=4,
    )
    with pytest.raises(InconsistentRequest, match="offer for another step"):
        members[1].reveal_shares(recover, {4: altered})

    members, config, context, offers = _step()
    members[1].reveal(decision(config, context, Outcome.REVEAL))
    with pytest.raises(InconsistentRequest, match="offer for another step"):
        members[1].reveal_shares(decision(config, context, Outcome.RECOVER, (4,)), {4: offers[3]})


def test_the_unmasker_checks_the_session_and_the_step_each_on_its_own():
    """A message of another session at the same step, or of another step in the same session,
    is refused."""
    _, config, context, offers = _step()
    unmasker = StepUnmasker(config, context)
    offer = decode(offers[2]).payload
    for session_id, step in ((os.urandom(32), context.step), (config.session_id, 1)):
        forged = encode(offer, session_id=session_id, step=step, sender=2)
        with pytest.raises(WrongSession, match="another session or step"):
            unmasker.add_offer(forged)


def test_shares_of_a_stranger_or_of_the_sender_itself_are_refused():
    """A holder may reveal shares only of other contributors of the step."""
    _, config, context, _ = _step()
    unmasker = StepUnmasker(config, context)
    share = bytes(shamir.SHARE_BYTES)
    for owner in (9, 2):  # not a contributor; the sender itself
        forged = encode(
            ShareReveal(context.attempt, ((owner, share),)),
            session_id=config.session_id,
            step=context.step,
            sender=2,
        )
        with pytest.raises(UnknownSender, match=f"share of member {owner}"):
            unmasker.add_shares(forged)


@pytest.mark.parametrize("member_id", [1, 2, 4])
def test_an_offer_carries_one_share_for_every_other_contributor(member_id):
    """Whatever its place among the contributors, a member encrypts a share for each other one
    (a member that stopped at itself would leave the later holders without shares)."""
    _, _, context, offers = _step()
    holders = [holder for holder, _ in decode(offers[member_id]).payload.ciphertexts]
    assert holders == [c for c in context.contributors if c != member_id]
