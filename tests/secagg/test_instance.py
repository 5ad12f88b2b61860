"""The session-instance commitment (secagg.instance): a Merkle tree over every advertised key."""

import hashlib
import struct

import pytest

from secagg import SecAggConfig
from secagg.instance import (
    HASH_BYTES,
    InstanceTree,
    absent_leaf,
    key_leaf,
    path_length,
    verify_path,
)
from secagg.randomness import DeterministicRandom


def _config(n: int, seed: int = 0) -> SecAggConfig:
    return SecAggConfig.create(range(1, n + 1), 4, random_bytes=DeterministicRandom(seed))


def _keys(config: SecAggConfig, absent: set[int] = frozenset()) -> dict[int, tuple[bytes, bytes]]:
    return {
        u: (bytes([u % 256]) * 32, bytes([(u + 128) % 256]) * 32)
        for u in config.client_ids
        if u not in absent
    }


def _h(kind: bytes, *parts: bytes) -> bytes:
    return hashlib.sha256(b"privagg/instance-" + kind + b"\x00" + b"".join(parts)).digest()


def _documented_root(config: SecAggConfig, keys: dict[int, tuple[bytes, bytes]]) -> bytes:
    """The root as secagg.instance's module doc specifies it, computed independently."""
    d = config.digest
    level = [
        _h(b"leaf", d, struct.pack(">I", u), *keys[u])
        if u in keys
        else _h(b"absent", d, struct.pack(">I", u))
        for u in config.client_ids
    ]
    width = 1
    while width < len(level):
        width *= 2
    level += [_h(b"pad", d)] * (width - len(level))
    while len(level) > 1:
        level = [_h(b"node", level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


@pytest.mark.parametrize(("n", "absent"), [(2, set()), (5, {2}), (8, {1, 8}), (9, {9})])
def test_the_root_is_the_documented_merkle_tree(n, absent):
    """Instance binding (secagg.instance): SHA-256 with a distinct prefix per node kind over
    one leaf per cohort position (the admitted clients' keys, absent members, padding to a
    power of two). Every party of every version must compute the same root."""
    config = _config(n)
    keys = _keys(config, absent)
    tree = InstanceTree.build(config, keys)
    assert tree.root == _documented_root(config, keys)
    assert len(tree.root) == HASH_BYTES
    assert len(tree.levels[0]) == 1 << path_length(n)


def test_leaves_are_domain_separated_by_kind_session_and_position():
    """No leaf can stand for another: an absent member's leaf differs between positions and
    between sessions, and from every key leaf and inner node."""
    a, b = _config(5, seed=1), _config(5, seed=2)
    ck, mk = b"\x01" * 32, b"\x02" * 32
    leaves = {
        absent_leaf(a.digest, 1),
        absent_leaf(a.digest, 2),
        absent_leaf(b.digest, 1),
        key_leaf(a.digest, 1, ck, mk),
        key_leaf(b.digest, 1, ck, mk),
        key_leaf(a.digest, 2, ck, mk),
        key_leaf(a.digest, 1, mk, ck),
    }
    assert len(leaves) == 7
    assert absent_leaf(a.digest, 1) == _h(b"absent", a.digest, struct.pack(">I", 1))


@pytest.mark.parametrize(("n", "depth"), [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1000, 10)])
def test_path_length_is_the_depth_of_the_padded_tree(n, depth):
    """A tree over n positions, padded to a power of two, has depth ceil(log2 n)."""
    assert path_length(n) == depth


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_every_admitted_client_can_check_its_own_keys_under_the_root(n):
    """A client accepts the root only if its path proves its own fresh keys at its own
    position (secagg.client, roster)."""
    config = _config(n)
    keys = _keys(config, {config.client_ids[-1]})
    tree = InstanceTree.build(config, keys)
    for u in config.client_ids[:-1]:
        leaf = key_leaf(config.digest, u, *keys[u])
        assert verify_path(config, u, leaf, tree.root, tree.path(u))


def test_a_path_for_other_keys_another_position_or_another_root_is_refused():
    """The checks a client makes on the roster's commitment: every way of presenting a root
    that does not hold this client's keys at this client's position fails."""
    config = _config(6)
    keys = _keys(config)
    tree = InstanceTree.build(config, keys)
    u, v = 3, 4
    leaf = key_leaf(config.digest, u, *keys[u])
    path = tree.path(u)
    assert verify_path(config, u, leaf, tree.root, path)
    other_keys = key_leaf(config.digest, u, keys[u][0], b"\x77" * 32)
    assert not verify_path(config, u, other_keys, tree.root, path)
    assert not verify_path(config, v, leaf, tree.root, path)  # right keys, wrong position
    assert not verify_path(config, v, key_leaf(config.digest, v, *keys[v]), tree.root, path)
    for i in range(len(path)):
        flipped = list(path)
        flipped[i] = bytes([flipped[i][0] ^ 1]) + flipped[i][1:]
        assert not verify_path(config, u, leaf, tree.root, flipped)
    assert not verify_path(config, u, leaf, tree.root, path[:-1])
    assert not verify_path(config, u, leaf, tree.root, (*path, path[-1]))
    assert not verify_path(config, u, leaf, bytes(32), path)
    rerun = InstanceTree.build(config, {**keys, 5: (b"\x05" * 32, b"\x06" * 32)})
    assert rerun.root != tree.root
    assert not verify_path(config, u, leaf, rerun.root, path)


def test_a_path_with_the_root_as_its_own_leaf_is_refused():
    """An inner node is never a leaf: a depth-0 "path" from an inner node to the root fails
    the length check, and a leaf cannot be an inner node's preimage (distinct prefixes)."""
    config = _config(4)
    keys = _keys(config)
    tree = InstanceTree.build(config, keys)
    assert not verify_path(config, 1, tree.levels[1][0], tree.root, tree.path(1)[1:])
    assert not verify_path(config, 1, tree.root, tree.root, ())
