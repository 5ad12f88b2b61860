"""The server state machine against bad, stale, forged and missing client messages."""

import numpy as np
import pytest

from secagg import (
    AuthenticationFailed,
    DuplicateMessage,
    InconsistentShares,
    LocalProtocolError,
    MalformedMessage,
    ParameterMismatch,
    ServerStage,
    ThresholdNotMet,
    UnexpectedPhase,
    UnknownSender,
    WrongSession,
    messages,
)
from tests.secagg.harness import Round


def _advert(r, client_id):
    return messages.decode(r.clients[client_id].advertise_keys(), max_bytes=1 << 20).payload


def test_full_round_by_hand():
    """The hand-driven round yields the exact plaintext sum (harness sanity check)."""
    r = Round(5, threshold=3, neighbours=4)
    r.step(r.until_unmask())
    assert r.server.stage is ServerStage.DONE
    assert np.array_equal(r.server.result.total, r.expected_sum(range(1, 6)))


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"session_id": b"\x02" * 32}, WrongSession),
        ({"round_index": 3}, WrongSession),
        ({"sender_id": 77}, UnknownSender),
    ],
)
def test_misaddressed_messages_are_rejected_without_state_change(header, error):
    """Replays from other sessions or rounds and Sybil senders raise; nothing is recorded."""
    r = Round(4, threshold=3, neighbours=3)
    advert = _advert(r, 1)
    header = dict(header)  # the parameter is shared between runs: never mutate it
    sender = header.pop("sender_id", 1)
    with pytest.raises(error):
        r.server.receive(r.from_client(advert, sender, **header))
    assert r.server.expected == frozenset({1, 2, 3, 4})
    r.server.receive(r.from_client(advert, 1))
    assert r.server.expected == frozenset({2, 3, 4})


def test_duplicates_and_out_of_phase_messages_are_rejected():
    """A second message from one client, or one for another phase, is refused; the first stands."""
    r = Round(4, threshold=3, neighbours=3)
    first = r.clients[1].advertise_keys()
    r.server.receive(first)
    with pytest.raises(DuplicateMessage):
        r.server.receive(first)
    with pytest.raises(UnexpectedPhase):
        r.server.receive(r.from_client(messages.ConsistencySignature(bytes(64)), 2))
    assert r.server.expected == frozenset({2, 3, 4})


def test_late_client_from_an_earlier_phase_is_refused():
    """A client that missed the key phase cannot join later with stale messages."""
    r = Round(5, threshold=3, neighbours=4)
    rosters = r.advertise(skip={5})
    late = r.clients[5].advertise_keys()
    with pytest.raises(UnexpectedPhase):
        r.server.receive(late)
    assert 5 not in rosters


def test_parameter_mismatch_is_detected_at_the_first_message():
    """A client configured differently (digest differs) is refused with ParameterMismatch."""
    r = Round(4, threshold=3, neighbours=3)
    advert = _advert(r, 1)
    other = messages.AdvertiseKeys(b"\x00" * 32, advert.channel_key, advert.mask_key)
    with pytest.raises(ParameterMismatch):
        r.server.receive(r.from_client(other, 1))


def test_key_reuse_and_low_order_keys_are_refused():
    """Public keys must be fresh per client and of full order."""
    r = Round(4, threshold=3, neighbours=3)
    advert = _advert(r, 1)
    r.server.receive(r.from_client(advert, 1))
    copy = messages.AdvertiseKeys(advert.config_digest, advert.channel_key, _advert(r, 2).mask_key)
    with pytest.raises(MalformedMessage, match="reuses"):
        r.server.receive(r.from_client(copy, 2))
    low = messages.AdvertiseKeys(advert.config_digest, bytes(32), _advert(r, 3).mask_key)
    with pytest.raises(MalformedMessage, match="low-order"):
        r.server.receive(r.from_client(low, 3))


def test_signatures_are_required_with_identities():
    """With identities, an unsigned or wrongly signed client message is refused."""
    r = Round(4, threshold=3, neighbours=3, identities=True)
    advert = _advert(r, 1)
    with pytest.raises(AuthenticationFailed):
        r.server.receive(r.from_client(advert, 1, signing_key=None))
    with pytest.raises(AuthenticationFailed):
        r.server.receive(r.from_client(advert, 1, signing_key=r.signing_keys[2]))
    r.server.receive(r.from_client(advert, 1))


def test_masked_input_of_the_wrong_shape_is_refused():
    """The masked vector must hold exactly d words of the ring's width."""
    r = Round(4, threshold=3, neighbours=3)
    r.step(r.advertise())
    with pytest.raises(MalformedMessage):
        r.server.receive(r.from_client(messages.MaskedInput(4, bytes(4 * 5)), 1))
    with pytest.raises(MalformedMessage):
        r.server.receive(r.from_client(messages.MaskedInput(8, bytes(8 * 6)), 1))


@pytest.mark.parametrize("ring_bits", [16, 40])
def test_masked_input_with_a_word_outside_a_narrow_ring_is_refused(ring_bits):
    """On a ring narrower than its storage word (Z_2^16 in 32-bit words, Z_2^40 in 64-bit
    words) every masked word must lie below 2^ring_bits: a word at 2^ring_bits is refused, the
    largest ring element is accepted."""
    r = Round(4, threshold=3, neighbours=3, ring_bits=ring_bits)
    r.step(r.advertise())
    dtype = r.config.word_dtype
    top = np.zeros(r.config.vector_length, dtype=dtype)
    top[2] = r.config.ring_mask + 1
    with pytest.raises(MalformedMessage, match="outside the ring"):
        r.server.receive(r.from_client(messages.MaskedInput.from_vector(top), 1))
    top[2] = r.config.ring_mask
    r.server.receive(r.from_client(messages.MaskedInput.from_vector(top), 1))


def test_share_keys_must_address_exactly_the_roster():
    """Shares addressed to clients outside the sender's roster are refused."""
    r = Round(4, threshold=3, neighbours=3)
    rosters = r.advertise()
    genuine = messages.decode(r.clients[1].receive(rosters[1]), max_bytes=1 << 20).payload
    missing = messages.ShareKeys(genuine.commitment, genuine.ciphertexts[1:])
    with pytest.raises(MalformedMessage):
        r.server.receive(r.from_client(missing, 1))


def test_threshold_failure_is_sticky():
    """Below t the server fails for good and never produces a result."""
    r = Round(5, threshold=4, neighbours=4)
    for u in (1, 2, 3):
        r.server.receive(r.clients[u].advertise_keys())
    with pytest.raises(ThresholdNotMet):
        r.server.close_phase()
    assert r.server.stage is ServerStage.FAILED
    with pytest.raises(LocalProtocolError):
        r.server.close_phase()
    with pytest.raises(LocalProtocolError):
        r.server.result  # noqa: B018


def test_result_is_unavailable_before_the_round_ends():
    """Asking for the sum early is a local error, not a partial sum."""
    r = Round(3)
    with pytest.raises(LocalProtocolError):
        r.server.result  # noqa: B018


def test_a_lying_client_share_is_caught_not_summed():
    """A corrupted self-mask share is caught by the commitment: InconsistentShares, no wrong sum."""
    r = Round(3, threshold=3, neighbours=2)
    requests = r.until_unmask()
    for u in (1, 2):
        r.server.receive(r.clients[u].receive(requests[u]))
    honest = messages.decode(r.clients[3].receive(requests[3]), max_bytes=1 << 20).payload
    owner, share = honest.self_mask_shares[0]
    bad_share = (int.from_bytes(share[:4], "little") ^ 1).to_bytes(4, "little") + share[4:]
    lying = messages.UnmaskResponse(
        ((owner, bad_share), *honest.self_mask_shares[1:]), honest.key_shares
    )
    r.server.receive(r.from_client(lying, 3))
    with pytest.raises(InconsistentShares):
        r.server.close_phase()
    assert r.server.stage is ServerStage.FAILED


def test_unmask_response_must_answer_the_request():
    """Extra or missing shares in an unmask response are refused."""
    r = Round(4, threshold=3, neighbours=3)
    requests = r.until_unmask()
    honest = messages.decode(r.clients[1].receive(requests[1]), max_bytes=1 << 20).payload
    extra = messages.UnmaskResponse(honest.self_mask_shares, ((4, bytes(36)),))
    with pytest.raises(MalformedMessage):
        r.server.receive(r.from_client(extra, 1))


def test_the_released_sum_is_read_only():
    """The result cannot be edited in place after the round (a frozen result, like the
    messages): a caller that wants to change it must copy it."""
    r = Round(4, threshold=3, neighbours=3)
    r.step(r.until_unmask())
    total = r.server.result.total
    assert not total.flags.writeable
    with pytest.raises(ValueError):
        total[0] = 1


def test_on_a_sparse_graph_each_client_gets_only_the_signatures_that_certify_it():
    """Server side of "one story per client": each unmask request carries signatures from
    members of the closed neighbourhoods the recipient acts on (itself and the neighbours whose
    shares it holds), about 2(t - 1) + 1 of them (SECURITY.md), and the round completes."""
    from secagg import ClientPolicy
    from secagg.graph import neighbourhoods

    r = Round(24, neighbours=8, threshold=5, identities=True, policy=ClientPolicy.permissive())
    requests = r.until_unmask()
    graph, t = neighbourhoods(r.config), r.config.threshold
    assert not r.config.complete_graph
    for u, data in requests.items():
        request = messages.decode(data, max_bytes=1 << 20).payload
        watched = graph[u] | {u}
        reach = set().union(*(graph[x] | {x} for x in watched))
        signers = {v for v, _ in request.signatures}
        assert signers <= reach - {u}
        assert t - 1 <= len(signers) <= 2 * (t - 1) + 1
    r.step(requests)
    assert np.array_equal(r.server.result.total, r.expected_sum(r.config.client_ids))


@pytest.mark.parametrize(("silent", "kept"), [(2, True), (3, False)])
def test_a_client_left_with_fewer_than_t_minus_1_live_neighbours_gets_no_roster(silent, kept):
    """Server-side viability (Server._viable): a client with fewer than t - 1 live neighbours
    could never meet the threshold, so after key advertisement a client with t - 1 advertising
    neighbours goes on, and one with t - 2 is dropped from the round and gets no roster."""
    from secagg.graph import neighbourhoods

    r = Round(8, threshold=3, neighbours=4)
    assert not r.config.complete_graph and r.config.threshold == 3
    silenced = sorted(neighbourhoods(r.config)[1])[:silent]
    rosters = r.advertise(skip=silenced)
    assert (1 in rosters) is kept
