"""Asynchronous SGD with a parameter server: the server applies the secure sum of K contributions.

One rank is the parameter server (rank 0 by default); it holds the model and trains nothing, so
it never holds a gradient of its own to compare with. The other ranks are workers, each looping:
pull the latest model, compute a gradient on a batch, push it. The server forms *buffers* of the
next K workers that pushed (in arrival order), and for each buffer runs one step of the workers'
multi-step session (:mod:`secagg.multistep`) among exactly those K:

1. the server assigns buffer beta (its model version when the buffer is applied) to K workers;
2. each worker weights its gradient by its staleness, ``s(tau) = 1 / sqrt(1 + tau)`` with
   ``tau = beta - (the version it pulled)`` (FedBuff, Nguyen et al., AISTATS 2022) - *before*
   masking, since the server cannot weight a masked vector - then encodes, masks among the K and
   sends the masked words and its share offer through the store. beta is the step every mask
   of the buffer derives from, so workers told different buffers derive masks that do not
   cancel; the worker refuses a tau above its policy's ``max_staleness`` (63: no weight below
   1/8, :func:`bounded_weight`) and a pull that names an older version than one it pulled;
3. with all K masked vectors in, the server sums them and decides ``REVEAL``; each worker reveals
   its self-mask seed (seeds that do not arrive are rebuilt from shares, ``RECOVER``); the server
   unmasks the sum, divides by K and takes an SGD step: version beta + 1;
4. a worker that does not send its masked vector in time is excluded; the buffer is formed again
   (a new attempt, fresh masks) from the others and the next workers in line. Nothing of the
   abandoned attempt is revealed.

Privacy of K: every released sum holds exactly K contributions, and with c colluding workers at
least K - c honest ones; K is the anonymity set, and a worker's policy refuses a buffer below its
floor (:data:`~.allreduce.DISTRIBUTED_POLICY`: 3). The server learns each contribution's staleness
(from when it pulled), not its gradient.

Bulk vectors go through the store here (asynchronous buffers have no fixed group for gloo to sum
over), which suits cross-silo models of up to a few million parameters; the synchronous engine
sums over gloo.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import secagg
from fl.engines.distributed.allreduce import DISTRIBUTED_POLICY
from fl.engines.distributed.encoding import GradientEncoding
from fl.engines.distributed.errors import RankExcluded, RanksLost
from fl.engines.distributed.session import _decode_members, establish, member_id, rank_of
from fl.engines.distributed.transport import Deadline, StoreChannel
from fl.errors import InputError
from secagg.multistep import (
    Decision,
    KeyAdvert,
    MultiStepKind,
    Outcome,
    SessionConfig,
    SessionMember,
    StepContext,
    StepUnmasker,
    decode,
    encode,
)
from secagg.policy import ClientPolicy
from secagg.randomness import RandomSource

__all__ = [
    "AsyncWorker",
    "BufferReport",
    "ParameterServer",
    "PushReport",
    "bounded_weight",
    "staleness_weight",
]

_TICKET = struct.Struct(">II")
_ASSIGN = b"privagg/assign\x00"
_STOP = b"privagg/stop\x00"
_POLL = 0.002


def staleness_weight(staleness: int) -> float:
    """FedBuff's weight of a contribution ``staleness`` versions old: ``1 / sqrt(1 + tau)``."""
    if staleness < 0:
        raise InputError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


def bounded_weight(policy: ClientPolicy, *, buffer: int, pulled: int) -> float:
    """A worker's weight for a buffer, from the version it pulled itself: refused beyond its
    policy's ``max_staleness`` (63 by default, so no weight falls below 1/8), so a store that
    names a far-off buffer cannot shrink an honest gradient to nothing.

    Raises:
        secagg.PolicyViolation: the staleness is negative or above ``policy.max_staleness``.
    """
    staleness = buffer - pulled
    policy.check_staleness(staleness)
    return staleness_weight(staleness)


@dataclass(frozen=True)
class BufferReport:
    """One buffer the server applied.

    Attributes:
        buffer: beta, the model version the buffer was applied to (the next is beta + 1).
        contributors: the workers whose weighted gradients are in the sum.
        staleness: each contributor's staleness, by rank.
        attempts: how many times the buffer was formed (1 unless a worker was lost).
        excluded: workers excluded while forming it.
        mean: the decoded mean of the weighted gradients (what the server stepped with).
    """

    buffer: int
    contributors: tuple[int, ...]
    staleness: dict[int, int]
    attempts: int
    excluded: tuple[int, ...]
    mean: torch.Tensor


@dataclass(frozen=True)
class PushReport:
    """One contribution a worker made: its buffer, staleness and weight."""

    buffer: int
    attempt: int
    staleness: int
    weight: float
    contributors: tuple[int, ...]


def _flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float32) for p in model.parameters()])


def _load_parameters(model: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for parameter in model.parameters():
            size = parameter.numel()
            parameter.copy_(flat[offset : offset + size].view_as(parameter))
            offset += size


def _assignment(beta: int, attempt: int, ranks: Sequence[int]) -> bytes:
    return _ASSIGN + struct.pack(f">IBI{len(ranks)}I", beta, attempt, len(ranks), *ranks)


def _read_assignment(data: bytes) -> tuple[int, int, tuple[int, ...]]:
    if not data.startswith(_ASSIGN):
        raise RanksLost("the server stopped", step=-1, missing=(), survivors=())
    body = data[len(_ASSIGN) :]
    beta, attempt, count = struct.unpack_from(">IBI", body)
    return beta, attempt, struct.unpack_from(f">{count}I", body, 9)


class _Common:
    """What server and workers share: the namespace, the encoding, the workers' session id."""

    def __init__(
        self,
        *,
        server: int,
        workers: Sequence[int] | None,
        clip: float,
        ring_bits: int,
        timeout: float,
        name: str,
        store: dist.Store | None,
        corrupt_fraction: float,
    ) -> None:
        if not dist.is_initialized():
            raise InputError("torch.distributed is not initialised; call init_process_group first")
        world = dist.get_world_size()
        self.server = server
        self.workers = (
            sorted(workers) if workers is not None else [r for r in range(world) if r != server]
        )
        if server in self.workers or not 0 <= server < world:
            raise InputError(f"server rank {server} must be a rank outside the workers")
        self.encoding = GradientEncoding(clip=clip, ring_bits=ring_bits)
        self.timeout = float(timeout)
        self.corrupt_fraction = corrupt_fraction
        store = dist.distributed_c10d._get_default_store() if store is None else store
        self.channel = StoreChannel(store, f"privagg/async/{name}/")

    def _wait_any(self, keys: Sequence[str], deadline: Deadline) -> dict[str, bytes]:
        """The first of ``keys`` to appear (polling), or {} at the deadline."""
        while True:
            for key in keys:
                if self.channel.ready(key):
                    return {key: self.channel.read(key)}
            if deadline.passed:
                return {}
            time.sleep(_POLL)


class ParameterServer(_Common):
    """The parameter server of asynchronous secure SGD (run it on the server rank).

    Args:
        model: the global model (its parameters are version 0).
        buffer: K, the contributions per update (the anonymity set of each released sum).
        lr: the server's SGD learning rate on the mean weighted gradient.
        server: this rank (the server); workers: the worker ranks (all others by default).
        clip, ring_bits: the encoding (every rank must use the same).
        timeout: seconds a worker may take to send its masked vector or seed before it is
            excluded; also the wait for K workers to queue.
        name: the key namespace in the store (the same on every rank).
        store: the store (the default process group's).
        corrupt_fraction: the collusion assumption that sets each buffer's threshold.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        buffer: int,
        lr: float,
        server: int = 0,
        workers: Sequence[int] | None = None,
        clip: float = 8.0,
        ring_bits: int = 32,
        timeout: float = 30.0,
        name: str = "default",
        store: dist.Store | None = None,
        corrupt_fraction: float = 0.05,
    ) -> None:
        super().__init__(
            server=server,
            workers=workers,
            clip=clip,
            ring_bits=ring_bits,
            timeout=timeout,
            name=name,
            store=store,
            corrupt_fraction=corrupt_fraction,
        )
        if dist.get_rank() != server:
            raise InputError(f"the parameter server runs on rank {server}, not {dist.get_rank()}")
        if not 2 <= buffer <= len(self.workers):
            raise InputError(
                f"buffer must lie in [2, {len(self.workers)}] (the number of workers), got {buffer}"
            )
        self.model, self.buffer, self.lr = model, buffer, float(lr)
        self.version = 0
        self.excluded: set[int] = set()
        self._next_ticket = 0
        self._queue: list[tuple[int, int, int]] = []  # (ticket, rank, pulled version)
        self._config: SessionConfig | None = None
        self._publish()

    def _publish(self) -> None:
        flat = _flat_parameters(self.model)
        self.channel.post(f"model/{self.version}", flat.numpy().tobytes())
        self.channel.post("version", struct.pack(">I", self.version))

    def _session(self) -> SessionConfig:
        """The workers' session, read from their adverts (the server holds no key in it)."""
        if self._config is None:
            deadline = Deadline(self.timeout * 2)
            decided = self.channel.wait_one("g1/members", deadline)
            if decided is None:
                raise RanksLost(
                    "the workers did not agree on a session",
                    step=0,
                    missing=self.workers,
                    survivors=(),
                )
            members = _decode_members(decided)
            session_id = self.channel.wait_one("g1/id", deadline)
            adverts = self.channel.wait_all([f"g1/advert/{r}" for r in members], deadline)
            keys = {}
            for r in members:
                advert: KeyAdvert = decode(adverts[f"g1/advert/{r}"]).payload
                keys[member_id(r)] = advert.agreement_key
                parameters = (advert.ring_bits, advert.corrupt_fraction, advert.parameters)
            self._config = SessionConfig(
                session_id=session_id,
                members=tuple(keys),
                agreement_keys=keys,
                ring_bits=parameters[0],
                corrupt_fraction=parameters[1],
                parameters=parameters[2],
            )
            if parameters != (
                self.encoding.ring_bits,
                self.corrupt_fraction,
                self.encoding.parameters,
            ):
                raise InputError(
                    "the workers run another encoding or collusion assumption than the server; "
                    "start every rank with the same clip, ring_bits and corrupt_fraction"
                )
        return self._config

    def _fill(self, count: int, deadline: Deadline, taken: set[int]) -> list[tuple[int, int, int]]:
        """The next ``count`` queued workers not excluded and not in ``taken``."""
        chosen: list[tuple[int, int, int]] = []
        while len(chosen) < count:
            for entry in list(self._queue):
                if entry[1] not in taken and entry[1] not in self.excluded:
                    chosen.append(entry)
                    taken.add(entry[1])
                    self._queue.remove(entry)
                    if len(chosen) == count:
                        return chosen
            found = self.channel.wait_one(f"ready/{self._next_ticket}", deadline)
            if found is None:
                live = [r for r in self.workers if r not in self.excluded]
                raise RanksLost(
                    f"only {len(chosen)} of the {count} workers buffer {self.version} needs "
                    "queued in time",
                    step=self.version,
                    missing=[r for r in live if r not in taken],
                    survivors=sorted(taken),
                )
            rank, pulled = _TICKET.unpack(found)
            self._queue.append((self._next_ticket, rank, pulled))
            self._next_ticket += 1
        return chosen

    def serve(self, buffers: int) -> list[BufferReport]:
        """Apply ``buffers`` buffers of K contributions, then tell the workers to stop.

        Raises:
            RanksLost: fewer than K live workers remain (the workers are told to stop).
        """
        reports = []
        try:
            config = self._session()
            for _ in range(buffers):
                reports.append(self._one_buffer(config))
        finally:
            self.channel.post("stop", _STOP)
        return reports

    def _one_buffer(self, config: SessionConfig) -> BufferReport:
        beta, attempt, excluded = self.version, 0, []
        entries = self._fill(self.buffer, Deadline(self.timeout), set())
        while True:
            ranks = sorted(rank for _, rank, _ in entries)
            assignment = _assignment(beta, attempt, ranks)
            for ticket, rank, _ in entries:
                self.channel.post(f"assign/{ticket}", assignment)
                self.channel.post(f"b{beta}/a{attempt}/assign/{rank}", assignment)
            base = f"b{beta}/a{attempt}"
            context = StepContext(
                step=beta,
                attempt=attempt,
                contributors=tuple(map(member_id, ranks)),
                length=sum(p.numel() for p in self.model.parameters()),
            )
            wanted = [f"{base}/{kind}/{r}" for r in ranks for kind in ("offer", "masked")]
            got = self.channel.wait_all(wanted, Deadline(self.timeout))
            late = sorted(
                r for r in ranks if any(f"{base}/{k}/{r}" not in got for k in ("offer", "masked"))
            )
            if late:
                survivors = [r for r in ranks if r not in late]
                self.channel.post(
                    f"{base}/decision",
                    self._frame(
                        config,
                        context,
                        Decision(attempt, Outcome.RETRY, tuple(map(member_id, survivors))),
                    ),
                )
                self.excluded |= set(late)
                excluded += late
                keep = [e for e in entries if e[1] in survivors]
                entries = keep + self._fill(
                    self.buffer - len(keep), Deadline(self.timeout), {e[1] for e in keep}
                )
                attempt += 1
                continue
            unmasker = StepUnmasker(config, context)
            total = np.zeros(context.length, dtype=config.word_dtype)
            for r in ranks:
                unmasker.add_offer(got[f"{base}/offer/{r}"])
                np.add(
                    total, np.frombuffer(got[f"{base}/masked/{r}"], dtype=total.dtype), out=total
                )
            self.channel.post(
                f"{base}/decision", self._frame(config, context, Decision(attempt, Outcome.REVEAL))
            )
            seeds = self.channel.wait_all(
                [f"{base}/seed/{r}" for r in ranks], Deadline(self.timeout)
            )
            for key in sorted(seeds):
                unmasker.add_seed(seeds[key])
            lost = tuple(rank_of(m) for m in unmasker.missing)
            recover = (
                Decision(attempt, Outcome.RECOVER, tuple(map(member_id, lost)))
                if lost
                else Decision(attempt, Outcome.REVEAL)
            )
            self.channel.post(f"{base}/recover", self._frame(config, context, recover))
            if lost:
                holders = [r for r in ranks if r not in lost]
                shares = self.channel.wait_all(
                    [f"{base}/shares/{r}" for r in holders], Deadline(self.timeout)
                )
                for key in sorted(shares):
                    unmasker.add_shares(shares[key])
                unmasker.recover()
                self.excluded |= set(lost)
                excluded += lost
            mean = torch.empty(context.length, dtype=torch.float32)
            unmasker.unmask(total, drain=self.encoding.decoder(mean, contributors=len(ranks)))
            mean.div_(len(ranks))
            _load_parameters(self.model, _flat_parameters(self.model) - self.lr * mean)
            self.version += 1
            self._publish()
            self.channel.post(f"b{beta}/done", struct.pack(">I", self.version))
            return BufferReport(
                buffer=beta,
                contributors=tuple(ranks),
                staleness={rank: beta - pulled for _, rank, pulled in entries},
                attempts=attempt + 1,
                excluded=tuple(excluded),
                mean=mean,
            )

    @staticmethod
    def _frame(config: SessionConfig, context: StepContext, payload) -> bytes:
        return encode(payload, session_id=config.session_id, step=context.step, sender=0)


class AsyncWorker(_Common):
    """A worker of asynchronous secure SGD (run it on every worker rank).

    Example:
        >>> worker = AsyncWorker(model)  # doctest: +SKIP
        >>> while worker.pull() is not None:  # doctest: +SKIP
        ...     loss_fn(model(x), y).backward()
        ...     worker.push([p.grad for p in model.parameters()])

    Args:
        model: this worker's replica; :meth:`pull` loads the server's latest version into it.
        server, workers, clip, ring_bits, timeout, name, store, corrupt_fraction: as for
            :class:`ParameterServer` (the same on every rank).
        policy: the floors this worker holds (:data:`~.allreduce.DISTRIBUTED_POLICY`).
        random_bytes: secret randomness (``os.urandom``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        server: int = 0,
        workers: Sequence[int] | None = None,
        clip: float = 8.0,
        ring_bits: int = 32,
        timeout: float = 30.0,
        name: str = "default",
        store: dist.Store | None = None,
        corrupt_fraction: float = 0.05,
        policy: ClientPolicy | None = None,
        random_bytes: RandomSource = os.urandom,
    ) -> None:
        super().__init__(
            server=server,
            workers=workers,
            clip=clip,
            ring_bits=ring_bits,
            timeout=timeout,
            name=name,
            store=store,
            corrupt_fraction=corrupt_fraction,
        )
        self.rank = dist.get_rank()
        if self.rank not in self.workers:
            raise InputError(f"rank {self.rank} is not a worker ({self.workers})")
        self.model = model
        self.policy = DISTRIBUTED_POLICY if policy is None else policy
        self._random = random_bytes
        self.pulled: int | None = None
        self.session = establish(
            self.channel,
            generation=1,
            candidates=self.workers,
            rank=self.rank,
            step=0,
            timeout=self.timeout,
            make_member=lambda session_id, member: SessionMember(
                session_id,
                member,
                ring_bits=self.encoding.ring_bits,
                corrupt_fraction=corrupt_fraction,
                parameters=self.encoding.parameters,
                policy=self.policy,
                random_bytes=random_bytes,
            ),
            random_bytes=random_bytes,
        )

    def pull(self) -> int | None:
        """Load the server's latest model; its version, or None once the server stopped."""
        found = self._wait_any(["stop", "version"], Deadline(self.timeout))
        if "stop" in found or not found:
            return None
        (version,) = struct.unpack(">I", found["version"])
        if self.pulled is not None and version < self.pulled:
            raise secagg.InconsistentRequest(
                f"the store names model version {version}, older than the {self.pulled} this "
                "worker pulled before",
                sender=0,
            )
        data = self.channel.wait_one(f"model/{version}", Deadline(self.timeout))
        if data is None:
            return None
        _load_parameters(self.model, torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()))
        self.pulled = version
        return version

    def push(self, gradients: torch.Tensor | Sequence[torch.Tensor]) -> PushReport | None:
        """Contribute a gradient computed on the pulled version; returns once it was applied.

        Returns:
            The contribution's buffer, staleness and weight, or None if the server stopped.

        Raises:
            RankExcluded: this worker was too slow and the buffer went on without it.
        """
        if self.pulled is None:
            raise InputError("pull() the model before pushing a gradient computed on it")
        items = [gradients] if isinstance(gradients, torch.Tensor) else list(gradients)
        flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in items])
        ticket = self.channel.store.add(f"{self.channel.prefix}ticket", 1) - 1
        self.channel.post(f"ready/{ticket}", _TICKET.pack(self.rank, self.pulled))
        key = f"assign/{ticket}"
        found = self._wait_any([key, "stop"], Deadline(self.timeout * 4))
        if key not in found:
            return None
        return self._contribute(flat, *_read_assignment(found[key]))

    def _contribute(
        self, flat: torch.Tensor, beta: int, attempt: int, ranks: tuple[int, ...]
    ) -> PushReport | None:
        member = self.session.member
        while True:
            staleness = beta - self.pulled
            weight = bounded_weight(self.policy, buffer=beta, pulled=self.pulled)
            context = StepContext(
                step=beta,
                attempt=attempt,
                contributors=tuple(map(member_id, ranks)),
                length=flat.numel(),
            )
            ring = torch.empty(flat.numel(), dtype=self.encoding.dtype)
            fill = self.encoding.encoder(
                flat * weight, contributors=len(ranks), random_bytes=self._random
            )
            base = f"b{beta}/a{attempt}"
            offer = member.mask(context, ring.numpy().view(self.encoding.unsigned_word), fill=fill)
            self.channel.post(f"{base}/offer/{self.rank}", offer)
            self.channel.post(f"{base}/masked/{self.rank}", ring.numpy().tobytes())
            decided = self.channel.wait_one(f"{base}/decision", Deadline(self.timeout * 2))
            if decided is None:
                raise RanksLost(
                    "the server did not decide in time",
                    step=beta,
                    missing=[self.server],
                    survivors=ranks,
                )
            decision: Decision = decode(decided, expect=MultiStepKind.DECISION).payload
            if decision.outcome is Outcome.RETRY:
                member.abandon(context)
                if member_id(self.rank) not in decision.ids:
                    raise RankExcluded(self.rank, beta, "its masked vector missed the deadline")
                found = self._wait_any(
                    [f"b{beta}/a{attempt + 1}/assign/{self.rank}", "stop"],
                    Deadline(self.timeout * 4),
                )
                key = f"b{beta}/a{attempt + 1}/assign/{self.rank}"
                if key not in found:
                    return None
                beta, attempt, ranks = _read_assignment(found[key])
                continue
            self.channel.post(f"{base}/seed/{self.rank}", member.reveal(decided))
            recovered = self.channel.wait_one(f"{base}/recover", Deadline(self.timeout * 2))
            if recovered is None:
                raise RanksLost(
                    "the server did not finish the buffer",
                    step=beta,
                    missing=[self.server],
                    survivors=ranks,
                )
            recover: Decision = decode(recovered, expect=MultiStepKind.DECISION).payload
            if recover.outcome is Outcome.RECOVER and member_id(self.rank) not in recover.ids:
                offers = self.channel.wait_all(
                    [f"{base}/offer/{rank_of(m)}" for m in recover.ids], Deadline(self.timeout)
                )
                shares = member.reveal_shares(
                    recovered, {m: offers[f"{base}/offer/{rank_of(m)}"] for m in recover.ids}
                )
                self.channel.post(f"{base}/shares/{self.rank}", shares)
            self.channel.wait_one(f"b{beta}/done", Deadline(self.timeout * 2))
            return PushReport(beta, attempt, staleness, weight, tuple(ranks))
