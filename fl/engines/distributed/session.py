"""Setting up a session among ranks: one key agreement through the store, one gloo group.

A session (one *generation*) is agreed in three moves, each a bounded wait on the store:

1. a 32-byte session id: every candidate proposes a random one; the first proposal wins
   (compare-and-set), so all agree on it;
2. every candidate publishes its key advertisement (:meth:`secagg.multistep.SessionMember.advertise`)
   and waits, up to the timeout, for the others';
3. the member list is decided (the first proposal wins again): the candidates whose advert
   appeared. A candidate left out raises :class:`~.errors.RankExcluded`; the others join
   (:meth:`~secagg.multistep.SessionMember.join`, which checks the client policy).

The members then sum over their own gloo process group, built directly on a prefix of the store
(not through ``torch.distributed.new_group``, whose naming depends on every group a process ever
made): a session never shares a connection with the user's groups, so a rank lost mid-step
breaks only this session's group.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch.distributed as dist

import secagg
from fl.engines.distributed.errors import RankExcluded, RanksLost
from fl.engines.distributed.transport import Deadline, StoreChannel
from secagg.multistep import SessionConfig, SessionMember
from secagg.randomness import RandomSource

__all__ = ["Session", "establish", "member_id", "rank_of"]

_MEMBERS = b"privagg/members\x00"


def member_id(rank: int) -> int:
    """A rank's id in the protocol (ids are Shamir x-coordinates, so they start at 1)."""
    return rank + 1


def rank_of(member: int) -> int:
    """The rank of a protocol id."""
    return member - 1


@dataclass
class Session:
    """One generation: the members, this rank's protocol state, and the members' gloo group.

    Attributes:
        generation: the session's number on this secure group (all members agree on it).
        ranks: the members' global ranks, sorted.
        member: this rank's :class:`~secagg.multistep.SessionMember`.
        config: the agreed :class:`~secagg.multistep.SessionConfig`.
        steps: how many steps ran in this session.
        seconds: the wall time the key agreement took.
    """

    generation: int
    ranks: tuple[int, ...]
    member: SessionMember
    config: SessionConfig
    channel: StoreChannel
    timeout: float
    seconds: float = 0.0
    steps: int = 0
    _group: dist.ProcessGroup | None = field(default=None, repr=False)

    def group(self) -> dist.ProcessGroup:
        """The members' gloo group, built on first use (a rendezvous bounded by the timeout).

        Raises:
            RuntimeError: a member did not join within the timeout.
        """
        if self._group is None:
            store = dist.PrefixStore(
                f"{self.channel.prefix}g{self.generation}/gloo/", self.channel.store
            )
            self._group = dist.ProcessGroupGloo(
                store,
                self.ranks.index(dist.get_rank()),
                len(self.ranks),
                timedelta(seconds=self.timeout),
            )
        return self._group

    def close(self) -> None:
        """Drop the group (its connections close)."""
        self._group = None


def establish(
    channel: StoreChannel,
    *,
    generation: int,
    candidates: Sequence[int],
    rank: int,
    step: int,
    timeout: float,
    make_member: callable,
    random_bytes: RandomSource,
) -> Session:
    """Agree on a new session with whichever ``candidates`` answer within ``timeout``.

    Args:
        channel: the secure group's store channel.
        generation: the session's number (the same on every candidate).
        candidates: the ranks that may be members.
        rank: this rank.
        step: the secure group's step count, for error messages.
        timeout: seconds to wait for the others' adverts.
        make_member: builds this rank's :class:`SessionMember` for a session id.
        random_bytes: the source of the proposed session id.

    Raises:
        RankExcluded: the agreed members do not include this rank.
        RanksLost: the members that answered are below this rank's policy.
    """
    import time

    started = time.perf_counter()
    base = f"g{generation}"
    session_id = channel.propose(f"{base}/id", random_bytes(32))
    member: SessionMember = make_member(session_id, member_id(rank))
    channel.post(f"{base}/advert/{rank}", member.advertise())
    keys = {r: f"{base}/advert/{r}" for r in candidates}
    adverts = channel.wait_all(keys.values(), Deadline(timeout))
    seen = [r for r in candidates if keys[r] in adverts]
    proposal = _MEMBERS + struct.pack(f">I{len(seen)}I", len(seen), *seen)
    decided = _decode_members(channel.propose(f"{base}/members", proposal))
    if rank not in decided:
        raise RankExcluded(
            rank, step, f"its key advert missed the deadline of session {generation}"
        )
    late = [r for r in decided if keys[r] not in adverts]
    if late:  # decided by a rank that saw them: they exist now
        adverts |= channel.wait_all([keys[r] for r in late], Deadline(timeout))
    missing = sorted(set(candidates) - set(decided))
    try:
        config = member.join({member_id(r): adverts[keys[r]] for r in decided})
    except secagg.PolicyViolation as error:
        raise RanksLost(
            f"the {len(decided)} ranks left are below this rank's policy ({error})",
            step=step,
            missing=missing,
            survivors=decided,
        ) from error
    return Session(
        generation=generation,
        ranks=tuple(decided),
        member=member,
        config=config,
        channel=channel,
        timeout=timeout,
        seconds=time.perf_counter() - started,
    )


def _decode_members(data: bytes) -> tuple[int, ...]:
    body = data[len(_MEMBERS) :]
    if not data.startswith(_MEMBERS) or len(body) < 4:
        raise secagg.MalformedMessage("the member list in the store is not one")
    (count,) = struct.unpack_from(">I", body)
    if len(body) != 4 + 4 * count:
        raise secagg.MalformedMessage("the member list in the store has the wrong length")
    return struct.unpack_from(f">{count}I", body, 4)
