"""X25519 known answers (RFC 7748, Sec. 5.2 and 6.1) and low-order point rejection."""

import os

import pytest

from secagg.hazmat.agreement import AgreementKey

ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_rfc7748_section_6_1_public_keys():
    """RFC 7748 Sec. 6.1: the public keys of Alice and Bob."""
    assert AgreementKey(ALICE_PRIVATE).public_bytes == ALICE_PUBLIC
    assert AgreementKey(BOB_PRIVATE).public_bytes == BOB_PUBLIC


def test_rfc7748_section_6_1_shared_secret():
    """RFC 7748 Sec. 6.1: both sides derive the same shared secret K."""
    assert AgreementKey(ALICE_PRIVATE).exchange(BOB_PUBLIC) == SHARED
    assert AgreementKey(BOB_PRIVATE).exchange(ALICE_PUBLIC) == SHARED


def test_rfc7748_section_5_2_scalar_multiplication():
    """RFC 7748 Sec. 5.2, first test vector: scalar times u-coordinate."""
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    out = bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert AgreementKey(scalar).exchange(u) == out


@pytest.mark.parametrize(
    "low_order_point",
    [
        bytes(32),  # u = 0
        (1).to_bytes(32, "little"),  # u = 1
        bytes.fromhex(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
        ),  # order 8
    ],
)
def test_all_zero_shared_secret_is_rejected(low_order_point):
    """RFC 7748 Sec. 6.1: an all-zero output must be rejected (low-order public key)."""
    with pytest.raises(ValueError, match="all zeros"):
        AgreementKey.generate(os.urandom).exchange(low_order_point)


def test_wrong_types_and_lengths():
    """pyca convention: TypeError for the wrong type, ValueError for the wrong length."""
    key = AgreementKey.generate(os.urandom)
    with pytest.raises(TypeError):
        key.exchange("not bytes")
    with pytest.raises(ValueError):
        key.exchange(bytes(31))
    with pytest.raises(ValueError):
        AgreementKey(bytes(16))
