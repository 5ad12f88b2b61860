"""How many honest clients any unmaskable sum holds, once a set of survivors is certified.

Distributed DP noise can be shrunk after the round to what the actual survivors need
(:mod:`dp.removable`): each client reveals seeds of removable noise so that it keeps at least
V / m, where m must be a lower bound on the honest clients in *any* sum the server can unmask.
Without more information m = t - c (the threshold less the corrupt members of a neighbourhood).
This module computes a larger m that a client may rely on, from what it can verify itself.

The argument. Let Sig be the members of U3 whose signatures over U3 the client verified (each
honest client signs one U3 per session). Take any sum S the server can unmask and an honest
z in S that signed U3. For each honest neighbour y of z in Sig, the pairwise mask between z and
y cancels only if y is in S too, or if the server reconstructs the mask key of z or y. Honest
members of Sig believe z and y survived and never give out their key shares; only members of
N(y) outside Sig and the at most c corrupt members of N[y] might, so when

    |N(y) - Sig| + c < t  for every y in Sig                                    (R1)

no such key can be reconstructed. Then S holds all honest members of N[z] in Sig: at least
|N[z] & Sig| - c honest clients (z counts). Hence every sum that holds a client that signed U3
holds at least

    m = min over y in Sig of |N[y] & Sig| - c                                  (R2)

honest clients, and a client may keep only V / m of noise. Sums without such a client hold only
clients that kept their whole share, and at least t - c of them. With ``2t > k + 1 + c``
(the client policy's floor) R1 follows from R2 >= t - c, and the client still checks it. In the
complete graph R2 is |Sig| - c: with every survivor signing, each client keeps V / (|U3| - c).
"""

from __future__ import annotations

from collections.abc import Collection

from secagg.graph import NeighbourIndex

__all__ = ["certified_honest_floor"]


def certified_honest_floor(
    *, signers: Collection[int], index: NeighbourIndex, threshold: int, corrupt: int
) -> int:
    """The fewest honest clients in any sum the server can unmask, given verified U3 signers.

    Args:
        signers: Sig, the clients whose signatures over this client's U3 verified (itself
            included).
        index: the session's graph.
        threshold: t.
        corrupt: c, the most corrupt members of one closed neighbourhood.

    Returns:
        m >= t - c (R2 of the module docstring when R1 holds, else t - c).

    Example:
        >>> from secagg import SecAggConfig
        >>> from secagg.graph import neighbour_index
        >>> config = SecAggConfig.create(range(1, 11), 4, threshold=7)
        >>> certified_honest_floor(
        ...     signers=range(1, 10), index=neighbour_index(config), threshold=7, corrupt=1
        ... )
        8
    """
    floor = threshold - corrupt
    if not signers:
        return floor
    signed = index.mask(signers)
    held = signed[index.closed[index.positions(signers)]].sum(axis=1)  # |N[y] & Sig|
    closed_size = index.closed.shape[1]
    if int(held.min()) <= closed_size + corrupt - threshold:  # R1 fails for some y
        return floor
    return max(floor, int(held.min()) - corrupt)
