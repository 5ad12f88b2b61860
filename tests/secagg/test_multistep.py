"""Multi-step sessions (secagg.multistep): one key agreement, many steps, and the member's rules."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import (
    ClientPolicy,
    InconsistentRequest,
    InconsistentShares,
    LocalProtocolError,
    MalformedMessage,
    ParameterMismatch,
    PolicyViolation,
    ThresholdNotMet,
    UnsupportedVersion,
    WrongSession,
)
from secagg.hazmat import shamir
from secagg.multistep import (
    Decision,
    KeyAdvert,
    MemberStage,
    MultiStepKind,
    Outcome,
    SeedReveal,
    SessionMember,
    ShareOffer,
    ShareReveal,
    Status,
    StatusCode,
    StepContext,
    StepUnmasker,
    decode,
    encode,
    step_threshold,
)
from tests.secagg.multistep_helpers import decision, make_session, masked_step, run_step

RNG = np.random.default_rng(7)


def _inputs(ids, length, dtype=np.uint32):
    return {i: RNG.integers(0, 2**32, length, dtype=np.uint64).astype(dtype) for i in ids}


def test_one_key_agreement_serves_many_steps_and_each_sum_is_exact():
    """Keys are agreed once; every step's unmasked sum equals the plain sum modulo 2^32, for the
    whole session and for buffers of some members (the asynchronous engine's steps)."""
    members, config = make_session((1, 2, 3, 4, 5))
    for step in range(6):
        contributors = config.members if step % 2 == 0 else (1, 3, 4)
        context = StepContext(step=step, attempt=0, contributors=contributors, length=257)
        inputs = _inputs(contributors, 257)
        total, _ = run_step(members, config, context, inputs)
        expected = np.sum(list(inputs.values()), axis=0, dtype=np.uint32)
        assert np.array_equal(total, expected)


def test_a_64_bit_ring_sums_exactly():
    """With ring_bits=64 the words are uint64 and the sum is exact modulo 2^64."""
    members, config = make_session(ring_bits=64)
    context = StepContext.every_member(config, step=0, length=33)
    inputs = _inputs(config.members, 33, np.uint64)
    total, _ = run_step(members, config, context, inputs)
    assert np.array_equal(total, np.sum(list(inputs.values()), axis=0, dtype=np.uint64))


def test_every_step_masks_the_same_input_afresh():
    """Per-step derivation: the same input masked at two steps (or two attempts of one step)
    gives unrelated words; the pairwise masks are never reused."""
    members, config = make_session()
    inputs = _inputs(config.members, 4096)
    seen = []
    for step, attempt in ((0, 0), (0, 1), (1, 0)):
        context = StepContext(step=step, attempt=attempt, contributors=config.members, length=4096)
        masked, _ = masked_step(members, config, context, inputs)
        seen.append(masked[1])
        for member in members.values():
            member.abandon(context)
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.count_nonzero(seen[a] == seen[b]) < 5


def test_steps_only_move_forward_within_a_session():
    """A (step, attempt) is used once: masking the same or an earlier one again is refused, so
    no mask is ever derived twice."""
    members, config = make_session()
    member = members[1]
    context = StepContext(step=3, attempt=1, contributors=config.members, length=8)
    member.mask(context, np.zeros(8, np.uint32))
    member.abandon(context)
    for step, attempt in ((3, 1), (3, 0), (2, 5)):
        earlier = StepContext(step=step, attempt=attempt, contributors=config.members, length=8)
        with pytest.raises(LocalProtocolError, match="does not come after"):
            member.mask(earlier, np.zeros(8, np.uint32))
    member.mask(
        StepContext(step=3, attempt=2, contributors=config.members, length=8),
        np.zeros(8, np.uint32),
    )


def test_a_member_reveals_its_seed_only_after_a_reveal_decision_for_that_very_attempt():
    """RETRY means the sum is incomplete: a member asked to reveal then stops for good
    (sticky); a decision for another step or attempt is refused and changes nothing."""
    members, config = make_session()
    context = StepContext.every_member(config, step=0, length=8)
    masked_step(members, config, context, _inputs(config.members, 8))
    stale = StepContext(step=0, attempt=1, contributors=config.members, length=8)
    with pytest.raises(WrongSession):
        members[1].reveal(decision(config, stale, Outcome.REVEAL))
    assert members[1].stage is MemberStage.MASKED
    with pytest.raises(InconsistentRequest, match="after a RETRY decision"):
        members[1].reveal(decision(config, context, Outcome.RETRY, (2, 3, 4)))
    assert members[1].stage is MemberStage.ERROR
    with pytest.raises(LocalProtocolError, match="stopped"):
        members[1].mask(StepContext.every_member(config, 1, 8), np.zeros(8, np.uint32))


def test_a_revealed_step_is_never_abandoned_and_summed_again():
    """After revealing its seed for a step a member refuses to abandon it (which would let the
    step be summed again without the others it was summed with)."""
    members, config = make_session()
    context = StepContext.every_member(config, step=0, length=8)
    masked_step(members, config, context, _inputs(config.members, 8))
    members[1].reveal(decision(config, context, Outcome.REVEAL))
    with pytest.raises(LocalProtocolError, match="cannot be abandoned"):
        members[1].abandon(context)
    with pytest.raises(LocalProtocolError, match="needs stage masked"):
        members[1].reveal(decision(config, context, Outcome.REVEAL))


def test_a_lost_seed_is_rebuilt_from_t_shares_and_the_sum_is_still_exact():
    """A contributor lost after the sum was complete: t holders reveal their shares of its seed
    (RECOVER) and the sum still unmasks exactly; with t - 1 shares it cannot be rebuilt."""
    members, config = make_session((1, 2, 3, 4, 5))
    context = StepContext.every_member(config, step=0, length=64)
    inputs = _inputs(config.members, 64)
    masked, offers = masked_step(members, config, context, inputs)
    total = np.sum(list(masked.values()), axis=0, dtype=np.uint32)
    reveal = decision(config, context, Outcome.REVEAL)
    recover = decision(config, context, Outcome.RECOVER, (5,))
    t = context.threshold(config)
    assert t == step_threshold(5, corrupt_fraction=0.05) == 4
    unmasker, short = StepUnmasker(config, context), StepUnmasker(config, context)
    for member_id in (1, 2, 3, 4):
        for u in (unmasker, short):
            u.add_offer(offers[member_id])
        seed = members[member_id].reveal(reveal)
        unmasker.add_seed(seed)
        short.add_seed(seed)
        shares = members[member_id].reveal_shares(recover, {5: offers[5]})
        unmasker.add_shares(shares)
        if member_id < t:
            short.add_shares(shares)
    for u in (unmasker, short):
        u.add_offer(offers[5])
    with pytest.raises(ThresholdNotMet, match="members \\[5\\]"):
        short.recover()
    unmasker.recover()
    unmasker.unmask(total)
    assert np.array_equal(total, np.sum(list(inputs.values()), axis=0, dtype=np.uint32))


def test_a_lying_seed_or_lying_shares_fail_the_step_instead_of_corrupting_the_sum():
    """Seeds are checked against the commitment published before masking: a wrong seed, or
    shares that rebuild a wrong seed, raise InconsistentShares."""
    members, config = make_session()
    context = StepContext.every_member(config, step=0, length=16)
    _, offers = masked_step(members, config, context, _inputs(config.members, 16))
    unmasker = StepUnmasker(config, context)
    for offer in offers.values():
        unmasker.add_offer(offer)
    forged = encode(SeedReveal(0, os.urandom(32)), session_id=config.session_id, step=0, sender=2)
    with pytest.raises(InconsistentShares, match="member 2"):
        unmasker.add_seed(forged)
    reveal, recover = (
        decision(config, context, Outcome.REVEAL),
        decision(config, context, Outcome.RECOVER, (4,)),
    )
    for member_id in (1, 2, 3):
        unmasker.add_seed(members[member_id].reveal(reveal))
        shares = decode(members[member_id].reveal_shares(recover, {4: offers[4]})).payload
        if member_id == 3:  # a lying holder flips its share
            bad = bytes(shamir.SHARE_BYTES)
            shares = ShareReveal(0, ((4, bad),))
        unmasker.add_shares(encode(shares, session_id=config.session_id, step=0, sender=member_id))
    with pytest.raises(InconsistentShares, match="member 4"):
        unmasker.recover()


def test_shares_are_revealed_once_per_step_never_before_the_own_seed_nor_of_oneself():
    """reveal_shares needs the member's own reveal first, refuses a RECOVER naming itself or a
    non-contributor (sticky), and answers once per step."""
    members, config = make_session((1, 2, 3, 4, 5))
    context = StepContext(step=0, attempt=0, contributors=(1, 2, 3, 4), length=8)
    _, offers = masked_step(members, config, context, _inputs(context.contributors, 8))
    recover = decision(config, context, Outcome.RECOVER, (4,))
    with pytest.raises(LocalProtocolError, match="needs stage revealed"):
        members[1].reveal_shares(recover, {4: offers[4]})
    for member_id in (1, 2, 3):
        members[member_id].reveal(decision(config, context, Outcome.REVEAL))
    members[1].reveal_shares(recover, {4: offers[4]})
    with pytest.raises(LocalProtocolError, match="already"):
        members[1].reveal_shares(recover, {4: offers[4]})
    with pytest.raises(InconsistentRequest, match="only other contributors"):
        members[2].reveal_shares(decision(config, context, Outcome.RECOVER, (2,)), {})
    assert members[2].stage is MemberStage.ERROR
    with pytest.raises(InconsistentRequest, match="only other contributors"):
        members[3].reveal_shares(decision(config, context, Outcome.RECOVER, (5,)), {})


def test_members_refuse_sessions_and_steps_below_their_policy():
    """Two members: each would learn the other's input from the sum; the default policy (5) and
    the distributed engine's (3) refuse it, an explicit min_clients=2 accepts it. A buffer of 2
    out of a larger session is refused per step (the member stays usable)."""
    for policy in (ClientPolicy(), ClientPolicy(min_clients=3)):
        with pytest.raises(PolicyViolation, match="cohort of 2"):
            make_session((1, 2), policy=policy)
    make_session((1, 2), policy=ClientPolicy(min_clients=2))
    members, _config = make_session((1, 2, 3, 4))
    pair = StepContext(step=0, attempt=0, contributors=(1, 2), length=4)
    with pytest.raises(PolicyViolation, match="cohort of 2"):
        members[1].mask(pair, np.zeros(4, np.uint32))
    assert members[1].stage is MemberStage.READY
    members[1].mask(
        StepContext(step=0, attempt=0, contributors=(1, 2, 3), length=4), np.zeros(4, np.uint32)
    )


def test_members_with_other_parameters_never_agree_on_a_session():
    """A member whose encoding parameters (or ring) differ is named in ParameterMismatch; the
    others stop instead of summing incompatible vectors."""
    session_id = os.urandom(32)
    members = [
        SessionMember(session_id, 1, policy=ClientPolicy(min_clients=3)),
        SessionMember(session_id, 2, policy=ClientPolicy(min_clients=3)),
        SessionMember(session_id, 3, parameters=b"\x01" * 32, policy=ClientPolicy(min_clients=3)),
    ]
    adverts = {m.member_id: m.advertise() for m in members}
    with pytest.raises(ParameterMismatch, match="client 3"):
        members[0].join(adverts)


def test_a_roster_without_the_members_own_advert_is_refused():
    """A coordinator that swaps a member's key (to sit in the middle) is caught by that member."""
    session_id = os.urandom(32)
    members = {
        i: SessionMember(session_id, i, policy=ClientPolicy(min_clients=3)) for i in (1, 2, 3)
    }
    adverts = {i: m.advertise() for i, m in members.items()}
    impostor = SessionMember(session_id, 1, policy=ClientPolicy(min_clients=3)).advertise()
    with pytest.raises(InconsistentRequest, match="own advert"):
        members[1].join({**adverts, 1: impostor})


def test_mask_refuses_vectors_that_do_not_fit():
    """Wrong dtype, length or a read-only array: a LocalProtocolError, nothing masked."""
    members, config = make_session()
    context = StepContext.every_member(config, step=0, length=8)
    for bad in (np.zeros(8, np.uint64), np.zeros(7, np.uint32), np.zeros(8, np.int32)):
        with pytest.raises(LocalProtocolError, match="writeable contiguous"):
            members[1].mask(context, bad)
    frozen = np.zeros(8, np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(LocalProtocolError):
        members[1].mask(context, frozen)
    assert members[1].stage is MemberStage.READY


# -- messages ------------------------------------------------------------------------------------

_ids = st.lists(st.integers(1, 2**31 - 2), min_size=1, max_size=8, unique=True).map(
    lambda ids: tuple(sorted(ids))
)
_share = st.lists(
    st.integers(0, shamir.PRIME - 1), min_size=shamir.LIMBS, max_size=shamir.LIMBS
).map(lambda limbs: np.array(limbs, dtype="<u4").tobytes())
_payloads = st.one_of(
    st.builds(
        KeyAdvert,
        st.binary(min_size=32, max_size=32),
        st.sampled_from([32, 64]),
        st.floats(0, 0.49),
        st.binary(min_size=32, max_size=32),
    ),
    _ids.flatmap(
        lambda ids: st.builds(
            ShareOffer,
            st.integers(0, 255),
            st.integers(1, 2**40 - 1),
            st.just(ids),
            st.binary(min_size=32, max_size=32),
            st.just(tuple((i, bytes(64)) for i in ids)),
        )
    ),
    st.builds(Status, st.integers(0, 255), st.sampled_from(list(StatusCode))),
    st.builds(
        Decision, st.integers(0, 255), st.sampled_from([Outcome.RETRY, Outcome.RECOVER]), _ids
    ),
    st.builds(SeedReveal, st.integers(0, 255), st.binary(min_size=32, max_size=32)),
    _ids.flatmap(
        lambda ids: st.builds(
            ShareReveal,
            st.integers(0, 255),
            st.tuples(*[st.tuples(st.just(i), _share) for i in ids]),
        )
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    payload=_payloads,
    step=st.integers(0, 2**32 - 1),
    sender=st.integers(0, 2**32 - 1),
    cut=st.integers(1, 60),
)
def test_messages_round_trip_and_any_truncation_is_malformed(payload, step, sender, cut):
    """Canonical binary: decode(encode(m)) == m with its header; every truncation raises
    MalformedMessage and nothing else."""
    session_id = os.urandom(32)
    data = encode(payload, session_id=session_id, step=step, sender=sender)
    envelope = decode(data, expect=payload.KIND)
    assert (envelope.payload, envelope.session_id, envelope.step, envelope.sender) == (
        payload,
        session_id,
        step,
        sender,
    )
    with pytest.raises(MalformedMessage):
        decode(data[: max(0, len(data) - cut)])
    with pytest.raises(MalformedMessage):
        decode(data + b"\x00")


def test_a_message_of_another_kind_or_version_is_refused():
    """The expected kind is enforced; another protocol version raises UnsupportedVersion."""
    data = encode(Status(0, StatusCode.COMPLETE), session_id=bytes(32), step=0, sender=1)
    with pytest.raises(MalformedMessage, match="expected a DECISION"):
        decode(data, expect=MultiStepKind.DECISION)
    with pytest.raises(UnsupportedVersion):
        decode(data[:4] + b"\x09" + data[5:])
    with pytest.raises(MalformedMessage, match="bad magic"):
        decode(b"XXXX" + data[4:])


def _slow_then_on_time_attack(members, config, inputs) -> bool:
    """The aggregator's attack on a member that is slow at step 0 and on time at step 1.

    At step 0 the aggregator obtains member 1's pairwise seeds of that step (what a protocol
    that unmasks a slow member must hand out); at step 1 member 1 is on time, so its self-mask
    seed is revealed as usual. The aggregator removes both from member 1's masked vector of
    step 1 and checks whether member 1's input comes out."""
    from secagg.hazmat.prg import MaskTerm, accumulate
    from secagg.multistep import keys

    step0 = StepContext.every_member(config, step=0, length=4096)
    step1 = StepContext.every_member(config, step=1, length=4096)
    target = members[1]
    reconstructed = {
        peer: keys.step_mask_seed(target._pair_secrets[peer], step0.digest(config), 1, peer)
        for peer in config.members
        if peer != 1
    }
    masked, _ = masked_step(members, config, step1, inputs)
    seed = decode(target.reveal(decision(config, step1, Outcome.REVEAL))).payload.seed
    vector = masked[1].copy()
    terms = [MaskTerm(keys.self_mask_seed(seed, step1.digest(config), 1), subtract=True)]
    terms += [MaskTerm(s, subtract=peer > 1) for peer, s in reconstructed.items()]
    accumulate(vector, terms)
    return bool(np.array_equal(vector, inputs[1]))


def test_a_members_seeds_of_one_step_do_not_unmask_it_at_the_next(monkeypatch):
    """SECURITY.md, "Secure data-parallel training": a member slow at one step and on time at the
    next. Its pairwise seeds of the first step (had they been revealed to unmask it) and its
    self-mask seed of the second (revealed because it was on time) leave its second input masked,
    since every step's pairwise seeds come from HKDF of the pair secret and the step digest. The
    same aggregator recovers the input exactly from a weakened member whose pairwise seeds ignore
    the step (Bonawitz et al. 2017's masks reused across rounds)."""
    from secagg.multistep import keys

    members, config = make_session()
    inputs = _inputs(config.members, 4096)
    assert not _slow_then_on_time_attack(members, config, inputs)

    original = keys.step_mask_seed
    monkeypatch.setattr(
        keys, "step_mask_seed", lambda secret, digest, a, b: original(secret, b"\0" * 32, a, b)
    )
    members, config = make_session()
    assert _slow_then_on_time_attack(members, config, inputs)


def test_members_may_unmask_one_slice_each():
    """A synchronous step's members may each remove the self masks from one slice of the sum
    (starting on a 16-byte block) and exchange the results: the slices equal the whole sum
    unmasked at once. A slice off a block boundary or past the end is refused."""
    members, config = make_session()
    context = StepContext.every_member(config, step=0, length=1001)
    inputs = _inputs(config.members, 1001)
    masked, offers = masked_step(members, config, context, inputs)
    total = np.sum(list(masked.values()), axis=0, dtype=config.word_dtype)
    unmasker = StepUnmasker(config, context)
    reveal = decision(config, context, Outcome.REVEAL)
    for member_id in context.contributors:
        unmasker.add_offer(offers[member_id])
        unmasker.add_seed(members[member_id].reveal(reveal))
    pieces = total.copy()
    for start in range(0, 1001, 252):
        unmasker.unmask(pieces[start : start + 252], offset=start)
    unmasker.unmask(total)
    assert np.array_equal(pieces, total)
    assert np.array_equal(total, np.sum(list(inputs.values()), axis=0, dtype=np.uint32))
    with pytest.raises(LocalProtocolError):
        unmasker.unmask(total[2:10].copy(), offset=2)
    with pytest.raises(LocalProtocolError):
        unmasker.unmask(total[:8].copy(), offset=1000)
