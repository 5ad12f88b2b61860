"""A malicious server against honest clients (identities on): every attack is refused.

Bonawitz et al. 2017, Sec. 4 and 6: double masking (a client never reveals both secrets of one
peer), the consistency check (the server commits to one U3 signed by >= t clients), signed keys
(no man in the middle, no Sybils), and session binding (no replay across rounds or sessions).
"""

import dataclasses

import pytest

from secagg import (
    AuthenticationFailed,
    ClientStage,
    InconsistentRequest,
    MalformedMessage,
    UnexpectedPhase,
    UnknownSender,
    WrongSession,
    messages,
)
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom
from tests.secagg.harness import Round


def _payload(data: bytes):
    return messages.decode(data, max_bytes=1 << 22).payload


def test_asking_for_both_shares_of_one_peer_is_refused():
    """Double-masking rule (Bonawitz et al. 2017, Sec. 4, Round 4): revealing both b_v and s_v
    would unmask v's input; the client refuses and stops."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    honest = _payload(r.until_unmask()[1])
    lie = messages.UnmaskRequest(
        tuple(sorted(honest.alive)), tuple(sorted({*honest.dropped, 2})), honest.signatures
    )
    with pytest.raises(InconsistentRequest):
        r.clients[1].receive(r.from_server(lie))
    assert r.clients[1].stage is ClientStage.ERROR


def test_different_dropout_stories_to_different_clients_are_caught():
    """Consistency check (Bonawitz et al. 2017, Sec. 6, active security): the server tells client
    1 that client 5 sent its input and client 2 that it did not; the signatures collected on one
    story do not verify on the other, so the client given the other story refuses."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    r.step(r.step(r.advertise()))  # up to the consistency requests
    story_a = messages.ConsistencyRequest((1, 2, 3, 4, 5))
    story_b = messages.ConsistencyRequest((1, 2, 3, 4))
    signatures = {}
    for u in (1, 3, 4):
        signatures[u] = _payload(r.clients[u].receive(r.from_server(story_a))).signature
    r.clients[2].receive(r.from_server(story_b))  # client 2 signs the other story
    request = messages.UnmaskRequest(
        alive=(1, 2, 3, 4), dropped=(5,), signatures=tuple(sorted(signatures.items()))
    )
    with pytest.raises((AuthenticationFailed, InconsistentRequest)):
        r.clients[2].receive(r.from_server(request))
    assert r.clients[2].stage is ClientStage.ERROR


def test_messages_replayed_from_another_round_or_session_are_refused():
    """Session binding: every message carries session id and round; a replay does nothing."""
    old = Round(4, threshold=3, neighbours=3, identities=True, seed=1, round_index=0)
    new = Round(4, threshold=3, neighbours=3, identities=True, seed=2, round_index=1)
    old_roster = old.advertise()[1]
    new.advertise()
    with pytest.raises(WrongSession):
        new.clients[1].receive(old_roster)
    assert new.clients[1].stage is ClientStage.KEYS_ADVERTISED
    replay = Round(4, threshold=3, neighbours=3, identities=True, seed=1, round_index=0)
    message = replay.clients[1].advertise_keys()
    fresh = Round(4, threshold=3, neighbours=3, identities=True, seed=3, round_index=0)
    with pytest.raises(WrongSession):
        fresh.server.receive(message)


def test_sybil_clients_are_refused():
    """With identities, a client outside the cohort is refused by the server, and a roster that
    injects one (or swaps a member's keys for the server's own) is refused by the clients."""
    r = Round(5, threshold=3, neighbours=4, identities=True)
    sybil_key = SigningKey.generate(DeterministicRandom(99))
    advert = _payload(r.clients[1].advertise_keys())
    with pytest.raises(UnknownSender):
        r.server.receive(r.from_client(advert, 77, signing_key=sybil_key))
    rosters = r.advertise(skip={1})
    roster = _payload(rosters[2])
    injected = dataclasses.replace(
        roster,
        entries=(*roster.entries, messages.RosterEntry(999, b"\x03" * 32, b"\x04" * 32, bytes(64))),
    )
    with pytest.raises(UnknownSender):
        r.clients[2].receive(r.from_server(injected))
    r2 = Round(5, threshold=3, neighbours=4, identities=True)
    roster = _payload(r2.advertise()[2])
    first = roster.entries[0]
    forged_sig = sybil_key.sign(b"server-chosen keys")
    swapped = dataclasses.replace(
        roster,
        entries=(
            messages.RosterEntry(first.client_id, b"\x05" * 32, b"\x06" * 32, forged_sig),
            *roster.entries[1:],
        ),
    )
    with pytest.raises(AuthenticationFailed):
        r2.clients[2].receive(r2.from_server(swapped))


def test_skipping_the_consistency_check_is_refused():
    """With identities the unmask request is only legal after the consistency check."""
    r = Round(4, threshold=3, neighbours=3, identities=True)
    r.step(r.step(r.advertise()))
    with pytest.raises(UnexpectedPhase, match="consistency check"):
        r.clients[1].receive(r.from_server(messages.UnmaskRequest((1, 2, 3, 4), ())))


@pytest.mark.parametrize("attack", ["forged", "truncated", "too-few", "outsider"])
def test_forged_or_truncated_consistency_signatures_are_refused(attack):
    """Ed25519 (RFC 8032) signatures over (session, U3): forged, truncated, too few or from
    outside U3 - each is refused and the client stops."""
    r = Round(5, threshold=4, neighbours=4, identities=True)
    honest = _payload(r.until_unmask()[1])
    signatures = list(honest.signatures)
    signer, signature = signatures[0]
    if attack == "forged":
        signatures[0] = (signer, bytes([signature[0] ^ 0x80]) + signature[1:])
        expected = AuthenticationFailed
    elif attack == "too-few":
        signatures = signatures[:-1]
        expected = Exception  # ThresholdNotMet
    elif attack == "outsider":
        r = Round(5, threshold=4, neighbours=4, identities=True, seed=5)
        outgoing = r.step(r.step(r.advertise(), skip={5}), skip={5})  # client 5 never sent input
        honest = _payload(r.step(outgoing)[1])
        forged = SigningKey.generate(DeterministicRandom(5)).sign(b"x")
        signatures = [*honest.signatures, (5, forged)]
        expected = InconsistentRequest
    else:
        request = r.from_server(
            messages.UnmaskRequest(honest.alive, honest.dropped, tuple(signatures))
        )
        with pytest.raises(MalformedMessage):
            r.clients[1].receive(request[:-10])
        return
    request = messages.UnmaskRequest(honest.alive, honest.dropped, tuple(signatures))
    with pytest.raises(expected):
        r.clients[1].receive(r.from_server(request))
    assert r.clients[1].stage is ClientStage.ERROR
