"""The session instance: one Merkle commitment to every key advertised in a session.

A server can run one session id - one configuration digest - twice (a restart), with fresh keys
each time. What tells two runs apart is their keys, so the server commits to the keys of every
client it admitted after the advertise phase (U1) in a Merkle tree with one leaf per cohort
position, and gives each client the root and the authentication path of its own leaf with its
roster. A client checks that the root holds its own fresh keys at its own position and then binds
the root into the consistency transcript it signs. A signature made in one run therefore never
counts in another: every honest signer's keys, and so the root it accepts, differ between runs,
and one position holds one pair of keys.

Hashes are SHA-256 with a distinct prefix per node kind (leaf, absent client, padding, inner
node), so no leaf can be read as an inner node or another client's leaf.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from secagg.config import SecAggConfig

__all__ = ["HASH_BYTES", "InstanceTree", "absent_leaf", "key_leaf", "path_length", "verify_path"]

HASH_BYTES = 32
_ID = struct.Struct(">I")


def _hash(label: bytes, *parts: bytes) -> bytes:
    return hashlib.sha256(b"privagg/instance-" + label + b"\x00" + b"".join(parts)).digest()


def key_leaf(digest: bytes, client_id: int, channel_key: bytes, mask_key: bytes) -> bytes:
    """The leaf of a client that advertised ``channel_key`` and ``mask_key`` in this session."""
    return _hash(b"leaf", digest, _ID.pack(client_id), channel_key, mask_key)


def absent_leaf(digest: bytes, client_id: int) -> bytes:
    """The leaf of a cohort member the server did not admit (no keys)."""
    return _hash(b"absent", digest, _ID.pack(client_id))


def path_length(num_clients: int) -> int:
    """The depth of the tree over ``num_clients`` positions (padded to a power of two)."""
    return max(0, (num_clients - 1).bit_length())


@dataclass(frozen=True)
class InstanceTree:
    """The Merkle tree over a session's cohort positions (built by the server).

    Attributes:
        root: the commitment to every admitted client's keys.
        levels: the tree, leaves first; each level padded to even length.
    """

    root: bytes
    levels: tuple[tuple[bytes, ...], ...]
    positions: Mapping[int, int]

    @classmethod
    def build(cls, config: SecAggConfig, keys: Mapping[int, tuple[bytes, bytes]]) -> InstanceTree:
        """Commit to ``keys`` (client id -> (channel key, mask key)) for ``config``'s cohort."""
        digest = config.digest
        level = [
            key_leaf(digest, u, *keys[u]) if u in keys else absent_leaf(digest, u)
            for u in config.client_ids
        ]
        width = 1 << path_length(config.num_clients)
        level += [_hash(b"pad", digest)] * (width - len(level))
        levels = [tuple(level)]
        while len(level) > 1:
            level = [_hash(b"node", level[i], level[i + 1]) for i in range(0, len(level), 2)]
            levels.append(tuple(level))
        positions = {u: i for i, u in enumerate(config.client_ids)}
        return cls(root=level[0], levels=tuple(levels), positions=positions)

    def path(self, client_id: int) -> tuple[bytes, ...]:
        """The sibling hashes from ``client_id``'s leaf up to the root."""
        index = self.positions[client_id]
        siblings = []
        for level in self.levels[:-1]:
            siblings.append(level[index ^ 1])
            index >>= 1
        return tuple(siblings)


def verify_path(
    config: SecAggConfig, client_id: int, leaf: bytes, root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether ``path`` proves ``leaf`` at ``client_id``'s cohort position under ``root``."""
    if len(path) != path_length(config.num_clients):
        return False
    index = config.client_ids.index(client_id)
    node = leaf
    for sibling in path:
        node = _hash(b"node", sibling, node) if index & 1 else _hash(b"node", node, sibling)
        index >>= 1
    return hmac.compare_digest(node, root)
