"""The neighbour graph: k-regular, symmetric, and the same for every party of a session."""

import dataclasses

import pytest

from secagg import SecAggConfig
from secagg.graph import neighbourhoods, random_permutation


@pytest.mark.parametrize(("n", "k"), [(10, 9), (10, 4), (10, 3), (11, 4), (100, 12), (101, 30)])
def test_graph_is_k_regular_and_symmetric(n, k):
    """Harary graph H(k, n) (Bell et al. 2020 Sec. 4): every client has k distinct neighbours,
    never itself, and neighbourhood is mutual."""
    config = SecAggConfig.create(range(1, n + 1), 4, neighbours=k, threshold=2)
    graph = neighbourhoods(config)
    assert set(graph) == set(config.client_ids)
    for u, peers in graph.items():
        assert len(peers) == k
        assert u not in peers
        assert all(u in graph[v] for v in peers)


def test_every_party_derives_the_same_graph_from_the_session():
    """The graph depends only on the public configuration (no extra message, no coordination)."""
    config = SecAggConfig.create(range(1, 51), 4, neighbours=8, threshold=3)
    rebuilt = SecAggConfig.decode(config.encode())
    assert dict(neighbourhoods(config)) == dict(neighbourhoods(rebuilt))


def test_a_new_session_draws_a_new_graph():
    """Fresh session ids relabel the graph (fresh randomness every round)."""
    config = SecAggConfig.create(range(1, 51), 4, neighbours=8, threshold=3)
    other = dataclasses.replace(config, session_id=b"\x05" * 32)
    assert dict(neighbourhoods(config)) != dict(neighbourhoods(other))


def test_permutation_is_a_permutation_and_roughly_uniform():
    """Fisher-Yates with rejection: each element lands in each position about equally often."""
    n, trials = 4, 2400
    counts = [[0] * n for _ in range(n)]
    for trial in range(trials):
        order = random_permutation(n, trial.to_bytes(32, "little"))
        assert sorted(order) == list(range(n))
        for position, value in enumerate(order):
            counts[position][value] += 1
    expected = trials / n
    chi2 = sum((c - expected) ** 2 / expected for row in counts for c in row)
    assert chi2 < 44.81  # chi-square, 9 dof (4x4 table, fixed margins): scipy chi2.ppf(1 - 1e-6, 9)
