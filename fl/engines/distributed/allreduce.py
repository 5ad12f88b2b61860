"""Secure all-reduce: the sum ``dist.all_reduce(op=SUM)`` gives, with every rank's input masked.

One step, on every member of the current session (:mod:`.session`):

1. encode the float tensors as ring words (:mod:`.encoding`), mask them in place and publish the
   share offer of the step's fresh self mask (:meth:`secagg.multistep.SessionMember.mask`);
2. gloo all-reduces the masked words over the session's group (the same words on the wire as a
   float32 all-reduce): pairwise masks cancel, so every rank holds ``sum x + sum PRG(b)``;
3. each rank reports whether its all-reduce completed; one decision (the store's
   compare-and-set) says ``REVEAL`` if every member's did, else ``RETRY`` with the ranks that
   answered;
4. ``REVEAL``: each rank reveals its seed b; seeds that do not arrive are rebuilt from t shares
   (``RECOVER``) and their ranks are excluded from the next session; every rank removes the self
   masks from its copy of the sum and decodes it (from ``shared_unmask_ranks`` ranks on, each
   rank unmasks one slice and the ranks all-gather the decoded slices);
5. ``RETRY``: nothing is revealed, the masked sums are discarded; the survivors (at least t of
   them, and as many as their policy requires) agree on a new session and sum the same inputs
   again under fresh keys; fewer raise :class:`~.errors.RanksLost` naming the missing ranks.

No rank plays a server that sees masked vectors one by one: gloo's all-reduce passes partial sums
of masked vectors, every rank unmasks the total itself (everyone learns the sum, as with a plain
all-reduce), and decisions are made by whichever rank proposes first, through the store. The only
process the group depends on is the store's host (torchrun's agent, or rank 0).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import secagg
from fl.engines.distributed.encoding import GradientEncoding
from fl.engines.distributed.errors import RankExcluded, RanksLost
from fl.engines.distributed.session import Session, establish, member_id, rank_of
from fl.engines.distributed.transport import Deadline, StoreChannel
from fl.errors import InputError
from secagg.multistep import (
    Decision,
    MultiStepKind,
    Outcome,
    SessionMember,
    StatusCode,
    StepContext,
    decode,
    encode,
)
from secagg.multistep.messages import Status
from secagg.policy import ClientPolicy
from secagg.randomness import RandomSource

__all__ = [
    "DISTRIBUTED_POLICY",
    "ReduceReport",
    "SecureAllReduce",
    "secure_all_reduce",
]

DISTRIBUTED_POLICY = ClientPolicy(min_clients=3)
"""What a rank holds by default: the secure defaults of :class:`secagg.ClientPolicy` with a floor of
3 ranks instead of 5 (cross-silo groups are small). With 2 ranks the sum minus its own gradient is
the other rank's gradient, so a 2-rank group is refused unless the ranks pass a policy with
``min_clients=2`` (SECURITY.md, "Secure data-parallel training")."""

_GRACE = 2.0
_SHARED_UNMASK_WORDS = 1 << 16  # below this, unmasking the whole sum beats an all-gather
_TAGS: dict[str, int] = {}


@dataclass(frozen=True)
class ReduceReport:
    """What one secure all-reduce did.

    Attributes:
        step: the step (0-based count of calls on this secure group).
        contributors: the ranks whose inputs are in the sum.
        generation: the session the sum was taken in.
        precision_bits: p of the fixed-point encoding (the sum is exact to ``n 2^-p``).
        retried: the sessions abandoned on the way (a rank lost mid-step).
        recovered: ranks whose self-mask seeds were rebuilt from shares (excluded from now on).
        seconds: wall time of the whole call, and its parts below.
        setup_seconds: key agreement (0 unless a new session was agreed).
        mask_seconds: encoding and masking.
        transport_seconds: the gloo all-reduce of the masked words.
        control_seconds: statuses, decisions and seeds through the store.
        unmask_seconds: self-mask removal and decoding.
    """

    step: int
    contributors: tuple[int, ...]
    generation: int
    precision_bits: int
    retried: int
    recovered: tuple[int, ...]
    seconds: float
    setup_seconds: float
    mask_seconds: float
    transport_seconds: float
    control_seconds: float
    unmask_seconds: float


@dataclass
class _Timer:
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - started
        return now


class SecureAllReduce:
    """Sums tensors across the ranks of a process group; no rank sees another's tensor.

    Create one per process group on every rank, in the same order, and call it like
    ``dist.all_reduce(tensor, op=SUM)``.

    Example:
        >>> reducer = SecureAllReduce()  # doctest: +SKIP
        >>> report = reducer([param.grad for param in model.parameters()])  # doctest: +SKIP
        >>> report.contributors  # doctest: +SKIP
        (0, 1, 2, 3)

    Args:
        group: the process group whose ranks take part (the default group when None).
        clip: every input value is clipped to [-clip, clip] (a warning says how many were);
            it sets the fixed-point precision (:class:`~.encoding.GradientEncoding`).
        ring_bits: 32 (default: the wire of a float32 all-reduce) or 64.
        timeout: seconds any wait may take (the gloo all-reduce, each store wait); a rank that
            does not answer within it is left out.
        rekey_every: agree fresh keys every this many steps (default: only when a rank is lost).
        shared_unmask_ranks: from this many ranks on (and 65,536 values), each rank removes the
            self masks from one slice of the sum and the ranks all-gather the slices, instead of
            each removing all n self masks from the whole sum (n times the keystream of one
            mask). On one machine over loopback the all-gather costs more than the extra
            keystream at 4 ranks (BENCHMARKS.md), hence the default of 16.
        policy: the floors this rank holds (:data:`DISTRIBUTED_POLICY` by default).
        corrupt_fraction: the collusion assumption that sets t (every rank must use the same).
        name: the group's key namespace in the store; defaults to one derived from the ranks
            and the order of creation (identical on every rank that creates them in one order).
        store: the store to use (default: the default process group's).
        random_bytes: secret randomness (``os.urandom``; seed only in tests).
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        clip: float = 8.0,
        ring_bits: int = 32,
        timeout: float = 30.0,
        rekey_every: int | None = None,
        shared_unmask_ranks: int = 16,
        policy: ClientPolicy | None = None,
        corrupt_fraction: float = 0.05,
        name: str | None = None,
        store: dist.Store | None = None,
        random_bytes: RandomSource = os.urandom,
    ) -> None:
        if not dist.is_initialized():
            raise InputError(
                "torch.distributed is not initialised; call dist.init_process_group('gloo') "
                "first (torchrun sets up its environment)"
            )
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if rekey_every is not None and (isinstance(rekey_every, bool) or rekey_every < 1):
            raise InputError(f"rekey_every must be a positive number of steps, got {rekey_every}")
        if isinstance(shared_unmask_ranks, bool) or shared_unmask_ranks < 2:
            raise InputError(
                f"shared_unmask_ranks must be a number of ranks >= 2, got {shared_unmask_ranks}"
            )
        self.encoding = GradientEncoding(clip=clip, ring_bits=ring_bits)
        self.rank = dist.get_rank()
        self.group = group
        ranks = sorted(dist.get_process_group_ranks(group)) if group is not None else None
        self._candidates = ranks or list(range(dist.get_world_size()))
        if self.rank not in self._candidates:
            raise InputError(f"rank {self.rank} is not in the group {self._candidates}")
        if name is None:
            tag = hashlib.sha256(repr(self._candidates).encode()).hexdigest()[:12]
            _TAGS[tag] = _TAGS.get(tag, -1) + 1
            name = f"{tag}-{_TAGS[tag]}"
        store = dist.distributed_c10d._get_default_store() if store is None else store
        self.channel = StoreChannel(store, f"privagg/secure-all-reduce/{name}/")
        self.timeout = float(timeout)
        self.rekey_every = rekey_every
        self.policy = DISTRIBUTED_POLICY if policy is None else policy
        self.corrupt_fraction = corrupt_fraction
        self._random = random_bytes
        self._session: Session | None = None
        self._generation = 0
        self._step = 0
        self._lost: set[int] = set()
        self._cleanup: deque[tuple[int, list[str]]] = deque()
        self._ring: torch.Tensor | None = None
        self.shared_unmask_ranks = shared_unmask_ranks
        self._shared_unmask_words = _SHARED_UNMASK_WORDS
        self.last_report: ReduceReport | None = None

    @property
    def members(self) -> tuple[int, ...]:
        """The ranks of the current session (the candidates before the first step)."""
        return self._session.ranks if self._session else tuple(self._candidates)

    @property
    def step(self) -> int:
        """How many steps this secure group has run."""
        return self._step

    def __call__(self, tensors: torch.Tensor | Sequence[torch.Tensor]) -> ReduceReport:
        """Replace every tensor by its sum over the contributing ranks, in place.

        Args:
            tensors: one float tensor or a sequence of them (e.g. the gradients of a model).

        Returns:
            What the step did; ``contributors`` are the ranks whose inputs are in the sum.

        Raises:
            RanksLost: fewer than t ranks (or fewer than the policy's floor) answered in time;
                nothing was released and the tensors are unchanged.
            RankExcluded: this rank was too slow and the others went on without it.
            InputError: a tensor is not floating point, or holds NaN or infinity.
        """
        items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        for index, tensor in enumerate(items):
            if not torch.is_floating_point(tensor):
                raise InputError(
                    f"tensors[{index}] is {tensor.dtype}; secure_all_reduce sums floating-point "
                    "tensors (integers would be rounded into the fixed-point ring)"
                )
        flat = _flatten(items)
        if len(items) == 1 and _decodable_in_place(items[0]):
            return self.reduce(flat, out=flat)[1]  # decoded straight into the caller's tensor
        total, report = self.reduce(flat)
        _unflatten_into(total, items)
        return report

    def reduce(
        self, values: torch.Tensor, *, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ReduceReport]:
        """The sum over the contributing ranks of a 1-D float tensor.

        Args:
            values: this rank's vector.
            out: where to write the sum (``values`` itself is allowed: it is read only before
                the sum is written); a new tensor of ``values``' dtype when None.
        """
        if out is not None and (out.shape != values.shape or not _decodable_in_place(out)):
            raise InputError(
                f"out must be a contiguous CPU float32/float64 tensor of shape {values.shape}"
            )
        started = time.perf_counter()
        step = self._step
        self._step += 1
        self._collect_garbage(step)
        timer = _Timer()
        retried = 0
        while True:
            session = self._ensure_session(step, timer)
            outcome = self._attempt(session, values, step, timer, out)
            if outcome is not None:
                break
            retried += 1
        total, recovered = outcome
        self.last_report = ReduceReport(
            step=step,
            contributors=session.ranks,
            generation=session.generation,
            precision_bits=self.encoding.precision_bits(len(session.ranks)),
            retried=retried,
            recovered=recovered,
            seconds=time.perf_counter() - started,
            setup_seconds=timer.parts.get("setup", 0.0),
            mask_seconds=timer.parts.get("mask", 0.0),
            transport_seconds=timer.parts.get("transport", 0.0),
            control_seconds=timer.parts.get("control", 0.0),
            unmask_seconds=timer.parts.get("unmask", 0.0),
        )
        return total, self.last_report

    # -- sessions ---------------------------------------------------------------------------------

    def _ensure_session(self, step: int, timer: _Timer) -> Session:
        session = self._session
        due = (
            self.rekey_every is not None
            and session is not None
            and session.steps >= self.rekey_every
        )
        if session is not None and not self._lost and not due:
            return session
        if session is not None:
            self._candidates = [r for r in session.ranks if r not in self._lost]
            session.close()
        self._lost = set()
        self._session = None
        self._generation += 1
        started = time.perf_counter()
        self._session = establish(
            self.channel,
            generation=self._generation,
            candidates=self._candidates,
            rank=self.rank,
            step=step,
            timeout=self.timeout,
            make_member=self._member,
            random_bytes=self._random,
        )
        self._later(step, [f"g{self._generation}/advert/{self.rank}"])
        timer.add("setup", started)
        return self._session

    def _member(self, session_id: bytes, member: int) -> SessionMember:
        return SessionMember(
            session_id,
            member,
            ring_bits=self.encoding.ring_bits,
            corrupt_fraction=self.corrupt_fraction,
            parameters=self.encoding.parameters,
            policy=self.policy,
            random_bytes=self._random,
        )

    def _retire(self, session: Session, survivors: list[int]) -> None:
        session.close()
        self._session = None
        self._candidates = survivors
        self._lost = set()

    # -- one attempt ------------------------------------------------------------------------------

    def _attempt(
        self,
        session: Session,
        values: torch.Tensor,
        step: int,
        timer: _Timer,
        out: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[int, ...]] | None:
        """One try at the step in ``session``: the decoded sum, or None after a RETRY."""
        started = time.perf_counter()
        n, d = len(session.ranks), values.numel()
        ring = self._ring_buffer(d)
        fill = self.encoding.encoder(values, contributors=n, random_bytes=self._random)
        context = StepContext.every_member(session.config, step=session.steps, length=d)
        session.steps += 1
        base = f"g{session.generation}/s{context.step}"
        offer = session.member.mask(
            context, ring.numpy().view(self.encoding.unsigned_word), fill=fill
        )
        self.channel.post(f"{base}/offer/{self.rank}", offer)
        mine = [f"{base}/{kind}/{self.rank}" for kind in ("offer", "status", "seed")]
        if self.rank == session.ranks[0]:  # the step's shared keys: one member removes them
            mine += [f"{base}/decision", f"{base}/recover"]
        self._later(step, mine)
        started = timer.add("mask", started)

        complete = self._transport(session, ring)
        started = timer.add("transport", started)

        code = StatusCode.COMPLETE if complete else StatusCode.FAILED
        self.channel.post(
            f"{base}/status/{self.rank}", self._frame(session, context, Status(0, code))
        )
        statuses = self.channel.wait_all(
            [f"{base}/status/{r}" for r in session.ranks], Deadline(self.timeout + _GRACE)
        )
        reported = [r for r in session.ranks if f"{base}/status/{r}" in statuses]
        codes = {
            r: self._status(session, context, statuses[f"{base}/status/{r}"], r) for r in reported
        }
        if len(reported) == n and all(c is StatusCode.COMPLETE for c in codes.values()):
            proposal = Decision(0, Outcome.REVEAL)
        else:
            proposal = Decision(0, Outcome.RETRY, tuple(member_id(r) for r in reported))
        decision_bytes = self.channel.propose(
            f"{base}/decision", self._frame(session, context, proposal)
        )
        decision: Decision = self._open(
            session, context, decision_bytes, MultiStepKind.DECISION
        ).payload
        if decision.outcome is Outcome.REVEAL:
            self._check_reveal(session, context, base, complete, codes)
        if decision.outcome is Outcome.RETRY:
            timer.add("control", started)
            session.member.abandon(context)
            survivors = [rank_of(m) for m in decision.ids]
            self._retire(session, survivors)
            missing = sorted(set(session.ranks) - set(survivors))
            if self.rank not in survivors:
                raise RankExcluded(self.rank, step, "its all-reduce status missed the deadline")
            if len(survivors) < session.config.threshold:
                raise RanksLost(
                    f"only {len(survivors)} of {n} ranks answered; the threshold is "
                    f"{session.config.threshold}",
                    step=step,
                    missing=missing,
                    survivors=survivors,
                )
            return None

        self.channel.post(f"{base}/seed/{self.rank}", session.member.reveal(decision_bytes))
        unmasker = session.member.unmasker()
        offer_keys = [f"{base}/offer/{r}" for r in session.ranks]
        seed_keys = {r: f"{base}/seed/{r}" for r in session.ranks}
        received = self.channel.wait_all(  # one wait for both: the offers are there already
            [*offer_keys, *seed_keys.values()], Deadline(self.timeout + _GRACE)
        )
        offers = {key: received[key] for key in offer_keys if key in received}
        seeds = {key: received[key] for key in seed_keys.values() if key in received}
        for key in sorted(offers):
            unmasker.add_offer(offers[key])
        absent = [r for r in session.ranks if seed_keys[r] not in seeds]
        proposal = (
            Decision(0, Outcome.RECOVER, tuple(map(member_id, absent)))
            if absent
            else Decision(0, Outcome.REVEAL)
        )
        recover_bytes = self.channel.propose(
            f"{base}/recover", self._frame(session, context, proposal)
        )
        recover: Decision = self._open(
            session, context, recover_bytes, MultiStepKind.DECISION
        ).payload
        lost = tuple(rank_of(m) for m in recover.ids)
        wanted = [r for r in session.ranks if r not in lost]
        if any(seed_keys[r] not in seeds for r in wanted):  # another rank saw them: they exist
            seeds |= self.channel.wait_all([seed_keys[r] for r in wanted], Deadline(self.timeout))
        for r in wanted:
            unmasker.add_seed(seeds[seed_keys[r]])
        if lost:
            self._recover(session, context, unmasker, base, recover_bytes, offers, lost, step)
        started = timer.add("control", started)

        total = self._unmask(session, unmasker, ring, values.dtype, out)
        timer.add("unmask", started)
        return total, lost

    def _unmask(
        self,
        session: Session,
        unmasker,
        ring: torch.Tensor,
        dtype: torch.dtype,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """The decoded sum: each member removes the self masks from its slice of the sum only,
        and the members all-gather the decoded slices (n times less keystream per rank than
        unmasking the whole sum everywhere). The slices carry the sum, which every member
        learns anyway. Short vectors, or an all-gather that fails (a member lost after the
        seeds were revealed), are unmasked whole, locally: every member holds the whole masked
        sum and every seed, so the step completes either way."""
        n, d = len(session.ranks), ring.numel()
        words = ring.numpy().view(self.encoding.unsigned_word)
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        if d < self._shared_unmask_words or n < self.shared_unmask_ranks:
            total = torch.empty(d, dtype=compute) if out is None or out.dtype != compute else out
            unmasker.unmask(words, drain=self.encoding.decoder(total, contributors=n))
            return _into(total.to(dtype), out)
        block = 16 // words.itemsize
        chunk = math.ceil(math.ceil(d / n) / block) * block  # d / n, in whole AES blocks
        me = session.ranks.index(self.rank)
        start, stop = min(me * chunk, d), min((me + 1) * chunk, d)
        unmasker.unmask(words[start:stop], offset=start)
        gathered = torch.zeros(n * chunk, dtype=compute)
        piece = torch.zeros(chunk, dtype=compute)
        piece[: stop - start] = self.encoding.decode(
            ring[start:stop], contributors=n, dtype=compute
        )
        try:
            session.group().allgather([list(gathered.split(chunk))], [piece]).wait()
        except RuntimeError:
            if start:
                unmasker.unmask(words[:start])
            if stop < d:
                unmasker.unmask(words[stop:], offset=stop)
            return _into(self.encoding.decode(ring, contributors=n, dtype=compute).to(dtype), out)
        return _into(gathered[:d].to(dtype), out)

    def _recover(self, session, context, unmasker, base, decision, offers, lost, step) -> None:
        """Rebuild the seeds of ``lost`` ranks from the others' shares; exclude them next."""
        if self.rank not in lost:
            shares = session.member.reveal_shares(
                decision, {member_id(r): offers[f"{base}/offer/{r}"] for r in lost}
            )
            self.channel.post(f"{base}/shares/{self.rank}", shares)
            self._later(step, [f"{base}/shares/{self.rank}"])
        holders = [r for r in session.ranks if r not in lost]
        revealed = self.channel.wait_all(
            [f"{base}/shares/{r}" for r in holders], Deadline(self.timeout + _GRACE)
        )
        for key in sorted(revealed):
            unmasker.add_shares(revealed[key])
        try:
            unmasker.recover()
        except RanksLost:
            raise
        except Exception as error:
            answered = [r for r in holders if f"{base}/shares/{r}" in revealed]
            raise RanksLost(
                f"the self masks of ranks {list(lost)} could not be rebuilt ({error})",
                step=step,
                missing=sorted(set(session.ranks) - set(answered)),
                survivors=answered,
            ) from error
        self._lost |= set(lost)

    def _transport(self, session: Session, ring: torch.Tensor) -> bool:
        """The gloo all-reduce of the masked words over the session's group; False on failure."""
        try:
            session.group().allreduce([ring]).wait()
        except RuntimeError:
            return False
        return True

    def _check_reveal(
        self,
        session: Session,
        context: StepContext,
        base: str,
        complete: bool,
        codes: dict[int, StatusCode],
    ) -> None:
        """Refuse a REVEAL decision unless this rank's own all-reduce completed and every
        member reported COMPLETE: a self-mask seed is revealed only for a sum known to hold every
        member's vector, whoever proposed the decision (the store only relays it)."""
        late = [r for r in session.ranks if r not in codes]
        if late:  # the proposer saw them, so they exist now
            found = self.channel.wait_all([f"{base}/status/{r}" for r in late], Deadline(_GRACE))
            for r in late:
                if f"{base}/status/{r}" in found:
                    codes[r] = self._status(session, context, found[f"{base}/status/{r}"], r)
        failed = [r for r in session.ranks if codes.get(r) is not StatusCode.COMPLETE]
        if not complete or failed:
            reason = "this rank's all-reduce failed" if not complete else f"ranks {failed} did not"
            raise secagg.InconsistentRequest(
                f"step {context.step}: a REVEAL decision for an all-reduce that did not complete "
                f"({reason}); no seed was revealed"
            )

    def _status(self, session: Session, context: StepContext, data: bytes, rank: int):
        return self._open(session, context, data, MultiStepKind.STATUS, sender=rank).payload.code

    @staticmethod
    def _open(
        session: Session,
        context: StepContext,
        data: bytes,
        kind: MultiStepKind,
        *,
        sender: int | None = None,
    ):
        """Decode a control message and check it is bound to this session, step and sender."""
        envelope = decode(data, expect=kind)
        if envelope.session_id != session.config.session_id or envelope.step != context.step:
            raise secagg.WrongSession(
                f"a {kind.name} message for another session or step came through the store"
            )
        expected = session.ranks if sender is None else (sender,)
        if rank_of(envelope.sender) not in expected:
            raise secagg.InconsistentRequest(
                f"a {kind.name} message under rank {sender}'s key claims to come from "
                f"rank {rank_of(envelope.sender)}"
            )
        return envelope

    # -- helpers ----------------------------------------------------------------------------------

    def _ring_buffer(self, length: int) -> torch.Tensor:
        if self._ring is None or self._ring.numel() != length:
            self._ring = torch.empty(length, dtype=self.encoding.dtype)
        return self._ring

    def _frame(self, session: Session, context: StepContext, payload) -> bytes:
        return encode(
            payload,
            session_id=session.config.session_id,
            step=context.step,
            sender=member_id(self.rank),
        )

    def _later(self, step: int, keys: list[str]) -> None:
        """Delete these keys two steps from now (every member has read them by then)."""
        self._cleanup.append((step + 2, keys))

    def _collect_garbage(self, step: int) -> None:
        while self._cleanup and self._cleanup[0][0] <= step:
            _, keys = self._cleanup.popleft()
            self.channel.delete(keys)


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0].detach().reshape(-1)
    return torch.cat([t.detach().reshape(-1).to("cpu") for t in tensors])


def _decodable_in_place(tensor: torch.Tensor) -> bool:
    return (
        tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
        and tensor.is_contiguous()
        and not tensor.requires_grad
    )


def _into(total: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``total`` written to ``out`` (when given and not the same memory)."""
    if out is None or total.data_ptr() == out.data_ptr():
        return total
    with torch.no_grad():
        out.copy_(total)
    return out


def _unflatten_into(total: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            size = tensor.numel()
            tensor.copy_(total[offset : offset + size].reshape(tensor.shape))
            offset += size


_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WORLD: dict[str, SecureAllReduce] = {}


def secure_all_reduce(
    tensors: torch.Tensor | Sequence[torch.Tensor],
    group: dist.ProcessGroup | None = None,
    **options: object,
) -> ReduceReport:
    """``dist.all_reduce(tensors, op=SUM)``, with every rank's input masked.

    The first call on a group creates its :class:`SecureAllReduce` with ``options`` (clip,
    ring_bits, timeout, rekey_every, policy, ...) and agrees the session's keys; later calls
    reuse it, so keys are agreed once and each step costs masks, not key exchanges. Call it on
    every rank of the group, in the same order, as you would ``dist.all_reduce``.

    Example:
        >>> for param in model.parameters():  # doctest: +SKIP
        ...     secure_all_reduce(param.grad)  # instead of dist.all_reduce(param.grad)

    Raises:
        InputError: ``options`` differ from those the group's first call used.
    """
    if group is None:
        reducer = _WORLD.get("world")
        if reducer is None:
            reducer = _WORLD["world"] = SecureAllReduce(**options)
            reducer._options = options
    else:
        reducer = _DEFAULTS.get(group)
        if reducer is None:
            reducer = _DEFAULTS[group] = SecureAllReduce(group, **options)
            reducer._options = options
    if options and options != reducer._options:
        raise InputError(
            f"secure_all_reduce on this group was first called with {reducer._options}; "
            "create a SecureAllReduce object to use other settings"
        )
    return reducer(tensors)
