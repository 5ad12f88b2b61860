"""Every multi-step message is bound to its session, step, attempt and sender: each part of each
binding is checked on its own (a check that tested only the whole tuple would let one part
slip)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from secagg import (
    ConfigurationError,
    InconsistentRequest,
    LocalProtocolError,
    MalformedMessage,
    PolicyViolation,
    UnknownSender,
    WrongSession,
)
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


@pytest.mark.parametrize("session_id", [os.urandom(31), "x" * 32])
def test_a_session_id_must_be_32_bytes(session_id):
    """A short byte string and a 32-character str are both refused."""
    with pytest.raises(ConfigurationError, match="session_id"):
        SessionMember(session_id, 1, policy=POLICY)


def test_without_a_policy_a_member_holds_the_secure_defaults():
    """A member built without a policy refuses a 4-member session (the default floor is 5)."""
    session_id = os.urandom(32)
    members = {i: SessionMember(session_id, i) for i in (1, 2, 3, 4)}
    adverts = {i: m.advertise() for i, m in members.items()}
    with pytest.raises(PolicyViolation):
        members[1].join(adverts)


def test_the_agreed_session_carries_the_members_collusion_assumption_and_parameters():
    """join() builds the session from the adverts' settings, not from defaults."""
    session_id, parameters = os.urandom(32), os.urandom(32)
    members = {
        i: SessionMember(session_id, i, corrupt_fraction=0.2, parameters=parameters, policy=POLICY)
        for i in (1, 2, 3, 4)
    }
    adverts = {i: m.advertise() for i, m in members.items()}
    config = members[1].join(adverts)
    assert (config.corrupt_fraction, config.parameters) == (0.2, parameters)


def test_a_low_order_key_is_a_typed_refusal():
    """An advert whose X25519 key is the zero point makes the key exchange fail: the member
    stops with InconsistentRequest naming the peer."""
    session_id = os.urandom(32)
    members = {i: SessionMember(session_id, i, policy=POLICY) for i in (1, 2, 3)}
    adverts = {i: m.advertise() for i, m in members.items()}
    advert = decode(adverts[3]).payload
    adverts[3] = encode(
        dataclasses.replace(advert, agreement_key=bytes(32)),
        session_id=session_id,
        step=0,
        sender=3,
    )
    with pytest.raises(InconsistentRequest, match="member 3 advertised a low-order key"):
        members[1].join(adverts)


def test_a_message_of_another_kind_is_malformed_wherever_one_is_expected():
    """Each entry point decodes only the kind it expects: an offer passed as an advert, a
    decision, a seed or shares is refused as malformed (not read as something else)."""
    members, config, context, offers = _step()
    offer = offers[2]
    with pytest.raises(MalformedMessage):
        members[1].reveal(offer)
    unmasker = StepUnmasker(config, context)
    seed = members[2].reveal(decision(config, context, Outcome.REVEAL))
    for call, data in (
        (unmasker.add_offer, seed),
        (unmasker.add_seed, offer),
        (unmasker.add_shares, offer),
    ):
        with pytest.raises(MalformedMessage):
            call(data)
    fresh = {i: SessionMember(config.session_id, i, policy=POLICY) for i in (1, 2, 3)}
    adverts = {i: m.advertise() for i, m in fresh.items()}
    with pytest.raises(MalformedMessage):
        fresh[1].join({**adverts, 3: offer})


def _revealed(member_id=1):
    members, config, context, offers = _step()
    members[member_id].reveal(decision(config, context, Outcome.REVEAL))
    return members, config, context, offers


def test_reveal_shares_needs_a_recover_decision_that_names_someone():
    """A RECOVER naming nobody, and a REVEAL (which never names anyone), are both refused."""
    members, config, context, offers = _revealed()
    with pytest.raises(InconsistentRequest, match="needs a RECOVER decision"):
        members[1].reveal_shares(decision(config, context, Outcome.RECOVER, ()), offers)
    members, config, context, offers = _revealed()
    with pytest.raises(InconsistentRequest, match="needs a RECOVER decision"):
        members[1].reveal_shares(decision(config, context, Outcome.REVEAL), offers)


def test_reveal_shares_refuses_a_missing_offer_an_offer_without_a_share_and_a_forged_share():
    """Each failure is a typed InconsistentRequest naming the owner."""
    recover = Outcome.RECOVER
    members, config, context, offers = _revealed()
    with pytest.raises(InconsistentRequest, match="no share offer of member 4"):
        members[1].reveal_shares(decision(config, context, recover, (4,)), {})

    members, config, context, offers = _revealed()
    original = decode(offers[4])
    without = dataclasses.replace(
        original.payload,
        ciphertexts=tuple((h, c) for h, c in original.payload.ciphertexts if h != 1),
    )
    data = encode(without, session_id=config.session_id, step=context.step, sender=4)
    with pytest.raises(InconsistentRequest, match="member 4 sent this member no share"):
        members[1].reveal_shares(decision(config, context, recover, (4,)), {4: data})

    members, config, context, offers = _revealed()
    original = decode(offers[4])
    flipped = tuple(
        (h, bytes([c[0] ^ 1]) + c[1:]) if h == 1 else (h, c)
        for h, c in original.payload.ciphertexts
    )
    data = encode(
        dataclasses.replace(original.payload, ciphertexts=flipped),
        session_id=config.session_id,
        step=context.step,
        sender=4,
    )
    with pytest.raises(InconsistentRequest, match="share fails authentication"):
        members[1].reveal_shares(decision(config, context, recover, (4,)), {4: data})


@pytest.mark.parametrize("bad", ["list", "dtype", "2-d", "negative offset"])
def test_unmask_refuses_anything_but_a_ring_vector_of_the_step(bad):
    """A list, another dtype, a 2-D array and a negative offset are each refused."""
    members, config, context, offers = _step()
    unmasker = StepUnmasker(config, context)
    reveal = decision(config, context, Outcome.REVEAL)
    for i in context.contributors:
        unmasker.add_offer(offers[i])
        unmasker.add_seed(members[i].reveal(reveal))
    total = np.zeros(context.length, dtype=np.uint32)
    arguments = {
        "list": (total.tolist(), 0),
        "dtype": (total.astype(np.uint64), 0),
        "2-d": (total.reshape(2, -1), 0),
        "negative offset": (total[:4], -4),
    }[bad]
    with pytest.raises(LocalProtocolError, match="total must be"):
        unmasker.unmask(arguments[0], offset=arguments[1])


def test_an_offer_of_another_kind_makes_the_offer_unusable():
    """reveal_shares() decodes each offer as an offer: a seed reveal filed as member 4's offer
    is refused as unusable (typed), never read as an offer."""
    members, config, context, _offers = _revealed()
    seed = members[4].reveal(decision(config, context, Outcome.REVEAL))
    with pytest.raises(InconsistentRequest, match="member 4's offer is unusable"):
        members[1].reveal_shares(decision(config, context, Outcome.RECOVER, (4,)), {4: seed})


def test_a_members_unmasker_is_for_the_step_in_progress():
    """Before any step there is nothing to unmask; after masking, the member's unmasker removes
    the self masks of exactly that step."""
    members, config = make_session((1, 2, 3, 4))
    with pytest.raises(LocalProtocolError, match="no step in progress"):
        members[1].unmasker()
    context = StepContext.every_member(config, step=0, length=16)
    inputs = {i: np.full(16, i, dtype=np.uint32) for i in config.members}
    masked, offers = masked_step(members, config, context, inputs)
    unmasker = members[1].unmasker()
    assert unmasker.context == context
    reveal = decision(config, context, Outcome.REVEAL)
    for i in context.contributors:
        unmasker.add_offer(offers[i])
        unmasker.add_seed(members[i].reveal(reveal))
    total = np.sum(list(masked.values()), axis=0, dtype=np.uint32)
    unmasker.unmask(total)
    assert total.tolist() == [10] * 16
