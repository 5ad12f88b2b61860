"""End to end: the unmasked sum equals the plaintext sum, bit-exactly, through the real bytes."""

import numpy as np
import pytest

import secagg
from secagg import Phase, ThresholdNotMet
from secagg.randomness import DeterministicRandom

# These tests check correctness (exact sums) on toy cohorts and odd rings, below the secure
# default policy; the policy's refusals are tested in tests/audit.
PERMISSIVE = secagg.ClientPolicy.permissive()

PHASES_WITHOUT_IDENTITIES = [
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.UNMASK,
]


def _inputs(n, length, ring_bits, seed):
    generator = np.random.default_rng(seed)  # test data only, not protocol randomness
    return {
        u: generator.integers(0, 2**ring_bits, length, dtype=np.uint64) for u in range(1, n + 1)
    }


def _plain_sum(inputs, contributors, ring_bits):
    total = np.zeros_like(next(iter(inputs.values())))
    for u in contributors:
        total = total + inputs[u]
    return total & np.uint64((1 << ring_bits) - 1) if ring_bits < 64 else total


GRAPHS = [(3, "complete"), (10, "complete"), (10, "sparse"), (100, "complete"), (100, "sparse")]


@pytest.mark.parametrize(("n", "graph"), GRAPHS)
@pytest.mark.parametrize("phase", PHASES_WITHOUT_IDENTITIES)
def test_sum_is_exact_with_dropouts_up_to_n_minus_t(n, graph, phase):
    """Bonawitz et al. 2017 Thm. 4.1 (correctness): with at most n - t dropouts in one phase the
    server outputs exactly the sum of U3's inputs mod 2^b, for the complete and sparse graphs."""
    neighbours = n - 1 if graph == "complete" else {10: 4, 100: 12}[n]
    threshold = {3: 2, 10: 3 if graph == "sparse" else 6, 100: 7 if graph == "sparse" else 51}[n]
    inputs = _inputs(n, 64, 32, seed=n)
    # in a sparse graph every neighbourhood must keep t holders: spread the dropouts
    tolerated = n - threshold if graph == "complete" else neighbours + 1 - threshold
    dropped = list(range(1, n + 1, max(1, n // max(tolerated, 1))))[:tolerated]
    if graph == "sparse":
        dropped = dropped[:1] if n == 10 else dropped[:3]
    result = secagg.aggregate(
        inputs,
        threshold=threshold,
        neighbours=neighbours,
        dropouts={phase: dropped},
        rng=DeterministicRandom(n),
        policy=PERMISSIVE,
    )
    if phase is Phase.UNMASK:
        assert result.contributors == frozenset(inputs)
    else:
        assert result.contributors == frozenset(inputs) - set(dropped)
    assert np.array_equal(result.total, _plain_sum(inputs, result.contributors, 32))


@pytest.mark.parametrize("phase", [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT])
def test_beyond_n_minus_t_dropouts_the_server_refuses(phase):
    """The server never releases a sum built from fewer than t clients (ThresholdNotMet)."""
    inputs = _inputs(10, 8, 32, seed=1)
    with pytest.raises(ThresholdNotMet):
        secagg.aggregate(
            inputs, threshold=6, neighbours=9, dropouts={phase: [1, 2, 3, 4, 5]}, policy=PERMISSIVE
        )


def test_unmask_dropouts_beyond_tolerance_fail_the_round():
    """Too few unmask responses: the server raises rather than output a partially masked sum."""
    with pytest.raises(ThresholdNotMet):
        secagg.aggregate(
            _inputs(6, 8, 32, 2),
            threshold=4,
            neighbours=5,
            dropouts={Phase.UNMASK: [1, 2, 3]},
            policy=PERMISSIVE,
        )


@pytest.mark.parametrize("phase", list(Phase))
def test_identities_and_consistency_check(phase):
    """With identities, dropouts in every phase (consistency check included) still give the sum."""
    inputs = _inputs(12, 16, 32, seed=3)
    result = secagg.aggregate(
        inputs,
        threshold=7,
        neighbours=11,
        identities=True,
        dropouts={phase: [2, 5]},
        rng=DeterministicRandom(3),
        policy=PERMISSIVE,
    )
    assert np.array_equal(result.total, _plain_sum(inputs, result.contributors, 32))
    in_sum = phase in (Phase.CONSISTENCY_CHECK, Phase.UNMASK)
    assert (2 in result.contributors) == in_sum


@pytest.mark.parametrize("ring_bits", [1, 8, 16, 31, 32, 33, 48, 64])
def test_every_ring_size(ring_bits):
    """Sums are exact in Z_{2^b} for word-aligned and unaligned b."""
    inputs = _inputs(5, 33, ring_bits, seed=ring_bits)
    result = secagg.aggregate(
        inputs, ring_bits=ring_bits, dropouts={Phase.MASKED_INPUT: [4]}, policy=PERMISSIVE
    )
    assert result.total.dtype == (np.uint32 if ring_bits <= 32 else np.uint64)
    assert np.array_equal(
        result.total.astype(np.uint64), _plain_sum(inputs, result.contributors, ring_bits)
    )


def test_signed_inputs_wrap_as_twos_complement():
    """Negative integers enter the ring mod 2^b and the signed lift of the sum recovers them."""
    from secagg.ring import to_signed

    inputs = {1: np.array([-5, 3]), 2: np.array([2, -7]), 3: np.array([1, 1])}
    result = secagg.aggregate(inputs, ring_bits=16, input_bound=100, policy=PERMISSIVE)
    assert to_signed(result.total, 16).tolist() == [-2, -3]


def test_accounting_counts_real_bytes():
    """Bytes sent by clients equal bytes received by the server, and the reverse."""
    result = secagg.aggregate(
        _inputs(8, 100, 32, 4), dropouts={Phase.SHARE_KEYS: [3]}, policy=PERMISSIVE
    )
    clients = [u for u in result.bytes_sent if u != 0]
    assert sum(result.bytes_sent[u] for u in clients) == result.bytes_received[0]
    assert result.bytes_sent[3] > 0  # it advertised keys before dropping
    # the masked vector dominates: at least d words per contributor
    assert result.bytes_sent[1] > 100 * 4


def test_fresh_randomness_gives_fresh_masks_each_round():
    """Fresh keys, seeds and session id every round: the same inputs give unrelated masked vectors."""
    seen = []
    inputs = _inputs(4, 32, 32, 5)
    for round_index in range(2):
        config = secagg.SecAggConfig.create(range(1, 5), 32, round_index=round_index)
        client = secagg.Client(config, 1, policy=PERMISSIVE)
        seen.append(config.session_id)
        client.set_input(inputs[1])
        seen.append(client.advertise_keys())
    assert len(set(seen)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(Phase))
def test_large_cohort_with_identities(phase):
    """The exact-sum property for 300 clients on the recommended SecAgg+ graph, with identities."""
    inputs = _inputs(300, 256, 32, seed=300)
    result = secagg.aggregate(inputs, identities=True, dropouts={phase: list(range(1, 301, 10))})
    assert not result.config.complete_graph
    assert np.array_equal(result.total, _plain_sum(inputs, result.contributors, 32))
