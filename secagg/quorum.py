"""One story per client: the neighbourhood quorums that certify a set U3 before anyone acts on it.

A client w reveals shares of a client x's secrets only if x is w itself or a neighbour whose
shares w holds. Before it acts on the set U3 of the consistency check, w requires, for each such
x, valid signatures over that same U3 from at least t members of x's closed neighbourhood
N[x] = N(x) + {x} (w's own signature counts: it signed this U3).

Why this suffices: honest clients sign one U3 per session. If two honest parties acted on
different statuses (alive / dropped) of one x, each would hold t signers from N[x] on a different
U3; only the c corrupt members can sign both, so N[x] would need 2t - c <= k + 1 members. With
``2t > k + 1 + c`` (:meth:`secagg.ClientPolicy.minimum_threshold`) that is impossible. A global
count of t signatures is not enough in a sparse graph: with t << n/2 a server can run disjoint
signing groups with different stories.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from secagg.graph import NeighbourIndex

__all__ = ["shortfalls", "signers_to_verify"]


def _counts(index: NeighbourIndex, watched: np.ndarray, signed: np.ndarray) -> np.ndarray:
    """How many signers each watched client's closed neighbourhood holds."""
    return signed[index.closed[watched]].sum(axis=1)


def _report(index: NeighbourIndex, watched: np.ndarray, lacking: np.ndarray) -> dict[int, int]:
    return {int(index.ids[w]): int(m) for w, m in zip(watched, lacking, strict=True) if m > 0}


def shortfalls(
    *,
    watched: Collection[int],
    signers: Collection[int],
    index: NeighbourIndex,
    threshold: int,
) -> dict[int, int]:
    """For each watched client x with fewer than ``threshold`` signers in N[x], how many it lacks."""
    positions = index.positions(watched)
    return _report(index, positions, threshold - _counts(index, positions, index.mask(signers)))


def signers_to_verify(
    *,
    watched: Collection[int],
    signers: Collection[int],
    index: NeighbourIndex,
    threshold: int,
    trusted: int,
) -> tuple[list[int], dict[int, int]]:
    """Choose which signatures to verify so that every watched x reaches ``threshold`` signers.

    ``trusted`` is the checking client itself: it signed U3 and lies in every watched N[x], so it
    counts once for each without a verification. Signers covering more watched neighbourhoods
    are taken first (greedy set cover), so a sparse-graph client verifies about 2(t - 1) + 1
    signatures instead of its whole two-hop neighbourhood, and a complete-graph client t - 1.
    The server forwards exactly this choice; the client verifies every signature it is given
    and counts with :func:`shortfalls`.

    Returns:
        The signers to verify, in order, and the shortfall of each watched x that cannot reach
        ``threshold`` even if every offered signature verifies (empty when all can).
    """
    n = len(index.ids)
    watched_at = index.positions(watched)
    trusted_at = int(np.searchsorted(index.ids, trusted))
    missing = threshold - (index.closed[watched_at] == trusted_at).any(axis=1).astype(np.int64)
    in_reach = np.zeros(n, dtype=bool)
    in_reach[index.closed[watched_at].ravel()] = True
    in_reach &= index.mask(signers)
    in_reach[trusted_at] = False
    candidates = np.flatnonzero(in_reach)
    member = np.zeros((len(candidates), n), dtype=bool)
    member[np.arange(len(candidates))[:, None], index.closed[candidates]] = True
    covers = member[:, watched_at]  # covers[i, j]: candidate i is in N[watched j]
    order = np.lexsort((candidates, -covers.sum(axis=1)))
    chosen = []
    for i in order:
        if not (missing > 0).any():
            break
        useful = covers[i] & (missing > 0)
        if useful.any():
            chosen.append(int(index.ids[candidates[i]]))
            missing -= useful
    return chosen, _report(index, watched_at, missing)
