"""Shamir t-of-n sharing of 32-byte secrets (Shamir 1979), chunked over GF(2^31 - 1)."""

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.hazmat import shamir
from secagg.randomness import DeterministicRandom


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_reconstruct(secret, holders, data):
    """Correctness: every subset of exactly t shares interpolates the secret."""
    threshold = data.draw(st.integers(1, holders))
    xs = data.draw(
        st.lists(st.integers(1, shamir.PRIME - 1), min_size=holders, max_size=holders, unique=True)
    )
    shares = shamir.split([secret], threshold=threshold, xs=xs, random_bytes=os.urandom)
    subset = data.draw(
        st.lists(
            st.sampled_from(range(holders)), min_size=threshold, max_size=threshold, unique=True
        )
    )
    assert shamir.reconstruct({xs[i]: shares[i][0] for i in subset}, threshold=threshold) == secret


def test_every_subset_of_t_reconstructs_several_secrets():
    """All C(6,3) subsets recover both secrets shared together."""
    secrets = [os.urandom(32), os.urandom(32)]
    xs = [3, 5, 8, 13, 21, 34]
    shares = shamir.split(secrets, threshold=3, xs=xs, random_bytes=os.urandom)
    for subset in itertools.combinations(range(6), 3):
        got = shamir.reconstruct_many(
            [xs[i] for i in subset], [[shares[i][s] for i in subset] for s in range(2)]
        )
        assert got == secrets


def test_fewer_than_t_shares_refuse():
    """Reconstruction with fewer than t shares raises instead of guessing."""
    shares = shamir.split([bytes(32)], threshold=4, xs=[1, 2, 3, 4, 5], random_bytes=os.urandom)
    with pytest.raises(ValueError, match="need 4"):
        shamir.reconstruct({x: shares[x - 1][0] for x in (1, 2, 3)}, threshold=4)


CHI2_CRITICAL_DF15_ALPHA_1E6 = 56.49  # scipy.stats.chi2.ppf(1 - 1e-6, 15)


@pytest.mark.parametrize("secret", [bytes(32), b"\xff" * 32])
def test_t_minus_one_shares_are_uniform_whatever_the_secret(secret):
    """Secrecy (Shamir 1979): any t-1 shares are uniformly distributed, independent of the secret.

    3-of-4 sharing; the joint distribution of two holders' shares (first limb, top two bits of
    each, 16 cells) over 8000 sharings must be uniform: chi-square test, false-failure rate 1e-6
    (the seeded source makes the run reproducible).
    """
    count = 8000
    shares = shamir.split(
        [secret] * count, threshold=3, xs=[1, 2, 3, 4], random_bytes=DeterministicRandom(secret)
    )
    first = np.array([np.frombuffer(shares[0][i], "<u4")[0] for i in range(count)], dtype=np.uint64)
    second = np.array(
        [np.frombuffer(shares[1][i], "<u4")[0] for i in range(count)], dtype=np.uint64
    )
    cells = (first * 4 // shamir.PRIME) * 4 + second * 4 // shamir.PRIME
    observed = np.bincount(cells.astype(np.int64), minlength=16)
    expected = count / 16
    assert ((observed - expected) ** 2 / expected).sum() < CHI2_CRITICAL_DF15_ALPHA_1E6


def test_shares_are_deterministic_only_under_a_seeded_source():
    """Coefficients come from the injected source: same seed, same shares; fresh urandom, not."""
    args = dict(threshold=3, xs=[1, 2, 3, 4])
    a = shamir.split([bytes(32)], random_bytes=DeterministicRandom(1), **args)
    b = shamir.split([bytes(32)], random_bytes=DeterministicRandom(1), **args)
    c = shamir.split([bytes(32)], random_bytes=os.urandom, **args)
    assert a == b
    assert a != c


def test_lagrange_coefficients_are_cached_per_responder_set():
    """Coefficients for one responder set are computed once and reused."""
    first = shamir.lagrange_at_zero((4, 9, 10))
    assert shamir.lagrange_at_zero([4, 9, 10]) is first
    # sum of Lagrange basis at 0 is 1 (interpolating the constant polynomial 1)
    assert int(first.sum()) % shamir.PRIME == 1


def test_corrupted_shares_are_detected_or_rejected():
    """Out-of-field values are rejected; duplicate x-coordinates are rejected."""
    with pytest.raises(ValueError):
        shamir.reconstruct(
            {1: b"\xff" * shamir.SHARE_BYTES, 2: bytes(shamir.SHARE_BYTES)}, threshold=2
        )
    with pytest.raises(ValueError):
        shamir.split([bytes(32)], threshold=2, xs=[1, 1], random_bytes=os.urandom)
    with pytest.raises(ValueError):
        shamir.split([bytes(32)], threshold=2, xs=[0, 1], random_bytes=os.urandom)
    with pytest.raises(ValueError):
        shamir.split([bytes(32)], threshold=3, xs=[1, 2], random_bytes=os.urandom)


def _shift_limb(share: bytes, limb: int, delta: int) -> bytes:
    """Add ``delta`` (mod p) to one limb of a share."""
    values = np.frombuffer(share, dtype="<u4").astype(np.int64)
    values[limb] = (values[limb] + delta) % shamir.PRIME
    return values.astype("<u4").tobytes()


@pytest.mark.parametrize("secret", [bytes(32), b"\xff" * 32, bytes(31) + b"\x80"])
def test_secrets_at_the_edges_of_the_limb_range_reconstruct(secret):
    """Every 32-byte value is a secret: all-zero, all-ones (each limb at its largest value,
    2^30 - 1, and the top limb at 2^16 - 1) and the top bit alone split and reconstruct."""
    xs = [1, 2, 3]
    shares = shamir.split([secret], threshold=2, xs=xs, random_bytes=DeterministicRandom(5))
    assert shamir.reconstruct({1: shares[0][0], 3: shares[2][0]}, threshold=2) == secret


@pytest.mark.parametrize(("limb", "delta"), [(0, 1 << 30), (shamir.LIMBS - 1, 1 << 16)])
def test_a_reconstruction_outside_the_secret_range_is_refused(limb, delta):
    """With t shares any values interpolate (reconstruct_many's contract), so the result must be
    checked: shares shifted so that one limb interpolates past its 30 bits (or the top limb past
    its 16) are refused with ValueError, never turned into some other 32-byte value."""
    xs = [1, 2]
    shares = shamir.split([bytes(32)], threshold=2, xs=xs, random_bytes=DeterministicRandom(6))
    shifted = [_shift_limb(shares[h][0], limb, delta) for h in range(2)]
    with pytest.raises(ValueError, match="not a 32-byte secret"):
        shamir.reconstruct_many(xs, [shifted])


def test_shares_of_the_wrong_length_are_refused_even_when_their_total_fits():
    """Each share must be exactly SHARE_BYTES long: one byte short and one byte long (which
    together fill two shares' worth) are refused, naming the length."""
    good = bytes(shamir.SHARE_BYTES)
    with pytest.raises(ValueError, match=f"exactly {shamir.SHARE_BYTES} bytes"):
        shamir.reconstruct_many([1, 2], [[good[:-1], good + b"\x00"]])


def test_a_share_value_equal_to_the_prime_is_outside_the_field():
    """Share values lie in GF(p) = [0, p - 1]: p itself is refused (it would otherwise be read
    as 0), p - 1 is accepted."""
    at_prime = np.full(shamir.LIMBS, shamir.PRIME, dtype="<u4").tobytes()
    below = np.full(shamir.LIMBS, shamir.PRIME - 1, dtype="<u4").tobytes()
    zero = bytes(shamir.SHARE_BYTES)
    with pytest.raises(ValueError, match="outside the field"):
        shamir.reconstruct_many([1, 2], [[at_prime, zero]])
    with pytest.raises(ValueError, match="not a 32-byte secret"):
        shamir.reconstruct_many([1, 2], [[below, zero]])


def test_a_coefficient_word_equal_to_the_prime_is_drawn_again():
    """Shamir 1979 needs uniform coefficients in GF(p): 31-bit words equal to p are rejected and
    redrawn. A source whose first words are all p must not yield the coefficient p = 0 (which
    would make every share equal the secret); the redrawn words are used instead."""
    calls = []

    def rigged(n: int) -> bytes:
        calls.append(n)
        return (b"\xff" if len(calls) == 1 else b"\x01") * n

    shares = shamir.split([bytes(32)], threshold=2, xs=[1, 2], random_bytes=rigged)
    assert len(calls) == 2
    limbs = np.frombuffer(shares[0][0], dtype="<u4")
    assert np.all(limbs == 0x01010101), "share at x = 1 of the zero secret is the coefficient"
