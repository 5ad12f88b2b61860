"""Message codecs: round trips, and fuzzing of every decoder (only typed errors escape)."""

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import MalformedMessage, UnsupportedVersion, messages
from secagg.hazmat import shamir

ids = st.lists(st.integers(1, 2**31 - 2), max_size=6, unique=True).map(lambda v: tuple(sorted(v)))
key = st.binary(min_size=32, max_size=32)
signature = st.sampled_from([b"", bytes(64), b"\x07" * 64])
ciphertext = st.binary(min_size=messages.CIPHERTEXT_BYTES, max_size=messages.CIPHERTEXT_BYTES)
share = st.lists(
    st.integers(0, shamir.PRIME - 1), min_size=shamir.LIMBS, max_size=shamir.LIMBS
).map(lambda limbs: struct.pack(f"<{shamir.LIMBS}I", *limbs))


def _pairs(blob):
    return ids.flatmap(lambda keys: st.tuples(*[st.tuples(st.just(k), blob) for k in keys]))


payloads = st.one_of(
    st.builds(messages.AdvertiseKeys, key, key, key, signature),
    st.builds(
        messages.KeyRoster,
        ids.flatmap(
            lambda keys: st.tuples(
                *[st.builds(messages.RosterEntry, st.just(k), key, key, signature) for k in keys]
            )
        ),
    ),
    st.builds(messages.ShareKeys, key, _pairs(ciphertext)),
    st.builds(messages.ShareBundle, _pairs(ciphertext)),
    st.builds(
        messages.MaskedInput, st.just(4), st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])
    ),
    st.builds(
        messages.MaskedInput, st.just(8), st.binary(max_size=40).map(lambda b: b[: len(b) // 8 * 8])
    ),
    st.builds(messages.ConsistencyRequest, ids),
    st.builds(messages.ConsistencySignature, st.binary(min_size=64, max_size=64)),
    st.builds(messages.UnmaskRequest, ids, ids, _pairs(st.binary(min_size=64, max_size=64))),
    st.builds(messages.UnmaskResponse, _pairs(share), _pairs(share)),
)
headers = st.fixed_dictionaries(
    {
        "session_id": st.binary(min_size=32, max_size=32),
        "round_index": st.integers(0, 2**32 - 1),
        "sender": st.integers(0, 2**32 - 1),
    }
)


@settings(max_examples=300, deadline=None)
@given(payload=payloads, header=headers)
def test_round_trip(payload, header):
    """decode(encode(m)) == m for every message kind and header."""
    envelope = messages.decode(messages.encode(payload, **header), max_bytes=1 << 20)
    assert envelope.payload == payload
    assert envelope.kind is payload.KIND
    assert envelope.session_id == header["session_id"]
    assert envelope.round_index == header["round_index"]
    assert envelope.sender == header["sender"]


def _mutate_and_decode(payload, header, data):
    """Truncate, extend, flip or splice an encoded message; decoding must either raise
    MalformedMessage or yield a message whose encoding is exactly the mutated bytes."""
    encoded = bytearray(messages.encode(payload, **header))
    mutation = data.draw(st.sampled_from(["truncate", "extend", "flip", "splice"]))
    if mutation == "truncate":
        encoded = encoded[: data.draw(st.integers(0, len(encoded) - 1))]
    elif mutation == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=16))
    elif mutation == "flip":
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] ^= data.draw(st.integers(1, 255))
    else:
        position = data.draw(st.integers(0, len(encoded)))
        encoded[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        envelope = messages.decode(bytes(encoded), max_bytes=1 << 20)
    except MalformedMessage:
        return
    reencoded = messages.encode(
        envelope.payload,
        session_id=envelope.session_id,
        round_index=envelope.round_index,
        sender=envelope.sender,
    )
    assert reencoded == bytes(encoded)


@settings(max_examples=500, deadline=None)
@given(payload=payloads, header=headers, data=st.data())
def test_mutated_messages_raise_only_typed_errors(payload, header, data):
    """Fuzzing: mutated messages raise MalformedMessage or decode canonically, nothing else."""
    _mutate_and_decode(payload, header, data)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(payload=payloads, header=headers, data=st.data())
def test_mutated_messages_long_fuzzing_profile(payload, header, data):
    """The mutation fuzzing above with 40x more examples (run with ``pytest -m slow``)."""
    _mutate_and_decode(payload, header, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_typed_errors(blob):
    """Arbitrary bytes never crash the decoder."""
    with contextlib.suppress(MalformedMessage):
        messages.decode(blob, max_bytes=1 << 20)


@settings(max_examples=200, deadline=None)
@given(kind=st.integers(1, 9), body=st.binary(max_size=200))
def test_random_bodies_under_a_valid_header(kind, body):
    """A correct header over a random body still yields only typed errors (or a valid message)."""
    header = struct.pack(">4sBB32sIIBI", b"PAGM", 1, kind, bytes(32), 0, 1, 0, len(body))
    with contextlib.suppress(MalformedMessage):
        messages.decode(header + body, max_bytes=1 << 20)


def test_specific_rejections():
    """Version, magic, size limit, unsorted ids and out-of-field shares each raise a typed error."""
    good = messages.encode(
        messages.ConsistencyRequest((1, 2)), session_id=bytes(32), round_index=0, sender=0
    )
    with pytest.raises(UnsupportedVersion):
        messages.decode(good[:4] + b"\x09" + good[5:], max_bytes=1 << 20)
    with pytest.raises(MalformedMessage, match="magic"):
        messages.decode(b"XXXX" + good[4:], max_bytes=1 << 20)
    with pytest.raises(MalformedMessage, match="exceeds"):
        messages.decode(good, max_bytes=10)
    unsorted = good[:-8] + struct.pack(">II", 2, 1)
    with pytest.raises(MalformedMessage, match="increasing"):
        messages.decode(unsorted, max_bytes=1 << 20)
    with pytest.raises(ValueError):
        messages.UnmaskResponse(((1, b"\xff" * shamir.SHARE_BYTES),), ())
    with pytest.raises(MalformedMessage):
        messages.decode("not bytes", max_bytes=10)
