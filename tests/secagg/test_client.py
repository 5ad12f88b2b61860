"""The client state machine against a lying or broken server."""

import dataclasses

import numpy as np
import pytest

from secagg import (
    AuthenticationFailed,
    ClientStage,
    ConfigurationError,
    InconsistentRequest,
    InvalidInput,
    LocalProtocolError,
    MalformedMessage,
    ThresholdNotMet,
    UnexpectedPhase,
    UnknownSender,
    UnsupportedVersion,
    WrongSession,
    messages,
)
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom
from tests.secagg.harness import Round


def _unmask_request(round_, client_id, outgoing):
    return messages.decode(outgoing[client_id], max_bytes=1 << 20).payload


def test_refuses_to_reveal_both_shares_of_one_peer():
    """Bonawitz et al. 2017, Sec. 4 (double masking): a client never reveals both b_v and s_v.

    A lying server calls peer 2 both alive and dropped; client 1 refuses and stops for good.
    """
    r = Round(5, threshold=3, neighbours=4)
    honest = _unmask_request(r, 1, r.until_unmask())
    assert 2 in honest.alive
    lie = messages.UnmaskRequest(alive=honest.alive, dropped=tuple(sorted({*honest.dropped, 2})))
    with pytest.raises(
        InconsistentRequest, match="both the self-mask share and the key share of client 2"
    ):
        r.clients[1].receive(r.from_server(lie))
    assert r.clients[1].stage is ClientStage.ERROR
    with pytest.raises(LocalProtocolError):
        r.clients[1].receive(r.from_server(honest))


def test_refuses_key_share_of_a_peer_it_was_told_is_alive():
    """A peer listed in U3 in the consistency check cannot be called dropped afterwards."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    honest = _unmask_request(r, 1, r.until_unmask())
    lie = messages.UnmaskRequest(
        alive=tuple(u for u in honest.alive if u != 3), dropped=(3,), signatures=honest.signatures
    )
    with pytest.raises(InconsistentRequest):
        r.clients[1].receive(r.from_server(lie))
    assert r.clients[1].stage is ClientStage.ERROR


def test_answers_only_one_unmask_request():
    """A second unmask request in one session is a lie; the client refuses it."""
    r = Round(4, threshold=3, neighbours=3)
    outgoing = r.until_unmask()
    r.clients[1].receive(outgoing[1])
    with pytest.raises(InconsistentRequest, match="second unmask request"):
        r.clients[1].receive(outgoing[1])


def test_unmask_request_must_name_every_neighbour_and_itself():
    """The request names each neighbour exactly once, and the client itself as alive."""
    r = Round(5, threshold=3, neighbours=4)
    honest = _unmask_request(r, 1, r.until_unmask())
    partial = messages.UnmaskRequest(alive=honest.alive[:-1], dropped=honest.dropped)
    with pytest.raises(InconsistentRequest, match="missing"):
        r.clients[1].receive(r.from_server(partial))


def test_consistency_check_requires_t_valid_signatures():
    """With identities, the unmask request must carry valid signatures over U3 from t members of
    each watched neighbourhood (the client's own counts): the server sends exactly t - 1 others,
    and one fewer is refused."""
    r = Round(5, threshold=4, neighbours=4, identities=True)
    honest = _unmask_request(r, 1, r.until_unmask())
    assert len(honest.signatures) == 3
    too_few = messages.UnmaskRequest(honest.alive, honest.dropped, honest.signatures[:-1])
    with pytest.raises(ThresholdNotMet):
        r.clients[1].receive(r.from_server(too_few))
    forged_r = Round(5, threshold=4, neighbours=4, identities=True, seed=1)
    honest = _unmask_request(forged_r, 2, forged_r.until_unmask())
    signer, signature = honest.signatures[0]
    forged = messages.UnmaskRequest(
        honest.alive,
        honest.dropped,
        ((signer, bytes([signature[0] ^ 1]) + signature[1:]), *honest.signatures[1:]),
    )
    with pytest.raises(AuthenticationFailed):
        forged_r.clients[2].receive(forged_r.from_server(forged))


def test_consistency_request_that_omits_the_client_is_refused():
    """The server cannot tell a client that sent its input that it dropped out."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    r.step(r.step(r.advertise()))
    request = messages.ConsistencyRequest((2, 3, 4, 5))
    with pytest.raises(InconsistentRequest, match="omits this client"):
        r.clients[1].receive(r.from_server(request))


def test_consistency_request_naming_a_neighbour_that_never_shared_keys_is_refused():
    """U3 is a subset of U2 (Bonawitz et al. 2017, Fig. 4, ConsistencyCheck): a neighbour that
    sent no shares cannot have sent a masked input, so a U3 naming it is a lie the client
    refuses before it signs anything."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    requests = r.step(r.step(r.advertise(), skip={2}), skip={2})
    honest = messages.decode(requests[1], max_bytes=1 << 20).payload
    assert 2 not in honest.survivors
    lie = messages.ConsistencyRequest((1, 2, 3, 4, 5))
    with pytest.raises(InconsistentRequest, match=r"neighbours \[2\] that never shared keys"):
        r.clients[1].receive(r.from_server(lie))


def test_roster_with_a_stranger_or_sybil_is_refused():
    """Rosters may list only cohort members that are neighbours (no injected Sybils)."""
    r = Round(10, threshold=3, neighbours=4)
    rosters = r.advertise()
    roster = messages.decode(rosters[1], max_bytes=1 << 20).payload
    sybil = dataclasses.replace(
        roster, entries=(*roster.entries, messages.RosterEntry(999, b"\x09" * 32, b"\x0a" * 32))
    )
    with pytest.raises(UnknownSender):
        r.clients[1].receive(r.from_server(sybil))
    r = Round(10, threshold=3, neighbours=4)
    rosters = r.advertise()
    roster = messages.decode(rosters[1], max_bytes=1 << 20).payload
    neighbours = {e.client_id for e in roster.entries}
    stranger = min(set(range(2, 11)) - neighbours)
    forged = dataclasses.replace(
        roster,
        entries=tuple(
            sorted(
                (*roster.entries, messages.RosterEntry(stranger, b"\x09" * 32, b"\x0a" * 32)),
                key=lambda e: e.client_id,
            )
        ),
    )
    with pytest.raises(InconsistentRequest, match="not a neighbour"):
        r.clients[1].receive(r.from_server(forged))


def test_roster_with_a_forged_key_signature_is_refused():
    """With identities, a server cannot substitute a peer's keys (man in the middle)."""
    r = Round(4, threshold=3, neighbours=3, identities=True)
    roster = messages.decode(r.advertise()[1], max_bytes=1 << 20).payload
    first = roster.entries[0]
    mitm = SigningKey.generate(DeterministicRandom(9)).sign(b"anything")
    forged = dataclasses.replace(
        roster,
        entries=(
            messages.RosterEntry(first.client_id, first.channel_key, first.mask_key, mitm),
            *roster.entries[1:],
        ),
    )
    with pytest.raises(AuthenticationFailed):
        r.clients[1].receive(r.from_server(forged))
    assert r.clients[1].stage is ClientStage.ERROR


def test_too_small_neighbourhood_stops_the_client():
    """A client with fewer than t holders for its shares refuses to share (ThresholdNotMet)."""
    r = Round(5, threshold=4, neighbours=4)
    roster = messages.decode(r.advertise()[1], max_bytes=1 << 20).payload
    small = dataclasses.replace(roster, entries=roster.entries[:2])
    with pytest.raises(ThresholdNotMet):
        r.clients[1].receive(r.from_server(small))


def test_tampered_ciphertext_in_the_bundle_is_refused():
    """AEAD binds the shares: a flipped bit fails authentication, never yields wrong shares."""
    r = Round(4, threshold=3, neighbours=3)
    bundles = r.step(r.advertise())
    bundle = messages.decode(bundles[1], max_bytes=1 << 20).payload
    sender, ciphertext = bundle.ciphertexts[0]
    tampered = messages.ShareBundle(
        ((sender, bytes([ciphertext[0] ^ 1]) + ciphertext[1:]), *bundle.ciphertexts[1:])
    )
    with pytest.raises(AuthenticationFailed):
        r.clients[1].receive(r.from_server(tampered))


def test_ciphertext_relayed_to_the_wrong_receiver_is_refused():
    """Associated data names the receiver: a ciphertext for client 2 does not open at client 3."""
    r = Round(4, threshold=3, neighbours=3)
    bundles = r.step(r.advertise())
    for_two = dict(messages.decode(bundles[2], max_bytes=1 << 20).payload.ciphertexts)
    for_three = messages.decode(bundles[3], max_bytes=1 << 20).payload
    swapped = messages.ShareBundle(
        tuple((s, for_two[s]) if s == 1 else (s, c) for s, c in for_three.ciphertexts)
    )
    with pytest.raises(AuthenticationFailed):
        r.clients[3].receive(r.from_server(swapped))


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"session_id": b"\x01" * 32}, WrongSession),
        ({"round_index": 7}, WrongSession),
        ({"sender": 3}, UnknownSender),
    ],
)
def test_misaddressed_messages_leave_the_client_unchanged(header, error):
    """Messages of another session, round or sender raise and change nothing."""
    r = Round(4, threshold=3, neighbours=3)
    rosters = r.advertise()
    roster = messages.decode(rosters[1], max_bytes=1 << 20).payload
    with pytest.raises(error):
        r.clients[1].receive(r.from_server(roster, **header))
    assert r.clients[1].stage is ClientStage.KEYS_ADVERTISED
    r.clients[1].receive(rosters[1])  # the genuine message still works
    assert r.clients[1].stage is ClientStage.KEYS_SHARED


def test_malformed_and_out_of_phase_messages_leave_the_client_unchanged():
    """Truncated, oversized, wrong-version or out-of-phase bytes raise typed errors, state intact."""
    r = Round(4, threshold=3, neighbours=3)
    rosters = r.advertise()
    genuine = rosters[1]
    with pytest.raises(MalformedMessage):
        r.clients[1].receive(genuine[:-1])
    with pytest.raises(MalformedMessage):
        r.clients[1].receive(genuine + b"\x00")
    with pytest.raises(MalformedMessage):
        r.clients[1].receive(b"\x00" * (1 << 22))
    with pytest.raises(UnsupportedVersion):
        r.clients[1].receive(genuine[:4] + b"\x01" + genuine[5:])  # the first version
    with pytest.raises(UnexpectedPhase):
        r.clients[1].receive(r.from_server(messages.ShareBundle(())))
    assert r.clients[1].stage is ClientStage.KEYS_ADVERTISED
    r.clients[1].receive(genuine)


def test_input_must_be_set_before_masking_and_fit_the_configuration():
    """Local misuse raises LocalProtocolError/InvalidInput and leaves the client usable."""
    r = Round(4, threshold=3, neighbours=3)
    bundles = r.step(r.advertise())
    client = r.clients[1]
    client._input = None  # as if set_input() had never been called
    with pytest.raises(LocalProtocolError, match="set_input"):
        client.receive(bundles[1])
    with pytest.raises(InvalidInput):
        client.set_input(np.zeros(5, dtype=int))
    with pytest.raises(InvalidInput):
        client.set_input(np.zeros(6))
    client.set_input(r.inputs[1])
    r.server.receive(client.receive(bundles[1]))
    with pytest.raises(LocalProtocolError):
        client.set_input(r.inputs[1])
    with pytest.raises(LocalProtocolError):
        client.advertise_keys()


def test_client_construction_is_validated():
    """A client outside the cohort, or a missing/mismatched identity key, fails at construction."""
    r = Round(3, identities=True)
    from secagg import Client

    with pytest.raises(ConfigurationError):
        Client(r.config, 9, signing_key=r.signing_keys[1])
    with pytest.raises(ConfigurationError):
        Client(r.config, 1)
    with pytest.raises(ConfigurationError):
        Client(r.config, 1, signing_key=r.signing_keys[2])


def test_state_export_and_restore_between_every_message():
    """A client rebuilt from to_state() before every server message completes the round exactly
    as a live one (transports that keep no objects, such as Flower's, rely on this)."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    states = {u: c.to_state() for u, c in r.clients.items()}
    for u in r.clients:
        r.server.receive(r.clients[u].advertise_keys())
        states[u] = r.clients[u].to_state()
    outgoing = r.server.close_phase()
    from secagg import Client

    while outgoing:
        for u, message in outgoing.items():
            client = Client.from_state(r.config, states[u], signing_key=r.signing_keys[u])
            if client.needs_input:
                client.set_input(r.inputs[u])
            r.server.receive(client.receive(message))
            states[u] = client.to_state()
        outgoing = r.server.close_phase()
    assert np.array_equal(r.server.result.total, r.expected_sum(range(1, 6)))


def test_state_of_another_session_is_refused():
    """Saved state is bound to its session digest."""
    from secagg import Client

    a, b = Round(3, seed=1), Round(3, seed=2)
    with pytest.raises(LocalProtocolError, match="another session"):
        Client.from_state(b.config, a.clients[1].to_state())
    with pytest.raises(LocalProtocolError, match="unreadable"):
        Client.from_state(a.config, b"{}")


def test_a_restored_client_keeps_the_policy_it_is_given():
    """Client-side floors survive a restore (Flower rebuilds the client for every message):
    a client whose policy allows no neighbour loss, restored between roster and bundle,
    still refuses a bundle from k - 1 neighbours, which the default policy would accept."""
    from secagg import Client, ClientPolicy

    strict = dataclasses.replace(ClientPolicy.permissive(), max_neighbour_loss=0.0)
    r = Round(5, threshold=3, neighbours=4, policy=strict)
    bundles = r.step(r.advertise())
    bundle = messages.decode(bundles[1], max_bytes=1 << 20).payload
    short = messages.ShareBundle(bundle.ciphertexts[:-1])
    assert ClientPolicy().min_live_neighbours(r.config) <= len(short.ciphertexts)
    restored = Client.from_state(r.config, r.clients[1].to_state(), policy=strict)
    restored.set_input(r.inputs[1])
    with pytest.raises(ThresholdNotMet, match="policy needs 4"):
        restored.receive(r.from_server(short))


def test_a_client_restored_before_it_advertised_starts_the_round():
    """State saved before advertise_keys (no keys yet) restores to a client that joins."""
    from secagg import Client

    r = Round(4, threshold=3, neighbours=3)
    restored = Client.from_state(r.config, r.clients[2].to_state(), policy=r.policy)
    assert restored.stage is ClientStage.NEW
    r.server.receive(restored.advertise_keys())
    assert 2 not in r.server.expected


def test_a_restored_stopped_client_stays_stopped_with_its_reason():
    """A client that stopped (sticky ERROR) stays stopped after a restore and still names the
    reason in its local log."""
    from secagg import Client

    r = Round(5, threshold=3, neighbours=4)
    honest = _unmask_request(r, 1, r.until_unmask())
    lie = messages.UnmaskRequest(alive=honest.alive, dropped=tuple(sorted({*honest.dropped, 2})))
    with pytest.raises(InconsistentRequest):
        r.clients[1].receive(r.from_server(lie))
    restored = Client.from_state(r.config, r.clients[1].to_state(), policy=r.policy)
    assert restored.stage is ClientStage.ERROR
    with pytest.raises(LocalProtocolError, match=r"stopped after: .*both the self-mask share"):
        restored.receive(r.from_server(honest))


def test_a_restored_client_draws_from_the_random_source_it_is_given():
    """Randomness is injected (STYLE.md): two restores of one state with the same seeded source
    send the same shares; with independent system randomness they would differ."""
    from secagg import Client

    r = Round(4, threshold=3, neighbours=3)
    rosters = r.advertise()
    state = r.clients[1].to_state()
    replies = {
        Client.from_state(
            r.config, state, policy=r.policy, random_bytes=DeterministicRandom(7)
        ).receive(rosters[1])
        for _ in range(2)
    }
    assert len(replies) == 1


def test_saving_a_restored_client_gives_back_the_same_state():
    """Restore is lossless at every stage: saving a restored client gives the bytes it was
    restored from, and a client that has not stopped records no error (a restored healthy
    client must not carry a reason to stop into the next save)."""
    import json

    from secagg import Client

    r = Round(4, threshold=3, neighbours=3)
    states = [r.clients[1].to_state()]
    outgoing = r.advertise()
    while outgoing:
        states.append(r.clients[1].to_state())
        outgoing = r.step(outgoing)
    states.append(r.clients[1].to_state())
    for state in states:
        assert json.loads(state)["error"] is None
        restored = Client.from_state(r.config, state, policy=r.policy)
        assert restored.to_state() == state


def test_a_stopped_client_keeps_no_secret_in_its_state():
    """SECURITY.md, "Errors, state and what leaves a client": a client that stops wipes its
    private keys, the shares it holds, its pairwise seeds and its self-mask secret, so the
    state it saves afterwards holds none of them."""
    import json

    r = Round(5, threshold=3, neighbours=4)
    honest = _unmask_request(r, 1, r.until_unmask())
    before = json.loads(r.clients[1].to_state())
    assert before["mask_key"] and before["peer_shares"] and before["self_mask_secret"]
    lie = messages.UnmaskRequest(alive=honest.alive, dropped=tuple(sorted({*honest.dropped, 2})))
    with pytest.raises(InconsistentRequest):
        r.clients[1].receive(r.from_server(lie))
    state = json.loads(r.clients[1].to_state())
    assert state["channel_key"] is None and state["mask_key"] is None
    assert state["peer_shares"] == {} and state["pair_seeds"] == {}
    assert state["channel_secrets"] == {} and state["self_mask_secret"] == ""
