"""What the server (alone, or with t-1 colluding clients) sees is independent of honest inputs.

Statistical tests use a small ring (2^8) and many independent sessions; each has a fixed
false-failure rate of 1e-6 (chi-square critical values from scipy.stats.chi2.ppf(1 - 1e-6, df)).
"""

import numpy as np

import secagg
from secagg.hazmat.prg import MaskTerm, accumulate
from tests.secagg.harness import Round

CHI2_DF15 = 56.49  # chi2.ppf(1 - 1e-6, 15)
CHI2_DF255 = 383.9  # chi2.ppf(1 - 1e-6, 255)


def _chi2_uniform(values: np.ndarray, bins: int) -> float:
    observed = np.bincount(values, minlength=bins)
    expected = len(values) / bins
    return float(((observed - expected) ** 2 / expected).sum())


def _chi2_homogeneity(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    table = np.stack([np.bincount(a, minlength=bins), np.bincount(b, minlength=bins)]).astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    mask = expected > 0
    return float(((table - expected) ** 2 / np.where(mask, expected, 1))[mask].sum())


def test_a_masked_vector_is_uniform_over_the_ring():
    """Bonawitz et al. 2017, Lemma 6.1: y_u = x_u + masks is uniform whatever x_u. A fixed input
    (all 7s) masked in 4,000 independent sessions is uniform over Z_2^8 (chi-square, 255 df)."""
    masked = []
    for session in range(4000):
        r = Round(3, threshold=2, neighbours=2, ring_bits=8, length=1, seed=session)
        r.clients[1].set_input([7])
        bundles = r.step(r.advertise())
        masked.append(int(messages_vector(r.clients[1].receive(bundles[1]))[0]))
    assert _chi2_uniform(np.array(masked), 256) < CHI2_DF255


def messages_vector(data: bytes) -> np.ndarray:
    return secagg.messages.decode(data, max_bytes=1 << 20).payload.vector()


def test_masks_of_different_rounds_are_independent():
    """Fresh keys and seeds every round: the masked values of one client in two consecutive
    rounds (same input) are independent - their joint (top-2-bit) histogram is uniform."""
    pairs = []
    for session in range(3000):
        values = []
        for round_index in (0, 1):
            r = Round(
                3,
                threshold=2,
                neighbours=2,
                ring_bits=8,
                length=1,
                seed=2 * session + round_index,
                round_index=round_index,
            )
            r.clients[1].set_input([42])
            values.append(int(messages_vector(r.clients[1].receive(r.step(r.advertise())[1]))[0]))
        pairs.append((values[0] >> 6) * 4 + (values[1] >> 6))
    assert _chi2_uniform(np.array(pairs), 16) < CHI2_DF15


def _prg_word(seed: bytes) -> int:
    word = np.zeros(1, dtype=np.uint32)
    accumulate(word, [MaskTerm(seed)])
    return int(word[0])


def _colluders_residuals(swap: bool, session: int) -> tuple[int, int]:
    """Server + client 2 collude (t - 1 = 1 client; n = 3, t = 2) in a full round where the
    honest clients 1 and 3 hold (5, 9), or (9, 5) when ``swap`` (same sum). The colluders know
    y_1, y_3, every self-mask seed (the server rebuilds them in the unmask phase) and client 2's
    pairwise seeds. Returns y_u minus every mask they can rebuild, for u = 1 and u = 3."""
    r = Round(3, threshold=2, neighbours=2, ring_bits=8, length=1, seed=session)
    inputs = {1: 9 if swap else 5, 2: 0, 3: 5 if swap else 9}
    for u, client in r.clients.items():
        client.set_input([inputs[u]])
    bundles = r.step(r.advertise())
    colluder_seeds = dict(r.clients[2]._pair_seeds)  # the corrupt client keeps its pairwise seeds
    self_mask_secrets = {u: r.clients[u]._self_mask_secret for u in (1, 3)}  # learned in unmask
    masked = {}
    for u in (1, 2, 3):
        reply = r.clients[u].receive(bundles[u])
        masked[u] = int(messages_vector(reply)[0])
        r.server.receive(reply)
    requests = r.server.close_phase()
    for u in (1, 2, 3):
        r.server.receive(r.clients[u].receive(requests[u]))
    r.server.close_phase()
    assert int(r.server.result.total[0]) == 14  # the sum, the one thing meant to be revealed
    residuals = []
    for u in (1, 3):
        self_mask = _prg_word(secagg.keys.self_mask_seed(self_mask_secrets[u], r.config.digest, u))
        pair_mask = _prg_word(colluder_seeds[u])  # +PRG(s_u2) since u < 2, -PRG(s_32) for u = 3
        sign = 1 if u < 2 else -1
        residuals.append((masked[u] - self_mask - sign * pair_mask) % 256)
    return residuals[0], residuals[1]


def test_server_with_t_minus_one_colluders_learns_nothing_beyond_the_sum():
    """Bonawitz et al. 2017, Thm. 6.2 (security against the server and < t clients): the
    colluders' view of honest clients with inputs (5, 9) and (9, 5) is identically distributed:
    what they can unmask of client 1 is uniform in both worlds (chi-square homogeneity, 15 df),
    and the two residuals always sum to the public sum 14."""
    worlds = []
    for swap in (False, True):
        residuals = [_colluders_residuals(swap, 10_000 * swap + s) for s in range(1500)]
        assert all((a + b) % 256 == 14 for a, b in residuals)
        worlds.append(np.array([a >> 4 for a, _ in residuals]))
    assert _chi2_homogeneity(worlds[0], worlds[1], 16) < CHI2_DF15
    assert _chi2_uniform(worlds[0], 16) < CHI2_DF15
