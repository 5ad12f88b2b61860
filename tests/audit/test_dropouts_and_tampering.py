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


def test_flipped_bits_in_client_messages_never_change_the_sum():
    """With identities every client message is signed (Ed25519 over header and body): flipping
    any one byte of any client message of any kind is refused with a typed error."""
    r, log = _capture(identities=True)
    expected = r.server.result.total.copy()
    kinds_checked = set()
    for _phase, data in log["to_server"]:
        kind = messages.decode(data, max_bytes=1 << 22).kind
        if kind in kinds_checked:
            continue
        kinds_checked.add(kind)
        for position in range(0, len(data), max(1, len(data) // 40)):
            tampered = bytearray(data)
            tampered[position] ^= 0x01
            fresh = Round(4, threshold=3, neighbours=3, identities=True, seed=11)
            with pytest.raises(SecAggError):
                fresh.server.receive(bytes(tampered))
    assert len(kinds_checked) == 5  # advertise, share keys, masked input, consistency, unmask
    assert np.array_equal(expected, r.expected_sum(r.server.result.contributors))


def test_flipped_bits_in_server_messages_are_refused_by_clients():
    """Every server message kind, every sampled byte flipped: the client raises a typed error
    (the message is malformed, of another session, fails authentication, or contradicts the
    client's state) and never replies with data derived from the forgery."""
    _, log = _capture(identities=True)
    seen = set()
    for phase, receiver, data in log["to_client"]:
        kind = messages.decode(data, max_bytes=1 << 22).kind
        if kind in seen:
            continue
        seen.add(kind)
        for position in range(0, len(data), max(1, len(data) // 40)):
            tampered = bytearray(data)
            tampered[position] ^= 0x01
            fresh = _replay_to_client(phase, receiver)
            try:
                fresh.receive(bytes(tampered))
            except SecAggError:
                continue
            pytest.fail(f"{kind.name}: flipping byte {position} was accepted")
    assert len(seen) == 4  # roster, share bundle, consistency request, unmask request


def _replay_to_client(phase: int, receiver: int) -> secagg.Client:
    """The receiving client, in the state it had when the recorded message reached it."""
    r = Round(4, threshold=3, neighbours=3, identities=True, seed=11)
    for client in r.clients.values():
        r.server.receive(client.advertise_keys())
    outgoing = r.server.close_phase()
    for _ in range(1, phase):
        outgoing = r.step(outgoing)
    return r.clients[receiver]
