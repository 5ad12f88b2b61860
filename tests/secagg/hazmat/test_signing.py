"""Ed25519 known answer (RFC 8032, Sec. 7.1, TEST 1) and forgery rejection."""

import pytest

from secagg.hazmat import signing
from secagg.hazmat.exceptions import InvalidAuthentication

SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test_1():
    """RFC 8032 Sec. 7.1 TEST 1: public key and signature of the empty message."""
    key = signing.SigningKey(SECRET)
    assert key.public_bytes == PUBLIC
    assert key.sign(b"") == SIGNATURE
    signing.verify(PUBLIC, SIGNATURE, b"")


def test_forged_or_truncated_signatures_raise():
    """A modified message, signature or a truncated signature always raises."""
    with pytest.raises(InvalidAuthentication):
        signing.verify(PUBLIC, SIGNATURE, b"x")
    with pytest.raises(InvalidAuthentication):
        signing.verify(PUBLIC, bytes([SIGNATURE[0] ^ 1]) + SIGNATURE[1:], b"")
    with pytest.raises(InvalidAuthentication):
        signing.verify(PUBLIC, SIGNATURE[:63], b"")
