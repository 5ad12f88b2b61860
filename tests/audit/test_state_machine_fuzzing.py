"""Fuzzing the state machines with random message sequences (hypothesis).

Any sequence of genuine, replayed, reordered or mutated messages: only the project's typed
errors escape, and after a non-sticky error the receiver's stage is unchanged.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import (
    AuthenticationFailed,
    ClientStage,
    InconsistentRequest,
    SecAggError,
    ThresholdNotMet,
    UnknownSender,
)
from tests.secagg.harness import Round

STICKY = (AuthenticationFailed, InconsistentRequest, ThresholdNotMet, UnknownSender)


def _recorded_round(identities: bool):
    r = Round(4, threshold=3, neighbours=3, identities=identities, seed=21)
    to_server, to_client = [], []
    for client in r.clients.values():
        data = client.advertise_keys()
        to_server.append(data)
        r.server.receive(data)
    outgoing = r.server.close_phase()
    while outgoing:
        for u, data in outgoing.items():
            to_client.append((u, data))
            reply = r.clients[u].receive(data)
            to_server.append(reply)
            r.server.receive(reply)
        outgoing = r.server.close_phase()
    return to_server, to_client


POOLS = {identities: _recorded_round(identities) for identities in (False, True)}


def _mutate(data: bytes, draw) -> bytes:
    choice = draw(st.sampled_from(["keep", "flip", "truncate", "extend"]))
    if choice == "keep":
        return data
    buffer = bytearray(data)
    if choice == "flip":
        buffer[draw(st.integers(0, len(buffer) - 1))] ^= draw(st.integers(1, 255))
        return bytes(buffer)
    if choice == "truncate":
        return bytes(buffer[: draw(st.integers(0, len(buffer) - 1))])
    return bytes(buffer) + draw(st.binary(min_size=1, max_size=8))


def _fuzz_server(identities: bool, data) -> None:
    to_server, _ = POOLS[identities]
    r = Round(4, threshold=3, neighbours=3, identities=identities, seed=21)
    for _ in range(data.draw(st.integers(1, 25))):
        message = _mutate(data.draw(st.sampled_from(to_server)), data.draw)
        if data.draw(st.booleans()) and r.server.stage.value.startswith("collecting"):
            try:
                r.server.close_phase()
            except SecAggError:
                return  # a failed round is final (documented sticky FAILED)
        before = (r.server.stage, r.server.expected)
        try:
            r.server.receive(message)
        except SecAggError:
            assert (r.server.stage, r.server.expected) == before


def _fuzz_client(identities: bool, data) -> None:
    _, to_client = POOLS[identities]
    r = Round(4, threshold=3, neighbours=3, identities=identities, seed=21)
    client = r.clients[1]
    client.advertise_keys()
    for _ in range(data.draw(st.integers(1, 15))):
        _, genuine = data.draw(st.sampled_from(to_client))
        message = _mutate(genuine, data.draw)
        before = client.stage
        try:
            client.receive(message)
        except SecAggError as error:
            assert client.stage in (before, ClientStage.ERROR)
            if client.stage is not before:  # only the documented sticky errors stop a client
                assert isinstance(error, STICKY), f"{type(error).__name__} changed the stage"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identities=st.booleans(), data=st.data())
def test_server_survives_random_message_sequences(identities, data):
    """Only typed errors escape the server; a rejected message leaves it unchanged."""
    _fuzz_server(identities, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identities=st.booleans(), data=st.data())
def test_client_survives_random_message_sequences(identities, data):
    """Only typed errors escape the client; an error moves it only to the sticky ERROR stage,
    and only for the error classes SECURITY.md documents as sticky."""
    _fuzz_client(identities, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identities=st.booleans(), data=st.data())
def test_state_machines_long_fuzzing_profile(identities, data):
    """The two fuzzers above with 20x more sequences (``pytest -m slow``)."""
    _fuzz_server(identities, data)
    _fuzz_client(identities, data)
