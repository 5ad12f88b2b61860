"""AES-256-GCM known answers (McGrew-Viega GCM spec, test cases 13-14) and tamper detection."""

import pytest

from secagg.hazmat import aead
from secagg.hazmat.exceptions import InvalidAuthentication

KEY = bytes(32)
NONCE = bytes(12)


def test_gcm_spec_test_case_13():
    """GCM spec test case 13: empty plaintext, zero key and IV -> tag only."""
    assert aead.seal(KEY, NONCE, b"", b"").hex() == "530f8afbc74536b9a963b4f1c4cb738b"


def test_gcm_spec_test_case_14():
    """GCM spec test case 14: one zero block."""
    sealed = aead.seal(KEY, NONCE, bytes(16), b"")
    assert sealed.hex() == "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919"
    assert aead.open_(KEY, NONCE, sealed, b"") == bytes(16)


@pytest.mark.parametrize("position", [0, 15, 16, 31])
def test_any_flipped_bit_is_rejected(position):
    """Integrity: flipping a ciphertext or tag bit raises, never returns garbage."""
    sealed = bytearray(aead.seal(KEY, NONCE, bytes(16), b"ad"))
    sealed[position] ^= 1
    with pytest.raises(InvalidAuthentication):
        aead.open_(KEY, NONCE, bytes(sealed), b"ad")


def test_associated_data_is_bound():
    """Ciphertexts do not open under other associated data (session, round, sender, receiver)."""
    sealed = aead.seal(KEY, NONCE, b"share", b"session|1|2|3")
    with pytest.raises(InvalidAuthentication):
        aead.open_(KEY, NONCE, sealed, b"session|1|3|2")


def test_short_ciphertext_is_an_authentication_failure():
    """Anything shorter than a tag is rejected as unauthenticated."""
    with pytest.raises(InvalidAuthentication):
        aead.open_(KEY, NONCE, b"short", b"")
