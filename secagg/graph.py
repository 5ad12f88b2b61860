"""Who is whose neighbour: the complete graph (SecAgg) or a random k-regular graph (SecAgg+).

The sparse graph is the Harary graph H(k, n) - positions on a ring joined to their k/2 nearest
positions on each side, plus the diametrically opposite position when k is odd - over a random
relabelling of the clients, as in Bell et al. (CCS 2020, Sec. 4). The relabelling is a uniform
permutation drawn from AES-CTR keyed by the public session id, so every party computes the same
graph from the configuration alone, with no extra message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

import numpy as np

from secagg.config import SecAggConfig
from secagg.hazmat import kdf
from secagg.hazmat.prg import keystream

__all__ = ["NeighbourIndex", "neighbour_index", "neighbourhoods", "random_permutation"]


def random_permutation(n: int, seed: bytes) -> list[int]:
    """A uniform permutation of ``range(n)`` (Fisher-Yates with rejection sampling) from ``seed``."""
    order = list(range(n))
    stream = keystream(kdf.derive(seed, label=b"graph-permutation", context=b""), 8 * n + 4096)
    position = 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 32) - (1 << 32) % bound
        while True:
            if position + 4 > len(stream):
                stream += keystream(
                    kdf.derive(stream[-32:], label=b"graph-permutation-more", context=b""), 4096
                )
            draw = int.from_bytes(stream[position : position + 4], "little")
            position += 4
            if draw < limit:
                break
        j = draw % bound
        order[i], order[j] = order[j], order[i]
    return order


@lru_cache(maxsize=64)
def _build(session_id: bytes, client_ids: tuple[int, ...], k: int) -> Mapping[int, frozenset[int]]:
    n = len(client_ids)
    if k == n - 1:
        everyone = frozenset(client_ids)
        return MappingProxyType({i: everyone - {i} for i in client_ids})
    perm = random_permutation(n, session_id + n.to_bytes(4, "big") + k.to_bytes(4, "big"))
    label = [client_ids[p] for p in perm]
    offsets = [o for step in range(1, k // 2 + 1) for o in (step, -step)]
    if k % 2:
        offsets.append(n // 2)
    return MappingProxyType(
        {label[pos]: frozenset(label[(pos + o) % n] for o in offsets) for pos in range(n)}
    )


def neighbourhoods(config: SecAggConfig) -> Mapping[int, frozenset[int]]:
    """Map each client id to the ids of its neighbours (never itself); symmetric."""
    return _build(config.session_id, config.client_ids, config.neighbours)


@dataclass(frozen=True, eq=False)
class NeighbourIndex:
    """The graph as arrays, for counting over neighbourhoods without Python loops.

    Attributes:
        ids: the cohort's client ids, sorted (a client's position is its index here).
        closed: row i lists the positions of client ``ids[i]``'s closed neighbourhood
            N[x] = N(x) + {x} (k + 1 positions).
    """

    ids: np.ndarray
    closed: np.ndarray

    def positions(self, clients: Iterable[int]) -> np.ndarray:
        """The positions of ``clients`` (cohort members), in sorted order."""
        return np.searchsorted(self.ids, np.fromiter(sorted(clients), dtype=np.int64))

    def mask(self, clients: Iterable[int]) -> np.ndarray:
        """A boolean vector over positions, True at ``clients``."""
        marked = np.zeros(len(self.ids), dtype=bool)
        marked[self.positions(clients)] = True
        return marked


@lru_cache(maxsize=16)
def _index(session_id: bytes, client_ids: tuple[int, ...], k: int) -> NeighbourIndex:
    graph = _build(session_id, client_ids, k)
    ids = np.array(client_ids, dtype=np.int64)
    rows = [sorted(graph[u] | {u}) for u in client_ids]
    closed = np.searchsorted(ids, np.array(rows, dtype=np.int64)).astype(np.int32)
    ids.flags.writeable = closed.flags.writeable = False
    return NeighbourIndex(ids, closed)


def neighbour_index(config: SecAggConfig) -> NeighbourIndex:
    """The graph of ``config`` as a :class:`NeighbourIndex` (cached per session)."""
    return _index(config.session_id, config.client_ids, config.neighbours)
