"""Neighbourhood quorums (secagg.quorum): the counts behind "one story per client"."""

import numpy as np
import pytest

from secagg import SecAggConfig, quorum
from secagg.graph import neighbour_index, neighbourhoods
from secagg.randomness import DeterministicRandom

# (n, k): a sparse graph, the default sparse graph at n = 300, a complete graph
GRAPHS = [(40, 12), (300, None), (10, None)]


def _config(n: int, k: int | None) -> SecAggConfig:
    return SecAggConfig.create(
        range(1, n + 1), 4, neighbours=k, random_bytes=DeterministicRandom(n)
    )


def _reference_shortfalls(graph, watched, signers, threshold):
    """The definition: x lacks t - |signers in N[x]| signers, N[x] = N(x) + {x}."""
    lacking = {x: threshold - len((graph[x] | {x}) & set(signers)) for x in watched}
    return {x: m for x, m in lacking.items() if m > 0}


@pytest.mark.parametrize(("n", "k"), GRAPHS)
def test_shortfalls_count_signers_in_each_closed_neighbourhood(n, k):
    """SECURITY.md, "one story per client": a watched x is certified when t members of
    N(x) + {x} signed U3; the count includes x itself and nobody outside N[x]. Checked against
    the set definition for random signer sets of every density."""
    config = _config(n, k)
    graph, index, t = neighbourhoods(config), neighbour_index(config), config.threshold
    rng = np.random.default_rng(n)
    for density in (0.0, 0.3, 0.6, 0.9, 1.0):
        for _ in range(3):
            signers = [u for u in config.client_ids if rng.random() < density]
            watched = [u for u in config.client_ids if rng.random() < 0.2] or [1]
            expected = _reference_shortfalls(graph, watched, signers, t)
            got = quorum.shortfalls(watched=watched, signers=signers, index=index, threshold=t)
            assert got == expected


def test_a_neighbourhood_one_signer_short_is_not_certified():
    """The boundary: exactly t signers in N[x] certify x; t - 1 leave it one short."""
    config = _config(40, 12)
    graph, index, t = neighbourhoods(config), neighbour_index(config), config.threshold
    x = 7
    closed = sorted(graph[x] | {x})
    certified = quorum.shortfalls(watched=[x], signers=closed[:t], index=index, threshold=t)
    assert certified == {}
    short = quorum.shortfalls(watched=[x], signers=closed[: t - 1], index=index, threshold=t)
    assert short == {x: 1}
    outside = [u for u in config.client_ids if u not in closed]
    padded = quorum.shortfalls(
        watched=[x], signers=closed[: t - 1] + outside, index=index, threshold=t
    )
    assert padded == {x: 1}, "signers outside N[x] never count for x"


def _choose(config, u, signers):
    graph, index = neighbourhoods(config), neighbour_index(config)
    return quorum.signers_to_verify(
        watched=graph[u] | {u},
        signers=signers,
        index=index,
        threshold=config.threshold,
        trusted=u,
    )


@pytest.mark.parametrize(("n", "k"), GRAPHS)
def test_the_server_forwards_signatures_that_certify_every_neighbourhood_the_client_acts_on(n, k):
    """Server side of the consistency check (Server._close_signatures): the chosen signatures,
    with the client's own, certify the client and each of its neighbours; each is a signer of
    U3 that counts for some watched neighbourhood; the client itself is never in the choice."""
    config = _config(n, k)
    graph, index, t = neighbourhoods(config), neighbour_index(config), config.threshold
    rng = np.random.default_rng(1)
    for u in config.client_ids[:: max(1, n // 8)]:
        signers = [v for v in config.client_ids if v == u or rng.random() < 0.95]
        watched = graph[u] | {u}
        chosen, short = _choose(config, u, signers)
        assert u not in chosen and len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(signers)
        reach = set().union(*(graph[x] | {x} for x in watched))
        assert set(chosen) <= reach
        after = quorum.shortfalls(watched=watched, signers=[*chosen, u], index=index, threshold=t)
        offered = quorum.shortfalls(watched=watched, signers=signers, index=index, threshold=t)
        assert short == after == offered


@pytest.mark.parametrize(("n", "k"), GRAPHS)
def test_the_chosen_signatures_stay_near_the_documented_cost(n, k):
    """SECURITY.md: a client verifies about 2(t - 1) + 1 signatures on a sparse graph, t - 1 on
    the complete graph (greedy set cover: signers covering more neighbourhoods first)."""
    config = _config(n, k)
    t = config.threshold
    for u in config.client_ids[:5]:
        chosen, short = _choose(config, u, config.client_ids)
        assert short == {}
        if config.complete_graph:
            assert len(chosen) == t - 1
        else:
            assert t - 1 <= len(chosen) <= 2 * (t - 1) + 1


def test_the_choice_prefers_signers_covering_more_neighbourhoods_then_lower_ids():
    """Deterministic greedy order: on the complete graph every signer covers every watched
    neighbourhood, so the t - 1 lowest ids other than the client itself are chosen."""
    config = _config(10, None)
    assert config.complete_graph
    chosen, _ = _choose(config, 3, config.client_ids)
    assert chosen == [v for v in config.client_ids if v != 3][: config.threshold - 1]


def test_a_trusted_client_counts_only_in_the_neighbourhoods_it_belongs_to():
    """The checking client's own signature is free only where it is a member: for a watched x
    outside its neighbourhood, t other signers of N[x] are needed; with too few the shortfall
    counts what is missing."""
    config = _config(40, 12)
    graph, index, t = neighbourhoods(config), neighbour_index(config), config.threshold
    u = 1
    x = next(v for v in config.client_ids if v != u and u not in graph[v])
    closed = sorted(graph[x] | {x})
    chosen, short = quorum.signers_to_verify(
        watched=[x], signers=closed, index=index, threshold=t, trusted=u
    )
    assert short == {} and len(chosen) == t and set(chosen) <= set(closed)
    chosen, short = quorum.signers_to_verify(
        watched=[x], signers=closed[:5], index=index, threshold=t, trusted=u
    )
    assert short == {x: t - 5} and sorted(chosen) == closed[:5]


def test_a_neighbourhood_that_cannot_be_certified_is_reported_with_its_shortfall():
    """When the signers cannot certify a watched neighbourhood, the server learns by how much
    (and does not send that client an unmask request it would refuse)."""
    config = _config(40, 12)
    graph, t = neighbourhoods(config), config.threshold
    u = 5
    neighbour = min(graph[u])
    missing = (graph[neighbour] | {neighbour}) - {u}
    signers = [v for v in config.client_ids if v not in missing]
    chosen, short = _choose(config, u, signers)
    own_count = len((graph[neighbour] | {neighbour}) & (set(signers) | {u}))
    assert short[neighbour] == t - own_count > 0
    assert all(v in signers for v in chosen)


def test_the_trusted_signature_is_free_only_in_the_watched_neighbourhoods_that_contain_it():
    """The checking client's own signature counts once for each watched N[x] it belongs to and
    nowhere else, when it watches both kinds at once: the choice still certifies the
    neighbourhood it is not in with t verified signers of that neighbourhood."""
    config = _config(40, 12)
    graph, index, t = neighbourhoods(config), neighbour_index(config), config.threshold
    u = 1
    inside = min(graph[u])
    outside = next(v for v in config.client_ids if v != u and u not in graph[v])
    signers = sorted((graph[inside] | {inside} | graph[outside] | {outside}) - {u})
    chosen, short = quorum.signers_to_verify(
        watched=[inside, outside], signers=signers, index=index, threshold=t, trusted=u
    )
    assert short == {}
    in_outside = set(chosen) & (graph[outside] | {outside})
    assert len(in_outside) >= t
    after = quorum.shortfalls(
        watched=[inside, outside], signers=[*chosen, u], index=index, threshold=t
    )
    assert after == {}


@pytest.mark.parametrize(("n", "k"), GRAPHS)
def test_every_chosen_signature_counts_for_a_neighbourhood_that_still_lacked_one(n, k):
    """No wasted verification (the cost bound in SECURITY.md): each signer in the choice, when
    taken, was a member of some watched N[x] still short of t signers."""
    config = _config(n, k)
    graph, t = neighbourhoods(config), config.threshold
    rng = np.random.default_rng(2)
    for u in config.client_ids[:: max(1, n // 10)]:
        signers = [v for v in config.client_ids if v == u or rng.random() < 0.9]
        watched = graph[u] | {u}
        chosen, _ = _choose(config, u, signers)
        counted = {u}
        for v in chosen:
            lacking = [x for x in watched if len((graph[x] | {x}) & counted) < t]
            assert any(v in graph[x] | {x} for x in lacking), f"signer {v} adds nothing"
            counted.add(v)
