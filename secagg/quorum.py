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

from collections.abc import Collection, Mapping

__all__ = ["closed_neighbourhood", "shortfalls", "signers_to_verify"]


def closed_neighbourhood(graph: Mapping[int, frozenset[int]], client: int) -> frozenset[int]:
    """N[x]: ``client`` and its neighbours."""
    return graph[client] | {client}


def shortfalls(
    *,
    watched: Collection[int],
    signers: Collection[int],
    graph: Mapping[int, frozenset[int]],
    threshold: int,
) -> dict[int, int]:
    """For each watched client x with fewer than ``threshold`` signers in N[x], how many it lacks."""
    signed = frozenset(signers)
    lacking = {x: threshold - len(closed_neighbourhood(graph, x) & signed) for x in watched}
    return {x: short for x, short in lacking.items() if short > 0}


def signers_to_verify(
    *,
    watched: Collection[int],
    signers: Collection[int],
    graph: Mapping[int, frozenset[int]],
    threshold: int,
    trusted: int,
) -> tuple[list[int], dict[int, int]]:
    """Choose which signatures to verify so that every watched x reaches ``threshold`` signers.

    ``trusted`` is the checking client itself: it signed U3 and lies in every watched N[x], so it
    counts once for each without a verification. Signers covering more watched neighbourhoods
    are taken first (greedy set cover), so a sparse-graph client verifies about 2(t - 1) + 1
    signatures instead of its whole two-hop neighbourhood. The server forwards exactly this
    choice; the client verifies every signature it is given and counts with
    :func:`shortfalls`.

    Returns:
        The signers to verify, in order, and the shortfall of each watched x that cannot reach
        ``threshold`` even if every offered signature verifies (empty when all can).
    """
    watched_set = frozenset(watched)
    missing = {x: threshold - (trusted in closed_neighbourhood(graph, x)) for x in watched_set}
    covers = {z: closed_neighbourhood(graph, z) & watched_set for z in signers if z != trusted}
    order = sorted(covers, key=lambda z: (-len(covers[z]), z))
    chosen = []
    for z in order:
        useful = [x for x in covers[z] if missing[x] > 0]
        if useful:
            chosen.append(z)
            for x in useful:
                missing[x] -= 1
    return chosen, {x: short for x, short in missing.items() if short > 0}
