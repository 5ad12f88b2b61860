"""Dropouts at every phase, late clients with stale messages, and tampered bytes.

Every flipped bit in any message leads to a typed error at its receiver and never to a wrong
sum (identities on: every client message is signed, every server message is checked against the
client's own state); late or stale messages are refused without changing the server.
"""

import numpy as np
import pytest

import secagg
from secagg import RemoteProtocolError, SecAggError, ServerStage, messages
from tests.secagg.harness import Round


@pytest.mark.parametrize("late_phase", ["share-keys", "masked-input", "unmask"])
def test_late_clients_with_stale_messages_are_refused(late_phase):
    """A client that missed a phase and comes back with its message after the phase closed is
    refused (UnexpectedPhase); the round still yields the exact sum of the others."""
    r = Round(6, threshold=4, neighbours=5)
    late = 6
    outgoing = r.advertise()
    stale = None
    for phase in ("share-keys", "masked-input", "unmask"):
        skip = {late} if phase == late_phase or stale is not None else set()
        if phase == late_phase:
            stale = r.clients[late].receive(outgoing[late])  # produced, delivered too late
        outgoing = r.step(outgoing, skip=skip)
        if stale is not None and r.server.stage is not ServerStage.DONE:
            with pytest.raises(RemoteProtocolError):
                r.server.receive(stale)
    contributors = r.server.result.contributors
    assert np.array_equal(r.server.result.total, r.expected_sum(contributors))
    if late_phase == "unmask":
        assert late in contributors  # its masked input arrived before it went silent


def _capture(identities: bool) -> tuple[Round, dict]:
    """A round with every message recorded as (receiver, phase index, bytes)."""
    r = Round(4, threshold=3, neighbours=3, identities=identities, seed=11)
    log = {"to_server": [], "to_client": []}
    for client in r.clients.values():
        data = client.advertise_keys()
        log["to_server"].append((0, data))
        r.server.receive(data)
    outgoing = r.server.close_phase()
    phase = 1
    while outgoing:
        for u, data in outgoing.items():
            log["to_client"].append((phase, u, data))
            reply = r.clients[u].receive(data)
            log["to_server"].append((phase, reply))
            r.server.receive(reply)
        outgoing = r.server.close_phase()
        phase += 1
    return r, log


def _one_of_each_kind(entries):
    """The first recorded message of each kind, with its record."""
    seen = set()
    for entry in entries:
        kind = messages.decode(entry[-1], max_bytes=1 << 22).kind
        if kind not in seen:
            seen.add(kind)
            yield kind, entry


def _flips(data: bytes):
    """About 40 single-byte flips spread over the whole message, header included."""
    for position in range(0, len(data), max(1, len(data) // 40)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        yield position, bytes(tampered)


def _round_at(phase: int) -> Round:
    """The recorded round replayed (same seed) until the server collects ``phase``."""
    r = Round(4, threshold=3, neighbours=3, identities=True, seed=11)
    if phase == 0:
        return r
    for client in r.clients.values():
        r.server.receive(client.advertise_keys())
    outgoing = r.server.close_phase()
    for _ in range(1, phase):
        outgoing = r.step(outgoing)
    for u, data in outgoing.items():  # the clients' replies of this phase, not yet delivered
        r.clients[u].receive(data)
    return r


def test_flipped_bits_in_client_messages_are_refused_and_the_genuine_accepted():
    """With identities every client message is signed (Ed25519 over header and body): any one
    flipped byte in any client message kind is refused by a server waiting for exactly that
    message, which then accepts the genuine one; the round's sum is exact."""
    r, log = _capture(identities=True)
    kinds = 0
    for kind, (phase, data) in _one_of_each_kind(log["to_server"]):
        kinds += 1
        for position, tampered in _flips(data):
            server = _round_at(phase).server
            with pytest.raises(SecAggError):
                server.receive(tampered)
            assert server.receive(data) == messages.decode(data, max_bytes=1 << 22).sender, (
                kind,
                position,
            )
    assert kinds == 5  # advertise, share keys, masked input, consistency, unmask
    assert np.array_equal(r.server.result.total, r.expected_sum(r.server.result.contributors))


def test_flipped_bits_in_server_messages_are_refused_by_clients():
    """Every server message kind, every sampled byte flipped: the client raises a typed error
    (malformed, another session, failed authentication, or contradicting its own state) and
    never replies to the forgery."""
    _, log = _capture(identities=True)
    kinds = 0
    for kind, (phase, receiver, data) in _one_of_each_kind(log["to_client"]):
        kinds += 1
        for position, tampered in _flips(data):
            client = _replay_to_client(phase, receiver)
            with pytest.raises(SecAggError):
                client.receive(tampered)
                pytest.fail(f"{kind.name}: flipping byte {position} was accepted")
    assert kinds == 4  # roster, share bundle, consistency request, unmask request


def _replay_to_client(phase: int, receiver: int) -> secagg.Client:
    """The receiving client, in the state it had when the recorded message reached it."""
    r = Round(4, threshold=3, neighbours=3, identities=True, seed=11)
    for client in r.clients.values():
        r.server.receive(client.advertise_keys())
    outgoing = r.server.close_phase()
    for _ in range(1, phase):
        outgoing = r.step(outgoing)
    return r.clients[receiver]
