"""The client's policy (secagg.policy): the floors a client holds against the server's proposal."""

import math

import pytest

from secagg import (
    ClientPolicy,
    ConfigurationError,
    Encoding,
    PolicyViolation,
    SecAggConfig,
)
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom


def _config(n: int, **kwargs: object) -> SecAggConfig:
    return SecAggConfig.create(range(1, n + 1), 4, random_bytes=DeterministicRandom(n), **kwargs)


def _identities(n: int) -> dict[int, bytes]:
    rng = DeterministicRandom(1)
    return {u: SigningKey.generate(rng).public_bytes for u in range(1, n + 1)}


# (n, neighbours, c, threshold floor) for the default policy (gamma = 0.05, 2^-40): the complete
# graph takes c = ceil(gamma (n - 1)); the sparse rows are SECURITY.md's parameter table.
DEFAULT_FLOORS = [
    (5, 4, 1, 4),
    (10, 9, 1, 6),
    (50, 49, 3, 27),
    (300, 82, 26, 55),
    (1000, 88, 28, 59),
]


@pytest.mark.parametrize(("n", "k", "c", "floor"), DEFAULT_FLOORS)
def test_the_threshold_floor_is_the_smallest_t_with_2t_above_k_plus_1_plus_c(n, k, c, floor):
    """SECURITY.md, C2: two stories about one client need 2t - c <= k + 1 signers, so the
    client's floor is the smallest t with 2t > k + 1 + c; t - c honest inputs remain in any
    sum the server can unmask (the noise shares of distributed DP are sized for it)."""
    config = _config(n, neighbours=k, threshold=floor)
    policy = ClientPolicy()
    assert policy.corrupt_neighbours(config) == c
    assert policy.minimum_threshold(config) == floor
    assert 2 * floor > k + 1 + c >= 2 * (floor - 1)
    assert policy.honest_floor(config) == floor - c


@pytest.mark.parametrize(("n", "k", "c", "floor"), DEFAULT_FLOORS)
def test_a_threshold_at_the_floor_is_accepted_and_one_below_is_refused(n, k, c, floor):
    """ClientPolicy.check_session: t = floor passes, t = floor - 1 is refused with
    PolicyViolation naming the threshold (the server's t = 1 route, at its boundary)."""
    ClientPolicy().check_session(_config(n, neighbours=k, threshold=floor))
    with pytest.raises(
        PolicyViolation, match=f"threshold {floor - 1} is below .* floor of {floor}"
    ):
        ClientPolicy().check_session(_config(n, neighbours=k, threshold=floor - 1))


@pytest.mark.parametrize(("n", "corrupt_fraction"), [(2, 0.0), (3, 0.0), (4, 0.4), (101, 0.45)])
def test_a_floor_equal_to_all_holders_is_still_a_safe_threshold(n, corrupt_fraction):
    """When the floor is k + 1 (or k) the session is still safe with t = floor: only a floor
    above k + 1 leaves no safe threshold. (A two-client cohort with no colluder assumed, or
    c close to k on a sparse graph.)"""
    policy = ClientPolicy(min_clients=2, corrupt_fraction=corrupt_fraction)
    shape = _config(n, neighbours=4 if n > 5 else n - 1, threshold=1)
    floor = policy.minimum_threshold(shape)
    assert floor >= shape.neighbours
    policy.check_session(_config(n, neighbours=shape.neighbours, threshold=floor))


def test_the_cohort_floor_is_inclusive():
    """C3: a cohort of exactly ``min_clients`` is accepted, one fewer refused."""
    policy = ClientPolicy(min_clients=6)
    policy.check_session(_config(6))
    with pytest.raises(PolicyViolation, match=r"cohort of 5 clients is below .* floor of 6"):
        policy.check_session(_config(5))


def test_only_the_allowed_rings_are_accepted():
    """The client decides which ring sizes it accepts."""
    policy = ClientPolicy(allowed_ring_bits=frozenset({64}))
    policy.check_session(_config(10, ring_bits=64))
    with pytest.raises(PolicyViolation, match="32-bit ring is not allowed"):
        policy.check_session(_config(10, ring_bits=32))


def test_identities_are_required_only_when_the_policy_says_so():
    """C1: ``require_identities`` refuses a session without identities (no consistency check)
    and accepts one with them; without the flag both are accepted."""
    strict, lax = ClientPolicy(require_identities=True), ClientPolicy()
    with_ids, without = _config(10, identities=_identities(10)), _config(10)
    strict.check_session(with_ids)
    lax.check_session(with_ids)
    lax.check_session(without)
    with pytest.raises(PolicyViolation, match="requires Ed25519 identities"):
        strict.check_session(without)


@pytest.mark.parametrize(
    ("loss", "n", "k", "t", "floor"),
    [
        (1 / 3, 10, 9, 6, 6),  # (2/3) 9 is 6.000000000000001 in floats: still 6
        (1 / 3, 300, 82, 55, 55),  # ceil(54.67)
        (1 / 3, 50, 49, 27, 33),  # ceil(32.67), above t - 1
        (0.5, 50, 49, 27, 26),  # ceil(24.5) = 25 is below t - 1 = 26
        (1.0, 300, 82, 55, 54),  # down to the t - 1 the protocol needs
        (0.0, 300, 82, 55, 82),  # every neighbour
    ],
)
def test_the_neighbourhood_floor_is_the_larger_of_t_minus_1_and_the_allowed_loss(
    loss, n, k, t, floor
):
    """Neighbourhood floor (issue: "a neighbourhood the server cannot shrink unseen"): a client
    goes on only while max(t - 1, ceil((1 - max_neighbour_loss) k)) neighbours completed each
    key phase."""
    config = _config(n, neighbours=k, threshold=t)
    assert ClientPolicy(max_neighbour_loss=loss).min_live_neighbours(config) == floor


def test_encodings_outside_the_policy_are_refused():
    """The server may not pick an encoding the client does not allow; a client that requires
    DP noise refuses the fixed-point encoding (no noise) and accepts distributed DP."""
    ClientPolicy().check_encoding(Encoding.FIXED_POINT)
    ClientPolicy().check_encoding("distributed-dp")
    dp_only = ClientPolicy(allowed_encodings=frozenset({Encoding.DISTRIBUTED_DP}))
    dp_only.check_encoding(Encoding.DISTRIBUTED_DP)
    with pytest.raises(PolicyViolation, match="'fixed-point' is not allowed"):
        dp_only.check_encoding(Encoding.FIXED_POINT)
    needs_noise = ClientPolicy(min_noise_multiplier=0.5)
    needs_noise.check_encoding(Encoding.DISTRIBUTED_DP)
    with pytest.raises(PolicyViolation, match="requires client-level DP noise"):
        needs_noise.check_encoding(Encoding.FIXED_POINT)


def test_noise_below_the_floor_is_refused_at_the_boundary():
    """check_noise: a noise multiplier equal to the floor passes; below it, or NaN, is refused
    (a server that proposes less noise than the client requires gets nothing)."""
    config = _config(300)
    policy = ClientPolicy(min_noise_multiplier=1.0)
    policy.check_noise(config, noise_multiplier=1.0, noise_shares=1)
    for weak in (0.999, 0.0, math.nan):
        with pytest.raises(PolicyViolation, match=r"below this client's floor of 1\.0"):
            policy.check_noise(config, noise_multiplier=weak, noise_shares=1)


def test_noise_shares_beyond_the_honest_floor_are_refused():
    """Noise sized for t - c (SECURITY.md, client level): each client adds 1/noise_shares of the
    target variance; more shares than t - c honest inputs would leave a released sum with less
    than the target noise once colluders subtract theirs."""
    config = _config(300)  # t = 55, c = 26
    policy = ClientPolicy()
    honest = policy.honest_floor(config)
    assert honest == 29
    policy.check_noise(config, noise_multiplier=0.0, noise_shares=honest)
    with pytest.raises(PolicyViolation, match=f"1/{honest + 1} of the noise.* {honest} honest"):
        policy.check_noise(config, noise_multiplier=0.0, noise_shares=honest + 1)


def test_the_default_policy_is_the_documented_one():
    """SECURITY.md, "The client policy": the secure defaults."""
    assert ClientPolicy().to_dict() == {
        "min_clients": 5,
        "corrupt_fraction": 0.05,
        "security_bits": 40,
        "max_neighbour_loss": 1 / 3,
        "allowed_ring_bits": [32, 64],
        "allowed_encodings": ["distributed-dp", "fixed-point"],
        "min_noise_multiplier": 0.0,
        "require_identities": False,
        "max_staleness": 63,
        "min_resolution_bits": 8,
        "pinned_terms": {},
        "term_ranges": {},
    }
    loose = ClientPolicy.permissive()
    assert (loose.min_clients, loose.corrupt_fraction, loose.max_neighbour_loss) == (2, 0.0, 1.0)
    assert loose.allowed_ring_bits == frozenset(range(1, 65))


def test_a_policy_survives_its_plain_values():
    """from_mapping(to_dict()) is the identity (a TOML table, a Flower node config), and
    to_dict gives sorted lists."""
    policy = ClientPolicy(
        min_clients=7,
        corrupt_fraction=0.1,
        security_bits=64,
        max_neighbour_loss=0.25,
        allowed_ring_bits=frozenset({64, 48}),
        allowed_encodings=frozenset({Encoding.DISTRIBUTED_DP}),
        min_noise_multiplier=0.7,
        require_identities=True,
        max_staleness=9,
        pinned_terms={"clip": 4.0, "precision_bits": 16},
        term_ranges={"noise_multiplier": (0.5, 2.0)},
    )
    values = policy.to_dict()
    assert values["allowed_ring_bits"] == [48, 64]
    assert values["allowed_encodings"] == ["distributed-dp"]
    assert ClientPolicy.from_mapping(values) == policy
    assert ClientPolicy.from_mapping({}) == ClientPolicy()


@pytest.mark.parametrize("container", [list, tuple, set, frozenset])
def test_from_mapping_takes_any_list_of_rings_and_encodings(container):
    """Lists from TOML (or any collection) become frozensets; encodings by their names."""
    policy = ClientPolicy.from_mapping(
        {
            "allowed_ring_bits": container([32]),
            "allowed_encodings": container(["fixed-point"]),
            "min_clients": 9,
        }
    )
    assert policy == ClientPolicy(
        allowed_ring_bits=frozenset({32}),
        allowed_encodings=frozenset({Encoding.FIXED_POINT}),
        min_clients=9,
    )


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"min_client": 5}, r"unknown client policy keys \['min_client'\]"),
        ({"allowed_ring_bits": 32}, "allowed_ring_bits must be a list"),
        ({"allowed_encodings": "fixed-point"}, "allowed_encodings must be a list"),
        ({"allowed_encodings": ["none"]}, "allowed_encodings must be among"),
        ({"min_clients": "5"}, "min_clients must be int, got str"),
    ],
)
def test_from_mapping_refuses_unknown_keys_and_wrong_types(values, match):
    """A typo in a node config is an error naming the key, never a silently default floor."""
    with pytest.raises(ConfigurationError, match=match):
        ClientPolicy.from_mapping(values)


@pytest.mark.parametrize(
    "values",
    [
        {"min_clients": 2},
        {"corrupt_fraction": 0.0},
        {"corrupt_fraction": 0.499},
        {"corrupt_fraction": 0},
        {"security_bits": 1},
        {"security_bits": 128},
        {"max_neighbour_loss": 0.0},
        {"max_neighbour_loss": 1},
        {"min_noise_multiplier": 0},
        {"min_noise_multiplier": 3.5},
        {"allowed_ring_bits": frozenset({1, 64})},
        {"require_identities": True},
    ],
)
def test_policy_values_at_the_edges_of_their_ranges_are_accepted(values):
    """The edges of every range are valid; ints are accepted for the float fields and stored
    as floats."""
    policy = ClientPolicy(**values)
    for name in ("corrupt_fraction", "max_neighbour_loss", "min_noise_multiplier"):
        assert type(getattr(policy, name)) is float


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"min_clients": 1}, "min_clients must be >= 2"),
        ({"min_clients": 5.0}, "min_clients must be int"),
        ({"min_clients": True}, "min_clients must be int"),
        ({"corrupt_fraction": 0.5}, "corrupt_fraction must lie in"),
        ({"corrupt_fraction": -0.01}, "corrupt_fraction must lie in"),
        ({"corrupt_fraction": "0.1"}, "corrupt_fraction must be float"),
        ({"corrupt_fraction": True}, "corrupt_fraction must be float"),
        ({"security_bits": 0}, "security_bits must lie in"),
        ({"security_bits": 129}, "security_bits must lie in"),
        ({"security_bits": 64.0}, "security_bits must be int, got float"),
        ({"max_neighbour_loss": -0.01}, "max_neighbour_loss must lie in"),
        ({"max_neighbour_loss": 1.01}, "max_neighbour_loss must lie in"),
        ({"min_noise_multiplier": -1.0}, "min_noise_multiplier must be finite and >= 0"),
        ({"min_noise_multiplier": math.inf}, "min_noise_multiplier must be finite"),
        ({"min_noise_multiplier": math.nan}, "min_noise_multiplier must be finite"),
        ({"allowed_ring_bits": frozenset()}, "allowed_ring_bits must be ring sizes"),
        ({"allowed_ring_bits": frozenset({0})}, "allowed_ring_bits must be ring sizes"),
        ({"allowed_ring_bits": frozenset({65})}, "allowed_ring_bits must be ring sizes"),
        ({"allowed_ring_bits": frozenset({True})}, "allowed_ring_bits must be ring sizes"),
        ({"allowed_ring_bits": frozenset({32.0})}, "allowed_ring_bits must be ring sizes"),
        ({"require_identities": 1}, "require_identities must be bool, got int"),
    ],
)
def test_policy_values_outside_their_ranges_are_refused(values, match):
    """A policy that would protect less than it says (or is not what it seems) fails at
    construction with ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match=match):
        ClientPolicy(**values)


def test_the_allowed_sets_are_frozen_when_the_policy_is_built():
    """A policy is fixed once built (the floor a client checks is the floor it holds later):
    rings and encodings given as mutable lists become frozensets of ints and Encoding members,
    so changing the caller's list afterwards changes nothing."""
    rings, encodings = [32], ["fixed-point"]
    policy = ClientPolicy(allowed_ring_bits=rings, allowed_encodings=encodings)
    rings.append(8)
    encodings.append("none")
    assert policy.allowed_ring_bits == frozenset({32})
    assert type(policy.allowed_ring_bits) is frozenset
    assert policy.allowed_encodings == frozenset({Encoding.FIXED_POINT})
    assert type(policy.allowed_encodings) is frozenset
    assert all(type(e) is Encoding for e in policy.allowed_encodings)
    hash(policy)


@pytest.mark.parametrize(
    ("corrupt_fraction", "security_bits"), [(0.05, 40), (0.1, 40), (0.1, 80), (0.3, 20)]
)
def test_the_colluder_bound_uses_the_policys_own_fraction_and_security_level(
    corrupt_fraction, security_bits
):
    """c (SECURITY.md, condition on 2t > k + 1 + c) is computed with this client's corrupt
    fraction and security level, not the library defaults: a stricter policy assumes more
    colluders and so demands a higher threshold."""
    from secagg.parameters import corrupt_neighbours

    config = SecAggConfig.create(
        range(1, 301), 4, neighbours=40, threshold=40, random_bytes=DeterministicRandom(3)
    )
    policy = ClientPolicy(corrupt_fraction=corrupt_fraction, security_bits=security_bits)
    expected = corrupt_neighbours(
        300, 40, corrupt_fraction=corrupt_fraction, security_bits=security_bits
    )
    assert policy.corrupt_neighbours(config) == expected
    assert policy.minimum_threshold(config) == (40 + 1 + expected) // 2 + 1


def test_check_contribution_holds_pins_ranges_and_the_resolution_floor():
    """C6: the client encodes only by a contribution bound into the session, and only one
    inside its policy: a session without one, another pinned value, a value outside a range,
    or a clip that resolves fewer than 2^min_resolution_bits steps is refused; staleness is
    bounded by max_staleness."""
    from secagg.contribution import Contribution
    from secagg.encoding import FixedPointEncoder

    encoder = FixedPointEncoder(num_clients=10, max_weight=100, clip=4.0, precision_bits=16)
    config = SecAggConfig.create(range(1, 11), 4, contribution=encoder.contribution())
    assert ClientPolicy().check_contribution(config) == encoder.contribution()
    with pytest.raises(PolicyViolation, match="states no contribution"):
        ClientPolicy().check_contribution(SecAggConfig.create(range(1, 11), 4))
    with pytest.raises(PolicyViolation, match=r"pinned to clip = 2\.0"):
        ClientPolicy(pinned_terms={"clip": 2.0}).check_contribution(config)
    ClientPolicy(pinned_terms={"clip": 4.0}).check_contribution(config)
    with pytest.raises(PolicyViolation, match="outside this client's range"):
        ClientPolicy(term_ranges={"clip": (0.5, 3.9)}).check_contribution(config)
    ClientPolicy(term_ranges={"clip": (4.0, 4.0)}).check_contribution(config)
    tiny = Contribution(
        config.contribution.encoding, {**config.contribution.terms, "clip": 2.0**-9}
    )
    shrunk = SecAggConfig.create(range(1, 11), 4, contribution=tiny)
    with pytest.raises(PolicyViolation, match="2\\^8"):
        ClientPolicy().check_contribution(shrunk)  # 2^7 steps
    ClientPolicy(min_resolution_bits=7).check_contribution(shrunk)  # exactly 2^7 steps
    ClientPolicy().check_staleness(63)
    for staleness in (-1, 64):
        with pytest.raises(PolicyViolation, match="max_staleness"):
            ClientPolicy().check_staleness(staleness)
