"""Every key, seed, commitment and transcript (secagg.keys): its documented format and what it
binds (SECURITY.md, "What the protocol is")."""

import struct

import pytest

from secagg import AuthenticationFailed, keys
from secagg.hazmat import kdf
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom

SECRET = bytes(range(32))
DIGEST = b"\x5a" * 32
OTHER_DIGEST = b"\xa5" * 32
SESSION = b"\x11" * 32


def _documented(label: bytes, context: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with info = DOMAIN | 0 | label | 0 | context (secagg.hazmat.kdf)."""
    return kdf.hkdf_sha256(
        SECRET, info=kdf.DOMAIN + b"\x00" + label + b"\x00" + context, length=length
    )


def test_each_derivation_follows_its_documented_format():
    """SECURITY.md: share channel HKDF(secret, label | digest | sender | receiver), pairwise
    seed HKDF(secret, label | digest | min | max), self-mask seed and commitment HKDF(b, label |
    digest | owner). Every party (and every version) must derive the same bytes."""
    pair = struct.Struct(">II")
    assert keys.channel_key(SECRET, DIGEST, 3, 9) == _documented(
        b"share-channel", DIGEST + pair.pack(3, 9)
    )
    assert keys.pairwise_seed(SECRET, DIGEST, 9, 3) == _documented(
        b"pairwise-mask", DIGEST + pair.pack(3, 9)
    )
    owner = struct.pack(">I", 7)
    assert keys.self_mask_seed(SECRET, DIGEST, 7) == _documented(b"self-mask", DIGEST + owner)
    assert keys.self_mask_commitment(SECRET, DIGEST, 7) == _documented(
        b"self-mask-commitment", DIGEST + owner
    )


def test_the_share_channel_has_one_key_per_direction_and_session():
    """The AES-GCM key of u -> v differs from v -> u and from another session's, so a
    ciphertext cannot be reflected back or carried into another configuration."""
    forward = keys.channel_key(SECRET, DIGEST, 1, 2)
    assert len(forward) == 32
    assert forward != keys.channel_key(SECRET, DIGEST, 2, 1)
    assert forward != keys.channel_key(SECRET, OTHER_DIGEST, 1, 2)
    assert forward != keys.channel_key(SECRET, DIGEST, 1, 3)


def test_the_pairwise_seed_is_symmetric_and_bound_to_the_pair_and_session():
    """s_uv = s_vu, so the two masks cancel in the sum (Bonawitz et al. 2017, Sec. 4); it
    differs for another pair or another session."""
    seed = keys.pairwise_seed(SECRET, DIGEST, 4, 8)
    assert seed == keys.pairwise_seed(SECRET, DIGEST, 8, 4)
    assert seed != keys.pairwise_seed(SECRET, DIGEST, 4, 9)
    assert seed != keys.pairwise_seed(SECRET, OTHER_DIGEST, 4, 8)


def test_the_commitment_to_b_never_reveals_the_self_mask_seed():
    """The server sees the commitment in phase 1: it must differ from the seed of the self
    mask (else the server strips PRG(b) without any share), and bind the owner and session."""
    seed = keys.self_mask_seed(SECRET, DIGEST, 5)
    commitment = keys.self_mask_commitment(SECRET, DIGEST, 5)
    assert seed != commitment
    assert seed != keys.self_mask_seed(SECRET, DIGEST, 6)
    assert seed != keys.self_mask_seed(SECRET, OTHER_DIGEST, 5)
    assert commitment != keys.self_mask_commitment(SECRET, DIGEST, 6)
    assert commitment != keys.self_mask_commitment(SECRET, OTHER_DIGEST, 5)


def test_the_associated_data_binds_session_round_sender_receiver_and_digest():
    """AEAD associated data = session | round | sender | receiver | digest (DESIGN.md,
    hazmat/aead.py): a ciphertext opens only in its own session, round and direction."""
    ad = keys.share_associated_data(SESSION, 3, DIGEST, 1, 2)
    assert ad == b"privagg/share\x00" + SESSION + struct.pack(">III", 3, 1, 2) + DIGEST
    others = {
        keys.share_associated_data(b"\x12" * 32, 3, DIGEST, 1, 2),
        keys.share_associated_data(SESSION, 4, DIGEST, 1, 2),
        keys.share_associated_data(SESSION, 3, OTHER_DIGEST, 1, 2),
        keys.share_associated_data(SESSION, 3, DIGEST, 2, 1),
        keys.share_associated_data(SESSION, 3, DIGEST, 1, 3),
    }
    assert ad not in others and len(others) == 5


def test_the_key_advertisement_transcript_binds_session_owner_and_both_keys():
    """What a client signs for its two session keys: a signature cannot be moved to another
    session, another client id, or a swapped or replaced key."""
    ck, mk = b"\x01" * 32, b"\x02" * 32
    transcript = keys.key_advertisement_transcript(DIGEST, 7, ck, mk)
    assert transcript == b"privagg/advertise\x00" + DIGEST + struct.pack(">I", 7) + ck + mk
    others = {
        keys.key_advertisement_transcript(OTHER_DIGEST, 7, ck, mk),
        keys.key_advertisement_transcript(DIGEST, 8, ck, mk),
        keys.key_advertisement_transcript(DIGEST, 7, mk, ck),
        keys.key_advertisement_transcript(DIGEST, 7, ck, b"\x03" * 32),
    }
    assert transcript not in others and len(others) == 4


def test_the_consistency_transcript_binds_session_instance_and_the_set_u3():
    """What a client signs in the consistency check (SECURITY.md, "one story"): the digest,
    the instance root of this run, and U3 as a length-prefixed sorted list, so one signature
    certifies one set in one run only."""
    root = b"\x33" * 32
    transcript = keys.consistency_transcript(DIGEST, root, [5, 1, 3])
    assert transcript == (
        b"privagg/consistency\x00" + DIGEST + root + struct.pack(">IIII", 3, 1, 3, 5)
    )
    assert transcript == keys.consistency_transcript(DIGEST, root, frozenset({3, 5, 1}))
    others = {
        keys.consistency_transcript(OTHER_DIGEST, root, [1, 3, 5]),
        keys.consistency_transcript(DIGEST, b"\x34" * 32, [1, 3, 5]),
        keys.consistency_transcript(DIGEST, root, [1, 3]),
        keys.consistency_transcript(DIGEST, root, [1, 3, 5, 6]),
        keys.consistency_transcript(DIGEST, root, []),
    }
    assert transcript not in others and len(others) == 5


def test_a_key_advertisement_verifies_only_for_its_owner_session_and_keys():
    """verify_key_advertisement accepts the owner's signature over exactly these keys and
    raises AuthenticationFailed (never returns False) for anything else."""
    rng = DeterministicRandom(3)
    owner, stranger = SigningKey.generate(rng), SigningKey.generate(rng)
    ck, mk = b"\x01" * 32, b"\x02" * 32
    signature = owner.sign(keys.key_advertisement_transcript(DIGEST, 7, ck, mk))
    identity = owner.public_bytes
    keys.verify_key_advertisement(identity, DIGEST, 7, ck, mk, signature, sender=0)
    bad = [
        (stranger.public_bytes, DIGEST, 7, ck, mk, signature),
        (identity, OTHER_DIGEST, 7, ck, mk, signature),
        (identity, DIGEST, 8, ck, mk, signature),
        (identity, DIGEST, 7, mk, ck, signature),
        (identity, DIGEST, 7, ck, mk, b""),
        (identity, DIGEST, 7, ck, mk, bytes([signature[0] ^ 1]) + signature[1:]),
    ]
    for args in bad:
        with pytest.raises(AuthenticationFailed, match="key signature of client"):
            keys.verify_key_advertisement(*args, sender=0)
