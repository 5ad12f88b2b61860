"""A member of a multi-step session, as a sans-I/O state machine; and the step unmasker.

One key agreement serves many steps. Per session, each member advertises one fresh X25519 key;
from the roster it derives, for every other member v, a pairwise mask secret and two share-channel
keys (:mod:`.keys`). Per step, with the step digest of :class:`~.config.StepContext`:

1. :meth:`SessionMember.mask` draws a fresh self-mask secret b, Shamir-shares it (threshold t of
   the step) among the other contributors, encrypts each share to its holder (AES-GCM, associated
   data = session, step digest, sender, receiver), commits to b, and adds to the member's ring
   vector, in place, ``PRG(b) + sum_v +-PRG(step seed of (u, v))`` (Bonawitz et al. 2017, with the
   pairwise seeds re-derived per step). It returns the :class:`~.messages.ShareOffer` to publish
   *before* the masked vector leaves the member.
2. Some transport sums the masked vectors of exactly the step's contributors (an all-reduce, or an
   aggregator). The pairwise masks cancel in that sum; the self masks do not.
3. Only once every contributor's vector is known to be in the sum (a ``REVEAL``
   :class:`~.messages.Decision`) does a member reveal its b (:meth:`reveal`); if some seeds never
   arrive, the others reveal their shares of them (:meth:`reveal_shares`, ``RECOVER``). Anyone
   holding the sum removes the self masks with a :class:`StepUnmasker`.
4. If the sum is incomplete (``RETRY``), nothing is revealed: :meth:`abandon` forgets b, and the
   survivors sum again under a fresh step digest (a new attempt or a new session).

Rules the member enforces (SECURITY.md, "Secure data-parallel training"):

* steps (step, attempt) only move forward within a session: no mask is ever derived twice;
* nothing about a step's self masks leaves a member before a ``REVEAL`` decision for that very
  step and attempt; after revealing, the member never abandons (so never contributes to) that
  attempt again; shares are revealed once per step, never of its own seed;
* a member never reveals a pairwise secret or its agreement key: a lost contributor is handled by
  a new attempt without it, never by unmasking it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

import numpy as np

from secagg.config import SESSION_ID_BYTES
from secagg.errors import (
    ConfigurationError,
    InconsistentRequest,
    InconsistentShares,
    LocalProtocolError,
    MalformedMessage,
    ParameterMismatch,
    PolicyViolation,
    ThresholdNotMet,
    UnknownSender,
    WrongSession,
)
from secagg.hazmat import aead, shamir
from secagg.hazmat.agreement import AgreementKey
from secagg.hazmat.exceptions import InvalidAuthentication
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES, ChunkHook, MaskTerm, accumulate
from secagg.multistep import keys
from secagg.multistep import messages as wire
from secagg.multistep.config import PARAMETERS_BYTES, SessionConfig, StepContext
from secagg.policy import ClientPolicy
from secagg.randomness import RandomSource, system_random

__all__ = ["MemberStage", "SessionMember", "StepUnmasker"]


class MemberStage(Enum):
    """Where a member is; ``ERROR`` is sticky."""

    NEW = "new"
    ADVERTISED = "advertised"
    READY = "ready"
    MASKED = "masked"
    REVEALED = "revealed"
    ERROR = "error"


@dataclass(frozen=True)
class _StepView:
    """A step seen as a one-off session, for :meth:`ClientPolicy.check_session`."""

    num_clients: int
    threshold: int
    ring_bits: int
    client_ids: tuple[int, ...]
    identities: None = None

    @property
    def neighbours(self) -> int:
        return self.num_clients - 1


class SessionMember:
    """One member of one multi-step session.

    Example:
        >>> import os, numpy as np
        >>> sid = os.urandom(32)
        >>> members = {m: SessionMember(sid, m, policy=ClientPolicy(min_clients=3)) for m in (1, 2, 3)}
        >>> adverts = {m: member.advertise() for m, member in members.items()}
        >>> config = [member.join(adverts) for member in members.values()][0]
        >>> context = StepContext.every_member(config, step=0, length=4)
        >>> vectors = {m: np.full(4, m, dtype=np.uint32) for m in members}
        >>> offers = {m: members[m].mask(context, vectors[m]) for m in members}
        >>> total = sum(vectors.values())  # what the transport sums: the masked vectors
        >>> decision = wire.encode(wire.Decision(0, wire.Outcome.REVEAL), session_id=sid, step=0, sender=0)
        >>> unmasker = StepUnmasker(config, context)
        >>> for m in members:
        ...     _ = unmasker.add_offer(offers[m]), unmasker.add_seed(members[m].reveal(decision))
        >>> unmasker.unmask(total)
        >>> total.tolist()
        [6, 6, 6, 6]

    Args:
        session_id: the 32 bytes the members agreed on before advertising keys.
        member_id: this member's id (>= 1).
        ring_bits: 32 or 64.
        corrupt_fraction: the collusion assumption that sets each step's threshold.
        parameters: 32 bytes of application parameters every member must share.
        policy: the floors this member holds (:class:`~secagg.policy.ClientPolicy`; the secure
            defaults when omitted).
        random_bytes: source of secret randomness (``os.urandom``; seed only in tests).
        chunk_bytes: working-set size of the mask expansion.
    """

    def __init__(
        self,
        session_id: bytes,
        member_id: int,
        *,
        ring_bits: int = 32,
        corrupt_fraction: float = 0.05,
        parameters: bytes = bytes(PARAMETERS_BYTES),
        policy: ClientPolicy | None = None,
        random_bytes: RandomSource = system_random,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise ConfigurationError(f"session_id must be {SESSION_ID_BYTES} bytes")
        if isinstance(member_id, bool) or not isinstance(member_id, int) or member_id < 1:
            raise ConfigurationError(f"member_id must be an integer >= 1, got {member_id!r}")
        self.session_id = session_id
        self.member_id = member_id
        self.policy = ClientPolicy() if policy is None else policy
        self._advert = wire.KeyAdvert(bytes(32), ring_bits, corrupt_fraction, parameters)
        self._random = random_bytes
        self._chunk_bytes = chunk_bytes
        self._stage = MemberStage.NEW
        self._error: Exception | None = None
        self._key: AgreementKey | None = None
        self.config: SessionConfig | None = None
        self._pair_secrets: dict[int, bytes] = {}
        self._send_keys: dict[int, bytes] = {}
        self._receive_keys: dict[int, bytes] = {}
        self._last: tuple[int, int] | None = None
        self._context: StepContext | None = None
        self._step_digest = b""
        self._secret = b""
        self._shares_revealed = False

    @property
    def stage(self) -> MemberStage:
        """The current stage."""
        return self._stage

    @property
    def context(self) -> StepContext | None:
        """The step in progress (masked or revealed), if any."""
        return self._context

    # -- session set-up --------------------------------------------------------------------------

    def advertise(self) -> bytes:
        """Draw this session's X25519 key and return the advertisement to publish.

        Raises:
            LocalProtocolError: called twice.
        """
        self._require(MemberStage.NEW, "advertise()")
        key = AgreementKey.generate(self._random)
        advert = wire.KeyAdvert(
            key.public_bytes,
            self._advert.ring_bits,
            self._advert.corrupt_fraction,
            self._advert.parameters,
        )
        self._key, self._advert = key, advert
        self._stage = MemberStage.ADVERTISED
        return self._encode(advert, step=0)

    def join(self, adverts: Mapping[int, bytes]) -> SessionConfig:
        """Agree on the session with the members whose adverts are given (this one included).

        Args:
            adverts: each member's :meth:`advertise` output, by member id.

        Returns:
            The session configuration (the same on every member given the same adverts).

        Raises:
            MalformedMessage: an advert does not decode (the member stays ``ADVERTISED``).
            ParameterMismatch: a member runs other parameters (sticky).
            InconsistentRequest: this member's own advert is missing or altered, or two members
                share a key (sticky).
            PolicyViolation: the session is below this member's policy (sticky).
        """
        self._require(MemberStage.ADVERTISED, "join()")
        decoded: dict[int, wire.KeyAdvert] = {}
        for member, data in adverts.items():
            envelope = wire.decode(data, expect=wire.MultiStepKind.KEY_ADVERT)
            if envelope.sender != member or envelope.session_id != self.session_id:
                raise WrongSession(
                    f"the advert filed under member {member} belongs to member "
                    f"{envelope.sender} of another session or slot",
                    sender=envelope.sender,
                )
            decoded[member] = envelope.payload
        try:
            config = self._check_roster(decoded)
            self.policy.check_session(config)
        except (ParameterMismatch, InconsistentRequest, PolicyViolation) as error:
            self._fail(error)
        for peer, advert in decoded.items():
            if peer == self.member_id:
                continue
            try:
                shared = self._key.exchange(advert.agreement_key)
            except ValueError:
                self._fail(InconsistentRequest(f"member {peer} advertised a low-order key"))
            self._pair_secrets[peer] = keys.pair_secret(shared, config.digest, self.member_id, peer)
            self._send_keys[peer] = keys.channel_key(shared, config.digest, self.member_id, peer)
            self._receive_keys[peer] = keys.channel_key(shared, config.digest, peer, self.member_id)
        self.config = config
        self._key = None  # the agreement key is never needed again: drop it
        self._stage = MemberStage.READY
        return config

    def _check_roster(self, adverts: dict[int, wire.KeyAdvert]) -> SessionConfig:
        own = adverts.get(self.member_id)
        if own != self._advert:
            raise InconsistentRequest("the roster does not hold this member's own advert as sent")
        for member, advert in adverts.items():
            if (advert.ring_bits, advert.corrupt_fraction, advert.parameters) != (
                own.ring_bits,
                own.corrupt_fraction,
                own.parameters,
            ):
                raise ParameterMismatch(
                    "runs the session with other parameters (ring, collusion assumption or "
                    "encoding); start every rank with the same settings",
                    sender=member,
                )
        try:
            return SessionConfig(
                session_id=self.session_id,
                members=tuple(adverts),
                agreement_keys={m: a.agreement_key for m, a in adverts.items()},
                ring_bits=own.ring_bits,
                corrupt_fraction=own.corrupt_fraction,
                parameters=own.parameters,
            )
        except ConfigurationError as error:
            raise InconsistentRequest(f"the roster is not a valid session: {error}") from None

    # -- one step --------------------------------------------------------------------------------

    def mask(
        self, context: StepContext, vector: np.ndarray, *, fill: ChunkHook | None = None
    ) -> bytes:
        """Mask ``vector`` in place for ``context`` and return the share offer to publish first.

        Args:
            context: the step; this member must be a contributor, and (step, attempt) must come
                after every step this member took part in.
            vector: this member's ring vector: a writeable, contiguous ``uint32`` (32-bit ring)
                or ``uint64`` array of ``context.length`` words.
            fill: writes the plain words into each chunk of ``vector`` just before that chunk
                is masked (:func:`secagg.hazmat.prg.accumulate`): encoding and masking in one
                pass over memory. Without it, ``vector`` holds the plain words already.

        Raises:
            LocalProtocolError: a step is still open (reveal or abandon it first), the step does
                not move forward, or the vector does not fit.
            PolicyViolation: the step's contributors are below this member's policy (the member
                stays ``READY``; it refuses this step only).
        """
        if self._stage not in (MemberStage.READY, MemberStage.REVEALED):
            self._require(MemberStage.READY, "mask()")
        config = self.config
        try:
            context.check_in(config)
        except ConfigurationError as error:
            raise LocalProtocolError(str(error)) from None
        if self.member_id not in context.contributors:
            raise LocalProtocolError(f"member {self.member_id} is not a contributor of this step")
        if self._last is not None and context.key <= self._last:
            raise LocalProtocolError(
                f"step {context.key} does not come after step {self._last}; a (step, attempt) "
                "is used once per session"
            )
        word = config.word_dtype
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != word
            or vector.shape != (context.length,)
            or not vector.flags.c_contiguous
            or not vector.flags.writeable
        ):
            raise LocalProtocolError(
                f"vector must be a writeable contiguous {word} array of {context.length} words"
            )
        threshold = context.threshold(config)
        self.policy.check_session(
            _StepView(len(context.contributors), threshold, config.ring_bits, context.contributors)
        )
        step_digest = context.digest(config)
        secret = self._random(shamir.SECRET_BYTES)
        shares = shamir.split(
            [secret], threshold=threshold, xs=context.contributors, random_bytes=self._random
        )
        ciphertexts = []
        for holder, (share,) in zip(context.contributors, shares, strict=True):
            if holder == self.member_id:
                continue
            associated = keys.share_associated_data(
                self.session_id, step_digest, self.member_id, holder
            )
            sealed = aead.seal_framed(
                self._send_keys[holder], share, associated, random_bytes=self._random
            )
            ciphertexts.append((holder, sealed))
        terms = [MaskTerm(keys.self_mask_seed(secret, step_digest, self.member_id))]
        terms += [
            MaskTerm(
                keys.step_mask_seed(self._pair_secrets[peer], step_digest, self.member_id, peer),
                subtract=self.member_id > peer,
            )
            for peer in context.contributors
            if peer != self.member_id
        ]
        accumulate(vector, terms, chunk_bytes=self._chunk_bytes, fill=fill)
        offer = wire.ShareOffer(
            context.attempt,
            context.length,
            context.contributors,
            keys.self_mask_commitment(secret, step_digest, self.member_id),
            tuple(ciphertexts),
        )
        self._context, self._step_digest, self._secret = context, step_digest, secret
        self._last = context.key
        self._shares_revealed = False
        self._stage = MemberStage.MASKED
        return self._encode(offer, step=context.step)

    def reveal(self, decision: bytes) -> bytes:
        """Reveal this member's self-mask seed, once every contributor's vector is in the sum.

        Args:
            decision: the step's ``REVEAL`` :class:`~.messages.Decision`.

        Raises:
            WrongSession: the decision is for another session, step or attempt (nothing changes).
            InconsistentRequest: the decision for this attempt is not ``REVEAL`` (sticky).
            LocalProtocolError: no step is masked, or it was revealed already.
        """
        self._require(MemberStage.MASKED, "reveal()")
        outcome = self._decision(decision)
        if outcome.outcome is not wire.Outcome.REVEAL:
            self._fail(
                InconsistentRequest(
                    f"asked to reveal the self mask of step {self._context.key} after a "
                    f"{outcome.outcome.name} decision",
                    sender=0,
                )
            )
        self._stage = MemberStage.REVEALED
        return self._encode(wire.SeedReveal(self._context.attempt, self._secret), step=self._step)

    def reveal_shares(self, decision: bytes, offers: Mapping[int, bytes]) -> bytes:
        """Reveal this member's shares of the seeds that did not arrive (``RECOVER``).

        Only after this member revealed its own seed for the same step, and once per step.

        Args:
            decision: the ``RECOVER`` decision naming the contributors whose seeds are missing.
            offers: their share offers (as published before they masked), by contributor.

        Raises:
            WrongSession: the decision or an offer is for another session, step or attempt.
            InconsistentRequest: the decision names this member, a non-contributor, or is not
                ``RECOVER``; an offer is missing or does not match the step (sticky).
            AuthenticationFailed: a share does not decrypt (sticky).
            LocalProtocolError: the member has not revealed its own seed for this step, or
                already revealed shares.
        """
        self._require(MemberStage.REVEALED, "reveal_shares()")
        if self._shares_revealed:
            raise LocalProtocolError(f"shares of step {self._context.key} were revealed already")
        outcome = self._decision(decision)
        owners = set(outcome.ids)
        if outcome.outcome is not wire.Outcome.RECOVER or not owners:
            self._fail(InconsistentRequest("reveal_shares() needs a RECOVER decision", sender=0))
        if self.member_id in owners or not owners <= set(self._context.contributors):
            self._fail(
                InconsistentRequest(
                    f"RECOVER names {sorted(owners)[:5]}: only other contributors of the step "
                    "may be recovered",
                    sender=0,
                )
            )
        shares = []
        for owner in sorted(owners):
            if owner not in offers:
                self._fail(InconsistentRequest(f"no share offer of member {owner}", sender=0))
            try:
                offer = self._offer(owner, offers[owner])
            except (MalformedMessage, WrongSession) as error:
                self._fail(InconsistentRequest(f"member {owner}'s offer is unusable: {error}"))
            sealed = dict(offer.ciphertexts).get(self.member_id)
            if sealed is None:
                self._fail(InconsistentRequest(f"member {owner} sent this member no share"))
            associated = keys.share_associated_data(
                self.session_id, self._step_digest, owner, self.member_id
            )
            try:
                share = aead.open_framed(self._receive_keys[owner], sealed, associated)
            except InvalidAuthentication:
                self._fail(InconsistentRequest(f"member {owner}'s share fails authentication"))
            shares.append((owner, share))
        self._shares_revealed = True
        return self._encode(wire.ShareReveal(self._context.attempt, tuple(shares)), step=self._step)

    def abandon(self, context: StepContext) -> None:
        """Forget the step's self-mask secret: the sum was incomplete, nothing is revealed.

        Raises:
            LocalProtocolError: ``context`` is not the step in progress, or its seed was revealed
                (a revealed step is never summed again).
        """
        if self._stage is MemberStage.REVEALED and context == self._context:
            raise LocalProtocolError(
                f"step {context.key} was revealed; it cannot be abandoned and summed again"
            )
        self._require(MemberStage.MASKED, "abandon()")
        if context != self._context:
            raise LocalProtocolError(f"step {context.key} is not the step in progress")
        self._secret = b""
        self._stage = MemberStage.READY

    def unmasker(self) -> StepUnmasker:
        """A :class:`StepUnmasker` for the step in progress."""
        if self._context is None:
            raise LocalProtocolError("no step in progress")
        return StepUnmasker(self.config, self._context)

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _step(self) -> int:
        return self._context.step

    def _decision(self, data: bytes) -> wire.Decision:
        envelope = wire.decode(data, expect=wire.MultiStepKind.DECISION)
        decision: wire.Decision = envelope.payload
        if (envelope.session_id, envelope.step, decision.attempt) != (
            self.session_id,
            self._context.step,
            self._context.attempt,
        ):
            raise WrongSession(
                f"decision for step {(envelope.step, decision.attempt)}, this member is at "
                f"step {self._context.key}",
                sender=envelope.sender,
            )
        return decision

    def _offer(self, owner: int, data: bytes) -> wire.ShareOffer:
        envelope = wire.decode(data, expect=wire.MultiStepKind.SHARE_OFFER)
        offer: wire.ShareOffer = envelope.payload
        context = self._context
        if (envelope.session_id, envelope.step, envelope.sender) != (
            self.session_id,
            context.step,
            owner,
        ) or (offer.attempt, offer.length, offer.contributors) != (
            context.attempt,
            context.length,
            context.contributors,
        ):
            raise WrongSession("offer for another step, attempt or sender", sender=owner)
        return offer

    def _encode(self, payload: wire.Payload, *, step: int) -> bytes:
        return wire.encode(payload, session_id=self.session_id, step=step, sender=self.member_id)

    def _require(self, stage: MemberStage, call: str) -> None:
        if self._stage is MemberStage.ERROR:
            raise LocalProtocolError(f"member {self.member_id} stopped after: {self._error}")
        if self._stage is not stage:
            raise LocalProtocolError(
                f"{call} needs stage {stage.value}; member is {self._stage.value}"
            )

    def _fail(self, error: Exception) -> NoReturn:
        self._stage, self._error = MemberStage.ERROR, error
        self._key, self._secret = None, b""
        self._pair_secrets, self._send_keys, self._receive_keys = {}, {}, {}
        raise error


class StepUnmasker:
    """Removes the self masks from a step's sum: collects offers, seeds and shares; checks them.

    Holds no secret of its own: each member of a synchronous step runs one on its copy of the
    sum; an aggregator runs one on the sum it computed.

    Args:
        config: the session.
        context: the step.
    """

    def __init__(self, config: SessionConfig, context: StepContext) -> None:
        context.check_in(config)
        self.config, self.context = config, context
        self._digest = context.digest(config)
        self._commitments: dict[int, bytes] = {}
        self._seeds: dict[int, bytes] = {}
        self._shares: dict[int, dict[int, bytes]] = {}

    @property
    def missing(self) -> tuple[int, ...]:
        """Contributors whose seed has not arrived (sorted)."""
        return tuple(c for c in self.context.contributors if c not in self._seeds)

    def _envelope(self, data: bytes, kind: wire.MultiStepKind) -> wire.MultiStepEnvelope:
        envelope = wire.decode(data, expect=kind)
        if envelope.session_id != self.config.session_id or envelope.step != self.context.step:
            raise WrongSession("message for another session or step", sender=envelope.sender)
        if envelope.payload.attempt != self.context.attempt:
            raise WrongSession("message for another attempt", sender=envelope.sender)
        if envelope.sender not in self.context.contributors:
            raise UnknownSender("not a contributor of this step", sender=envelope.sender)
        return envelope

    def add_offer(self, data: bytes) -> int:
        """Record a contributor's commitment from its share offer; returns the contributor.

        Raises:
            RemoteProtocolError: another session, step or attempt, a stranger, or an offer whose
                step does not match (nothing changes).
        """
        envelope = self._envelope(data, wire.MultiStepKind.SHARE_OFFER)
        offer: wire.ShareOffer = envelope.payload
        if (offer.length, offer.contributors) != (self.context.length, self.context.contributors):
            raise WrongSession("offer for another step", sender=envelope.sender)
        self._commitments[envelope.sender] = offer.commitment
        return envelope.sender

    def add_seed(self, data: bytes) -> int:
        """Record a contributor's revealed seed after checking it against its commitment.

        Raises:
            InconsistentShares: the seed does not match the commitment (a lying contributor).
            RemoteProtocolError: as :meth:`add_offer`, or no offer from this contributor yet.
        """
        envelope = self._envelope(data, wire.MultiStepKind.SEED_REVEAL)
        owner, seed = envelope.sender, envelope.payload.seed
        self._check(owner, seed)
        self._seeds[owner] = seed
        return owner

    def add_shares(self, data: bytes) -> int:
        """Record a holder's shares of missing seeds; returns the holder.

        Raises:
            RemoteProtocolError: as :meth:`add_offer`, or shares of a non-contributor.
        """
        envelope = self._envelope(data, wire.MultiStepKind.SHARE_REVEAL)
        for owner, share in envelope.payload.shares:
            if owner not in self.context.contributors or owner == envelope.sender:
                raise UnknownSender(f"holds a share of member {owner}", sender=envelope.sender)
            self._shares.setdefault(owner, {})[envelope.sender] = share
        return envelope.sender

    def _check(self, owner: int, seed: bytes) -> None:
        commitment = self._commitments.get(owner)
        if commitment is None:
            raise MalformedMessage("a seed arrived before the contributor's offer", sender=owner)
        if keys.self_mask_commitment(seed, self._digest, owner) != commitment:
            raise InconsistentShares(
                f"the self-mask seed of member {owner} does not match its commitment"
            )

    def recover(self) -> None:
        """Rebuild every missing seed from t shares, checked against its commitment.

        Raises:
            ThresholdNotMet: fewer than t shares of some missing seed (names the members).
            InconsistentShares: the shares rebuild a seed that does not match its commitment.
        """
        threshold = self.context.threshold(self.config)
        short = [m for m in self.missing if len(self._shares.get(m, {})) < threshold]
        if short:
            raise ThresholdNotMet(
                f"the self-mask seeds of members {short} cannot be rebuilt: fewer than "
                f"{threshold} holders revealed their shares"
            )
        for owner in self.missing:
            holders = sorted(self._shares[owner])[:threshold]
            try:
                (seed,) = shamir.reconstruct_many(
                    holders, [[self._shares[owner][h] for h in holders]]
                )
            except ValueError as error:
                raise InconsistentShares(f"shares of member {owner}'s seed: {error}") from None
            self._check(owner, seed)
            self._seeds[owner] = seed

    def unmask(
        self,
        total: np.ndarray,
        *,
        offset: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        drain: ChunkHook | None = None,
    ) -> None:
        """Subtract every contributor's self mask from ``total`` (the sum of the masked vectors).

        Args:
            total: the sum, or with ``offset`` the slice ``[offset, offset + total.size)`` of it
                (members of a synchronous step may each unmask one slice and share the result).
            offset: where ``total`` starts in the step's vector (whole 16-byte blocks).
            chunk_bytes: the expansion's chunk (:func:`secagg.hazmat.prg.accumulate`).
            drain: reads each unmasked chunk of ``total`` out (e.g. decodes it) while it is in
                cache, as ``drain(start, segment)`` with ``start`` relative to ``total``.

        Raises:
            ThresholdNotMet: some seed is missing (call :meth:`recover` first).
            LocalProtocolError: ``total`` is not a ring vector of the step's length (or a slice
                within it on a block boundary).
        """
        if self.missing:
            raise ThresholdNotMet(f"self-mask seeds of members {list(self.missing)} are missing")
        word = self.config.word_dtype
        if (
            not isinstance(total, np.ndarray)
            or total.dtype != word
            or total.ndim != 1
            or offset < 0
            or (offset * word.itemsize) % 16
            or offset + total.size > self.context.length
        ):
            raise LocalProtocolError(
                f"total must be a {word} array of the step's {self.context.length} words, or a "
                f"slice of them starting on a 16-byte block (offset {offset}, "
                f"{getattr(total, 'size', '?')} words)"
            )
        terms = [
            MaskTerm(keys.self_mask_seed(seed, self._digest, owner), subtract=True)
            for owner, seed in sorted(self._seeds.items())
        ]
        accumulate(total, terms, chunk_bytes=chunk_bytes, offset=offset, drain=drain)
