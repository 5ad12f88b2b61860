"""HKDF-SHA256 known answers (RFC 5869, Appendix A) and domain separation."""

import pytest

from secagg.hazmat import kdf


def test_rfc5869_test_case_1():
    """RFC 5869 A.1: basic test case with SHA-256."""
    okm = kdf.hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_rfc5869_test_case_3():
    """RFC 5869 A.3: zero-length salt and info."""
    okm = kdf.hkdf_sha256(bytes.fromhex("0b" * 22), info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_labels_and_contexts_separate_domains():
    """Distinct (label, context) pairs give independent keys from one secret."""
    secret = bytes(32)
    outputs = {
        kdf.derive(secret, label=label, context=context)
        for label in (b"a", b"ab", b"b")
        for context in (b"", b"\x00", b"b")
    }
    assert len(outputs) == 9


def test_label_must_not_contain_nul():
    """A NUL in a label would make the info encoding ambiguous."""
    with pytest.raises(ValueError):
        kdf.derive(bytes(32), label=b"a\x00b", context=b"")
    with pytest.raises(ValueError):
        kdf.derive(bytes(32), label=b"", context=b"")
