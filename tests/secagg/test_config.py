"""Configuration validation: every bad parameter fails at construction with the fix in the message."""

import dataclasses

import pytest

from secagg import ConfigurationError, SecAggConfig


def _make(**overrides):
    fields = dict(
        session_id=bytes(32),
        round_index=0,
        client_ids=tuple(range(1, 11)),
        vector_length=100,
        threshold=6,
        neighbours=9,
    )
    fields.update(overrides)
    return SecAggConfig(**fields)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"threshold": 11}, "threshold must lie in"),
        ({"threshold": 0}, "threshold must lie in"),
        ({"neighbours": 10}, "neighbours must lie in"),
        ({"neighbours": 0}, "neighbours must lie in"),
        ({"neighbours": 3, "client_ids": tuple(range(1, 10)), "threshold": 2}, "does not exist"),
        ({"threshold": 5, "neighbours": 3}, "threshold must lie in"),
        ({"ring_bits": 0}, "ring_bits"),
        ({"ring_bits": 65}, "ring_bits"),
        ({"ring_bits": 16, "input_bound": 10_000}, "use ring_bits >= "),
        ({"input_bound": -1}, "input_bound"),
        ({"client_ids": (1,), "threshold": 1, "neighbours": 1}, "at least 2 clients"),
        ({"client_ids": (1, 1, 2)}, "duplicates"),
        ({"client_ids": tuple(range(0, 10))}, "client ids must lie"),
        ({"session_id": b"short"}, "session_id"),
        ({"vector_length": 0}, "vector_length"),
        ({"identities": {1: bytes(32)}}, "one Ed25519 public key per client"),
    ],
)
def test_bad_parameters_fail_at_construction(overrides, message):
    """t > n, t < 1, k out of range, odd regular graphs, too-small rings, ...: ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message):
        _make(**overrides)


def test_ring_too_small_for_bound_suggests_the_bits_needed():
    """The wrap-around error names a ring size that fits and a bound that fits."""
    with pytest.raises(ConfigurationError) as error:
        _make(ring_bits=16, input_bound=10_000)
    suggested = int(str(error.value).split("ring_bits >= ")[1].split()[0])
    _make(ring_bits=suggested, input_bound=10_000)


def test_encode_decode_round_trip_and_digest_binds_every_field():
    """The canonical encoding round-trips and any change of parameter changes the digest."""
    base = _make(identities={i: bytes([i]) * 32 for i in range(1, 11)}, input_bound=5)
    assert SecAggConfig.decode(base.encode()) == base
    changes = [
        {"session_id": b"\x01" * 32},
        {"round_index": 1},
        {"vector_length": 101},
        {"threshold": 7},
        {"ring_bits": 40},
        {"input_bound": 6},
        {"identities": None},
        {
            "client_ids": tuple(range(2, 12)),
            "identities": {i: bytes([i]) * 32 for i in range(2, 12)},
        },
    ]
    digests = {dataclasses.replace(base, **change).digest for change in changes}
    assert base.digest not in digests
    assert len(digests) == len(changes)


def test_decode_rejects_garbage():
    """Truncated or foreign configuration bytes raise ConfigurationError."""
    good = _make().encode()
    for bad in (good[:-1], good + b"\x00", b"XXXX" + good[4:], good[:4] + b"\x05" + good[5:]):
        with pytest.raises(ConfigurationError):
            SecAggConfig.decode(bad)


def test_create_draws_a_fresh_session_id_and_recommended_parameters():
    """create() gives a new random session id each time and in-range defaults."""
    a, b = SecAggConfig.create(range(1, 51), 10), SecAggConfig.create(range(1, 51), 10)
    assert a.session_id != b.session_id
    assert a.threshold >= 1 and a.threshold <= a.neighbours + 1
    explicit = SecAggConfig.create(range(1, 51), 10, neighbours=10)
    assert explicit.neighbours == 10 and explicit.threshold <= 11
