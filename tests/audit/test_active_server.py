"""A malicious server at the default parameters and realistic sizes: every route is refused.

Each test writes the adversary's full strategy (tests/audit/adversary.py), runs it against the
real client - which must refuse with a typed error and reveal nothing individual - and runs the
same strategy against a deliberately weakened client, against which it must recover the
target's input exactly. The second run proves the test could fail.
"""

import copy

import numpy as np
import pytest

from secagg import (
    AuthenticationFailed,
    Client,
    ClientPolicy,
    InconsistentShares,
    PolicyViolation,
    ReplayedSession,
    SecAggConfig,
    Server,
    ThresholdNotMet,
    messages,
)
from secagg.parameters import recommend_parameters
from secagg.sessions import SessionLog
from tests.audit.adversary import (
    ActiveServer,
    GlobalQuorumClient,
    NoStoryCheckClient,
    PolicyFreeClient,
    Population,
    frame,
    isolation_plan,
    payload,
    run_isolation,
)


def _phase_four(server: ActiveServer, client_class: type[Client], snapshot, policy=None):
    """Restore the clients as ``client_class`` from ``snapshot`` and run the unmask phase."""
    states, seen = snapshot
    server.population.clients = {
        u: client_class.from_state(
            server.config,
            state,
            signing_key=server.population.signing_keys.get(u),
            policy=policy,
        )
        for u, state in states.items()
    }
    server.seen = copy.deepcopy(seen)
    server.unmask()
    return server


def _snapshot(server: ActiveServer):
    return {u: c.to_state() for u, c in server.population.clients.items()}, copy.deepcopy(
        server.seen
    )


# A small sparse graph whose clients assume no colluder (c = 0, so t = (k + 1) // 2 + 1), for
# quick runs and mutation testing, and the default parameters at realistic sizes.
NO_COLLUDER = ClientPolicy(corrupt_fraction=0.0)
SIZES = [
    pytest.param(40, 12, NO_COLLUDER, id="n40-k12-c0"),
    pytest.param(300, None, None, id="n300-default"),
    pytest.param(1000, None, None, id="n1000-default", marks=pytest.mark.slow),
]


def _population(n, neighbours, policy, **kwargs):
    if neighbours is None:
        population = Population.create(n, seed=n, **kwargs)
        default = recommend_parameters(n)
        assert (population.config.neighbours, population.config.threshold) == (
            default.neighbours,
            default.threshold,
        )
        return population
    shape = SecAggConfig.create(range(1, n + 1), 1, neighbours=neighbours, threshold=1)
    threshold = policy.minimum_threshold(shape)
    return Population.create(
        n, seed=n, neighbours=neighbours, threshold=threshold, policy=policy, **kwargs
    )


@pytest.mark.parametrize(("n", "neighbours", "policy"), SIZES)
def test_isolating_a_client_by_telling_each_holder_its_own_story_is_refused(n, neighbours, policy):
    """One story per client (SECURITY.md, "one story"): the server gives a target u its
    neighbourhood floor of partners, keeps u alive for everyone (they reveal b_u) and tells t
    holders of each partner v that v dropped (they reveal v's mask key, hence s_uv), while v
    is alive in its own story. The per-neighbourhood certification refuses every such story.
    Without it (NoStoryCheckClient), the same strategy recovers u's input exactly."""
    population = _population(n, neighbours, policy)
    config = population.config
    policy = policy or ClientPolicy()
    assert not config.complete_graph
    target = config.client_ids[n // 2]
    plan = isolation_plan(config, target, policy.min_live_neighbours(config))
    server = ActiveServer(population)
    run_isolation(server, plan)
    assert not server.seen.refusals, "honest clients go along until they must act"
    snapshot = _snapshot(server)

    weakened = _phase_four(server, NoStoryCheckClient, snapshot, policy)
    recovered = weakened.try_unmask(target)
    assert recovered is not None
    assert np.array_equal(recovered, population.inputs[target])

    real = _phase_four(server, Client, snapshot, policy)
    assert real.try_unmask(target) is None
    assert not set(real.seen.key_shares) & plan.partners, "no partner's mask key was revealed"
    tailored = {u for u, dropped in plan.drops.items() if dropped}
    assert tailored <= set(real.seen.refusals)
    assert all(isinstance(real.seen.refusals[u], ThresholdNotMet) for u in tailored)
    assert all("not certified" in str(real.seen.refusals[u]) for u in tailored)


@pytest.mark.parametrize(("n", "neighbours", "policy"), SIZES[:2])
def test_two_signing_groups_cannot_make_neighbours_act_on_two_stories(n, neighbours, policy):
    """The global quorum is not enough (SECURITY.md, "one story"): with t << n/2 the server
    collects t signatures on a story where x is alive and t on one where x dropped, from
    disjoint groups, and shows each to one of x's holders. A client checking only t signatures
    from members of U3 (GlobalQuorumClient) acts on both stories - one reveals x's self-mask
    share, the other x's key share. The real client requires t signers of N[x] on the same
    story, which two stories cannot both have when 2t > k + 1 + c."""
    population = _population(n, neighbours, policy)
    config = population.config
    server = ActiveServer(population)
    server.advertise()
    server.share_keys(lambda u: server.graph[u])
    server.masked_inputs()
    x = config.client_ids[0]
    closed = sorted(server.graph[x] | {x})
    alive_group = set(closed[: config.threshold]) | {x}
    w_alive = next(w for w in closed if w in alive_group and w != x)
    w_dropped = next(w for w in closed if w not in alive_group)
    everyone = frozenset(config.client_ids)
    story = {True: everyone, False: everyone - {x}}
    server.consistency(lambda u: story[u in alive_group])
    snapshot = _snapshot(server)
    assert len(server.signatures_on(story[True])) >= config.threshold
    assert len(server.signatures_on(story[False])) >= config.threshold

    for client_class, expect_both in ((GlobalQuorumClient, True), (Client, False)):
        states, seen = snapshot
        server.population.clients = {
            u: client_class.from_state(
                config, states[u], signing_key=population.signing_keys[u], policy=policy
            )
            for u in states
        }
        server.seen = copy.deepcopy(seen)
        server.unmask(ask=[w_alive, w_dropped])
        revealed_b = w_alive in server.seen.self_mask_shares.get(x, {})
        revealed_s = w_dropped in server.seen.key_shares.get(x, {})
        assert (revealed_b and revealed_s) is expect_both
        if not expect_both:
            assert server.seen.refusals and all(
                isinstance(e, ThresholdNotMet) for e in server.seen.refusals.values()
            )


def test_trimming_a_neighbourhood_to_the_threshold_is_refused_before_the_input_is_sent():
    """Neighbourhood floor (ClientPolicy.min_live_neighbours): the server delivers only t - 1
    partners' shares to the target. The real client refuses to send its masked input; a client
    without the floor and without the story check loses its input to the isolation route."""
    population = Population.create(300, seed=3)
    config = population.config
    target = config.client_ids[1]
    plan = isolation_plan(config, target, config.threshold - 1)
    assert len(plan.partners) < ClientPolicy().min_live_neighbours(config)
    server = ActiveServer(population)
    run_isolation(server, plan)
    assert isinstance(server.seen.refusals.get(target), ThresholdNotMet)
    assert target not in server.seen.masked

    weak = Population.create(
        300, seed=3, client_class=NoStoryCheckClient, policy=ClientPolicy(max_neighbour_loss=1.0)
    )
    server = ActiveServer(weak)
    run_isolation(server, plan)
    server.unmask()
    assert np.array_equal(server.try_unmask(target), weak.inputs[target])


def _honest_run(config, clients, *, skip=()):
    """Run one session honestly with a real Server, ``skip`` staying silent from the start."""
    server = Server(config)
    for u, client in clients.items():
        if u not in skip:
            server.receive(client.advertise_keys())
    outgoing = server.close_phase()
    while outgoing:
        for u, message in outgoing.items():
            server.receive(clients[u].receive(message))
        outgoing = server.close_phase()
    return server.result


@pytest.mark.parametrize("second_session", ["same-session", "new-session-same-round"])
def test_running_a_session_twice_and_subtracting_is_refused(second_session):
    """No second run (secagg.sessions): the server runs one round with everyone, then again
    without u, and subtracts. A client keeps a SessionLog and refuses a session, or a round, it
    has joined. Clients without the log (restarted objects) give the server u's input."""
    rng = np.random.default_rng(5)
    n, u = 10, 4
    inputs = {i: rng.integers(0, 1 << 20, 6) for i in range(1, n + 1)}
    config = SecAggConfig.create(range(1, n + 1), 6, round_index=3)
    again = (
        config
        if second_session == "same-session"
        else SecAggConfig.create(range(1, n + 1), 6, round_index=3)
    )
    logs = {i: SessionLog() for i in inputs}

    def clients(cfg, with_logs):
        made = {}
        for i, x in inputs.items():
            made[i] = Client(cfg, i, sessions=logs[i] if with_logs else None)
            made[i].set_input(x)
        return made

    first = _honest_run(config, clients(config, True)).total.astype(np.int64)
    with pytest.raises(ReplayedSession):
        _honest_run(again, clients(again, True), skip={u})

    for log in logs.values():  # the weakened clients forget what they joined
        log.__init__()
    second = _honest_run(again, clients(again, False), skip={u}).total.astype(np.int64)
    assert np.array_equal((first - second) % (1 << 32), inputs[u])


class RootlessClient(Client):
    """WEAKENED for tests: signs and checks the consistency transcript without the
    session-instance root (the first version's transcript: digest and U3 only)."""

    def _on_roster(self, roster):
        reply = super()._on_roster(roster)
        self._instance_root = bytes(32)
        return reply


def _through_masked_inputs(population):
    server = ActiveServer(population)
    server.advertise()
    server.share_keys(lambda u: server.graph[u])
    server.masked_inputs()
    return server


@pytest.mark.parametrize(("client_class", "refused"), [(Client, True), (RootlessClient, False)])
def test_signatures_from_another_run_of_the_session_do_not_certify_a_story(client_class, refused):
    """Instance binding (secagg.instance): the consistency transcript binds the Merkle root of
    every key advertised in this run. With clients that lost their session log, the server
    replays run-1 signatures on "x alive" to one holder of x in run 2, while the others sign
    "x dropped" in run 2: two honest parties of one run would act on two statuses of x. The
    real client refuses the replayed signatures (AuthenticationFailed)."""
    run1 = Population.create(10, seed=11, client_class=client_class)
    everyone = frozenset(run1.config.client_ids)
    first = _through_masked_inputs(run1)
    first.consistency(lambda u: everyone)
    replayed = first.signatures_on(everyone)

    x, w, holder = 3, 1, 2
    second = _through_masked_inputs(run1.rerun(seed=12))
    second.consistency(lambda u: everyone if u == w else everyone - {x})
    request = messages.UnmaskRequest(
        alive=tuple(sorted(second.seen.peers[w] | {w})), dropped=(), signatures=replayed
    )
    if refused:
        with pytest.raises(AuthenticationFailed):
            second.population.clients[w].receive(frame(run1.config, request))
        return
    reply = payload(second.population.clients[w].receive(frame(run1.config, request)))
    assert x in dict(reply.self_mask_shares)
    second.unmask(ask=[holder])
    assert holder in second.seen.key_shares[x]  # same run, x's key share: two stories acted on


def _t1_strategy(population):
    """t = 1: the target reveals its own self-mask share, one neighbour its key share."""
    server = ActiveServer(population)
    everyone = frozenset(population.config.client_ids)
    target = 1
    server.advertise()
    if server.seen.refusals:
        return server, None
    server.share_keys(lambda u: server.graph[u])
    server.masked_inputs()
    server.consistency(lambda u: everyone if u == target else everyone - {target})
    server.unmask()
    return server, server.try_unmask(target)


def test_a_server_chosen_threshold_of_one_is_refused():
    """Client-side floors (ClientPolicy.minimum_threshold): with t = 1 one share reveals a
    secret, so the server takes b_u from u and s_u from a neighbour. The client refuses the
    session before drawing keys; a policy-free client loses its input."""
    real = Population.create(10, seed=1, threshold=1, neighbours=9)
    server, recovered = _t1_strategy(real)
    assert recovered is None
    assert all(isinstance(e, PolicyViolation) for e in server.seen.refusals.values())
    assert len(server.seen.refusals) == 10
    weak = Population.create(10, seed=1, threshold=1, neighbours=9, client_class=PolicyFreeClient)
    _, recovered = _t1_strategy(weak)
    assert np.array_equal(recovered, weak.inputs[1])


def test_a_tiny_cohort_with_a_server_controlled_member_is_refused():
    """ClientPolicy.min_clients: a cohort of the target and one member the server controls
    (a Sybil, or a compromised device) releases the target's input as sum - known input."""
    for client_class, refused in ((Client, True), (PolicyFreeClient, False)):
        population = Population.create(2, seed=2, client_class=client_class, identities=False)
        config = population.config
        if refused:
            with pytest.raises(PolicyViolation, match="cohort of 2"):
                population.clients[1].advertise_keys()
            continue
        total = _honest_run(config, population.clients).total.astype(np.int64)
        assert np.array_equal((total - population.inputs[2]) % (1 << 32), population.inputs[1])


@pytest.mark.parametrize(
    ("policy", "proposal", "match"),
    [
        (ClientPolicy(), {"ring_bits": 16}, "16-bit ring"),
        (ClientPolicy(require_identities=True), {}, "requires Ed25519 identities"),
        (ClientPolicy(), {"threshold": 5, "neighbours": 9}, "threshold 5 is below"),
    ],
)
def test_parameters_below_the_client_policy_are_refused(policy, proposal, match):
    """The client, not the server, decides: each parameter below the policy is refused with
    PolicyViolation naming it, and the client stops (ERROR, sticky)."""
    config = SecAggConfig.create(range(1, 11), 4, **proposal)
    client = Client(config, 1, policy=policy)
    with pytest.raises(PolicyViolation, match=match):
        client.advertise_keys()
    with pytest.raises(Exception, match="stopped"):
        client.receive(b"")


def test_a_mask_key_differing_only_in_clamped_bits_is_refused():
    """Canonical X25519 scalars (secagg.hazmat.agreement.is_clamped): a client that shares its
    mask key with one of the five bits X25519 ignores flipped would pass a public-key check;
    the server compares the reconstructed scalar itself and refuses (InconsistentShares)."""

    class NonCanonicalClient(Client):
        def _on_roster(self, roster):
            key = self._mask_key
            self._mask_key = type(key)(bytes([key.private_bytes[0] | 1]) + key.private_bytes[1:])
            assert self._mask_key.public_bytes == key.public_bytes
            return super()._on_roster(roster)

    class PublicKeyOnlyServer(Server):
        """WEAKENED: checks the reconstructed key through its public key only."""

        def _mask_key_matches(self, owner, secret):
            from secagg.hazmat.agreement import AgreementKey

            return AgreementKey(secret).public_bytes == self._adverts[owner].mask_key

    for server_class, refused in ((Server, True), (PublicKeyOnlyServer, False)):
        config = SecAggConfig.create(range(1, 11), 4)
        clients = {u: (NonCanonicalClient if u == 5 else Client)(config, u) for u in range(1, 11)}
        for u, c in clients.items():
            c.set_input(np.full(4, u))
        server = server_class(config)
        for c in clients.values():
            server.receive(c.advertise_keys())
        outgoing = server.close_phase()
        for _ in range(2):  # share keys, masked input; client 5 drops before its input
            for u, message in outgoing.items():
                if not (u == 5 and _ == 1):
                    server.receive(clients[u].receive(message))
            outgoing = server.close_phase()
        for u, message in outgoing.items():
            server.receive(clients[u].receive(message))
        if refused:
            with pytest.raises(InconsistentShares, match="mask key of client 5"):
                server.close_phase()
        else:
            server.close_phase()
            assert server.result.dropped == {5}


def test_a_restored_snapshot_never_reuses_an_aes_gcm_nonce():
    """Random nonces (secagg.hazmat.aead.seal_framed): restoring a client from an old
    to_state snapshot and replaying the roster encrypts new shares under the same key; the
    nonces differ, so no key/nonce pair repeats. With a fixed nonce (the weakened sealing),
    both ciphertexts would share a keystream."""
    population = Population.create(10, seed=4)
    config = population.config
    server = ActiveServer(population)
    server.advertise()
    client = population.clients[1]
    state = client.to_state()
    adverts = server.seen.adverts
    from secagg.instance import InstanceTree

    tree = InstanceTree.build(config, {u: (a.channel_key, a.mask_key) for u, a in adverts.items()})
    peers = sorted(server.graph[1])
    roster = messages.KeyRoster(
        tuple(
            messages.RosterEntry(
                v, adverts[v].channel_key, adverts[v].mask_key, adverts[v].key_signature
            )
            for v in peers
        ),
        tree.root,
        tree.path(1),
    )
    first = dict(payload(client.receive(frame(config, roster))).ciphertexts)
    restored = Client.from_state(config, state, signing_key=population.signing_keys[1])
    second = dict(payload(restored.receive(frame(config, roster))).ciphertexts)
    for v in peers:
        assert first[v][:12] != second[v][:12]
        assert first[v] != second[v]
