"""Noise removal after the round: the client bounds the honest clients of any sum from what it
verified itself (secagg.removal) and reveals seeds only for that bound."""

from __future__ import annotations

import numpy as np
import pytest

import secagg
from secagg import messages
from secagg.errors import (
    AuthenticationFailed,
    DuplicateMessage,
    InconsistentRequest,
    LocalProtocolError,
    UnexpectedPhase,
)
from secagg.graph import neighbour_index
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom
from secagg.removal import certified_honest_floor


def _complete(n: int, t: int) -> secagg.SecAggConfig:
    return secagg.SecAggConfig.create(range(1, n + 1), 4, threshold=t, neighbours=n - 1)


def test_in_the_complete_graph_the_floor_is_the_signers_less_the_corrupt():
    """R2 in the complete graph: |Sig| - c, never below t - c."""
    config = _complete(20, 12)
    index = neighbour_index(config)
    for signers in (20, 17, 12):
        assert certified_honest_floor(
            signers=range(1, signers + 1), index=index, threshold=12, corrupt=2
        ) == max(10, signers - 2)


def test_the_floor_falls_back_to_t_minus_c_when_a_signer_could_lose_its_mask_key():
    """R1: if some signer y has |N(y) - Sig| + c >= t, its key could be reconstructed by clients
    outside the story: no removal beyond t - c. The boundary is exact."""
    config = _complete(20, 11)  # k + 1 = 20: R1 needs |Sig| > 20 + c - t
    index = neighbour_index(config)
    # c = 0: R1 holds iff |Sig| > 9; R2 = |Sig| >= 11 = t whenever the protocol completes
    assert certified_honest_floor(signers=range(1, 11), index=index, threshold=11, corrupt=0) == 11
    # with c = 5, |Sig| = 14: 20 - 14 + 5 = 11 >= t fails R1; R2 alone would say 9 > t - c = 6
    assert certified_honest_floor(signers=range(1, 15), index=index, threshold=11, corrupt=5) == 6
    assert certified_honest_floor(signers=range(1, 16), index=index, threshold=11, corrupt=5) == 10


def test_in_a_sparse_graph_the_floor_is_the_thinnest_signed_neighbourhood():
    """R2 in a sparse graph: min over signers y of |N[y] & Sig| - c."""
    config = secagg.SecAggConfig.create(range(1, 61), 4, threshold=16, neighbours=20)
    index = neighbour_index(config)
    signers = set(range(1, 61)) - {5, 6, 7}
    held = [
        len(set(index.ids[index.closed[index.positions([y])[0]]].tolist()) & signers)
        for y in sorted(signers)
    ]
    assert certified_honest_floor(signers=signers, index=index, threshold=16, corrupt=2) == max(
        14, min(held) - 2
    )


class _Round:
    """A completed round with identities, ready for the noise-removal exchange."""

    def __init__(self, n: int = 12, t: int = 7, dropped_at_consistency: tuple[int, ...] = ()):
        rng = DeterministicRandom(9)
        self.keys = {u: SigningKey.generate(rng) for u in range(1, n + 1)}
        self.config = secagg.SecAggConfig.create(
            range(1, n + 1),
            4,
            threshold=t,
            neighbours=n - 1,
            identities={u: k.public_bytes for u, k in self.keys.items()},
            random_bytes=rng,
        )
        self.policy = secagg.ClientPolicy.permissive()
        self.server = secagg.Server(self.config, random_bytes=rng)
        self.clients = {
            u: secagg.Client(
                self.config, u, signing_key=self.keys[u], policy=self.policy, random_bytes=rng
            )
            for u in self.keys
        }
        outgoing = {u: None for u in self.clients}
        for phase in secagg.Phase:
            for u in list(outgoing):
                if phase is secagg.Phase.CONSISTENCY_CHECK and u in dropped_at_consistency:
                    continue
                if phase is secagg.Phase.ADVERTISE_KEYS:
                    reply = self.clients[u].advertise_keys()
                else:
                    if phase is secagg.Phase.MASKED_INPUT:
                        self.clients[u].set_input(np.full(4, u))
                    reply = self.clients[u].receive(outgoing[u])
                self.server.receive(reply)
            outgoing = self.server.close_phase()
        self.requests = self.server.noise_removal_requests()


def _reveal_all(floor: int) -> tuple[tuple[int, bytes], ...]:
    return ((0, bytes([floor]) * 32),)  # encodes the floor the client computed, for the test


def test_every_client_that_unmasked_gets_every_signature_and_answers_once():
    """The server forwards all U3 signatures; each answer is signed, bound to the session and
    sender, and records the floor the client computed (n - c with everyone signing)."""
    run = _Round()
    assert set(run.requests) == set(run.clients)
    request = messages.decode(run.requests[1], max_bytes=1 << 20).payload
    assert [u for u, _ in request.signatures] == list(range(1, 13))
    for u, data in run.requests.items():
        answer = run.server.receive_noise_removal(
            run.clients[u].answer_noise_removal(data, _reveal_all)
        )
        assert answer.honest_floor == 12 - run.policy.corrupt_neighbours(run.config)
    with pytest.raises(UnexpectedPhase, match="second"):
        run.clients[1].answer_noise_removal(run.requests[1], _reveal_all)
    replayed = run.clients[2]._encode(messages.NoiseRemovalResponse(1, ()))
    with pytest.raises(DuplicateMessage, match="second noise-removal answer"):
        run.server.receive_noise_removal(replayed)


def test_clients_that_did_not_sign_lower_the_floor():
    """Two clients drop out of the consistency check: their inputs stay in the sum, but the
    floor counts only verified signers (10 - c)."""
    run = _Round(dropped_at_consistency=(3, 4))
    data = run.requests[1]
    answer = messages.decode(
        run.clients[1].answer_noise_removal(data, _reveal_all), max_bytes=1 << 20
    ).payload
    assert answer.honest_floor == 10 - run.policy.corrupt_neighbours(run.config)


def _forged(run: _Round, signatures) -> bytes:
    return messages.encode(
        messages.NoiseRemovalRequest(tuple(sorted(signatures.items()))),
        session_id=run.config.session_id,
        round_index=run.config.round_index,
        sender=0,
    )


@pytest.mark.parametrize("size", [12, 60])
def test_a_server_cannot_raise_the_floor_with_signatures_it_made_up(size):
    """A forged signature, or one over another U3, is refused and the client reveals nothing;
    the same request makes a client that skips the verification reveal for a floor the round
    never certified (the test's power). A fifth of the cohort never signed."""
    silent = tuple(range(3, 3 + size // 5))
    run = _Round(n=size, t=size // 2 + 1, dropped_at_consistency=silent)
    request = messages.decode(run.requests[1], max_bytes=1 << 22).payload
    signatures = dict(request.signatures)
    signatures.update(dict.fromkeys(silent, bytes(64)))  # those that never signed
    asked = []

    def record(floor: int) -> tuple:
        asked.append(floor)
        return ()

    corrupt = run.policy.corrupt_neighbours(run.config)
    with pytest.raises(AuthenticationFailed, match=f"client {silent[0]}"):
        run.clients[1].answer_noise_removal(_forged(run, signatures), record)
    assert not asked
    # the client is unchanged by the refusal: the genuine request still gets its answer
    run.clients[1].answer_noise_removal(run.requests[1], record)
    assert asked == [size - len(silent) - corrupt]

    weakened = run.clients[2]
    weakened._verify_story = lambda signed: None  # skips the signature check
    weakened.answer_noise_removal(_forged(run, signatures), record)
    assert asked[-1] == size - corrupt  # more than the round certified


def test_signatures_from_outside_u3_and_requests_before_the_round_ends_are_refused():
    """Only signers inside the client's own U3 count; no certified U3, no answer."""
    run = _Round(n=12, dropped_at_consistency=())
    with pytest.raises(InconsistentRequest, match="outside U3"):
        run.clients[1].answer_noise_removal(_forged(run, {13: bytes(64)}), _reveal_all)
    fresh = secagg.Client(
        run.config,
        5,
        signing_key=run.keys[5],
        policy=run.policy,
        random_bytes=DeterministicRandom(1),
    )
    with pytest.raises(UnexpectedPhase, match="certified U3"):
        fresh.answer_noise_removal(run.requests[5], _reveal_all)


def test_a_client_that_signed_u3_but_has_not_unmasked_does_not_answer():
    """The client answers only once its unmask answer is out (stage DONE), not right after it
    signed U3: a removal request between the two is refused."""
    run = _Round()
    signer = secagg.Client(
        run.config,
        1,
        signing_key=run.keys[1],
        policy=run.policy,
        random_bytes=DeterministicRandom(2),
    )
    signer._stage, signer._survivors = secagg.ClientStage.CONSISTENCY_SIGNED, frozenset(run.keys)
    with pytest.raises(UnexpectedPhase, match="certified U3"):
        signer.answer_noise_removal(run.requests[1], _reveal_all)


def test_the_server_runs_noise_removal_only_after_a_completed_round_with_identities():
    """Before the round ends, or after a round without identities, the server neither asks for
    nor accepts noise-removal answers."""
    rng = DeterministicRandom(3)
    keys = {u: SigningKey.generate(rng) for u in range(1, 6)}
    config = secagg.SecAggConfig.create(
        range(1, 6), 4, identities={u: k.public_bytes for u, k in keys.items()}, random_bytes=rng
    )
    early = secagg.Server(config, random_bytes=rng)
    with pytest.raises(LocalProtocolError, match="completed round"):
        early.noise_removal_requests()
    with pytest.raises(LocalProtocolError, match="no noise removal"):
        early.receive_noise_removal(b"")
    plain = secagg.simulate.aggregate(
        [np.full(4, u) for u in range(5)], policy=secagg.ClientPolicy.permissive()
    )
    server = secagg.Server(plain.config, random_bytes=rng)
    server._result = secagg.server.ServerResult(plain.total, plain.contributors, plain.dropped)
    with pytest.raises(LocalProtocolError, match="identities"):
        server.noise_removal_requests()
    with pytest.raises(LocalProtocolError, match="no noise removal"):
        server.receive_noise_removal(b"")


def test_noise_removal_is_answered_once_across_restores():
    """Attack 3 of the contribution contract: n = 10, t = 6, the complete graph, c = 1. The
    server asks for noise removal at a floor of 6 (7 of the U3 signatures forwarded), then
    restores the client from its to_state bytes and asks again at a floor of 7 (8 signatures). Two answers
    would reveal the union of two ladder sets (dp.removable's binary ladder), leaving less than
    V / m of noise with the client. The restored client refuses (UnexpectedPhase) and reveals
    nothing more; a weakened restore that forgets the answer (the state before this check)
    strips more noise than any certified floor allows: the ten clients keep less than V."""
    from dp.removable import RemovableNoise

    run = _Round(n=10, t=6)
    policy = secagg.ClientPolicy(min_clients=5, corrupt_fraction=0.1)
    corrupt = policy.corrupt_neighbours(run.config)
    assert corrupt == 1
    ladder = RemovableNoise(
        total_variance=400.0, noise_shares=6 - corrupt, most_honest=10 - corrupt
    )
    signatures = dict(messages.decode(run.requests[1], max_bytes=1 << 20).payload.signatures)

    def left_after_two_requests(weakened: bool) -> float:
        """The least noise variance any client keeps."""
        left = []
        for u, client in run.clients.items():
            revealed: set[int] = set()

            def reveal(floor: int, revealed: set[int] = revealed) -> tuple[tuple[int, bytes], ...]:
                steps = ladder.removal(floor)
                revealed.update(steps)
                return tuple((j, bytes(32)) for j in steps)

            state = client.to_state()
            fresh = secagg.Client.from_state(
                run.config, state, signing_key=run.keys[u], policy=policy
            )
            others = [v for v in run.clients if v != u]
            low = {v: signatures[v] for v in (*others[:6], u)}  # 7 signers: a floor of 6
            high = {v: signatures[v] for v in (*others[:7], u)}  # 8 signers: a floor of 7
            fresh.answer_noise_removal(_forged(run, low), reveal)
            restored = secagg.Client.from_state(
                run.config, fresh.to_state(), signing_key=run.keys[u], policy=policy
            )
            if weakened:
                restored._removal_answered = False  # the restore before this check
            before = restored.to_state()
            try:
                restored.answer_noise_removal(_forged(run, high), reveal)
            except UnexpectedPhase:
                assert not weakened
                assert restored.to_state() == before  # a refused request changes nothing
            left.append(ladder.variance_left(tuple(sorted(revealed))))
        return min(left)

    floor = 7  # the most the server can certify to the client with 8 signers
    honest = left_after_two_requests(weakened=False)
    assert floor * honest >= 400.0 * (1 - 1e-9)  # 7 honest clients keep the target V
    stripped = left_after_two_requests(weakened=True)
    assert floor * stripped < 0.8 * 400.0  # 311 of 400: a certified sum keeps less than V


def test_a_client_state_without_its_removal_record_is_refused():
    """A state that does not say whether noise removal was answered is unreadable
    (LocalProtocolError), never read as "not answered"."""
    import json

    run = _Round(n=10, t=6)
    state = json.loads(run.clients[1].to_state())
    del state["removal_answered"]
    with pytest.raises(LocalProtocolError, match="unreadable"):
        secagg.Client.from_state(run.config, json.dumps(state).encode(), policy=run.policy)
    state["removal_answered"] = 0
    with pytest.raises(LocalProtocolError, match="unreadable"):
        secagg.Client.from_state(run.config, json.dumps(state).encode(), policy=run.policy)
