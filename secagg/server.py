"""The server side of the protocol, as a sans-I/O state machine.

Feed every client message to :meth:`Server.receive`; when all expected messages are in, or the
transport's timeout for the phase expires, call :meth:`Server.close_phase` and deliver the
messages it returns. After the unmask phase closes, :attr:`Server.result` holds the sum.

A rejected client message raises a :class:`~secagg.errors.RemoteProtocolError` and changes
nothing; the client is simply treated as silent. The server fails for good (``FAILED``, sticky)
only when the round cannot finish safely: :class:`~secagg.errors.ThresholdNotMet` or
:class:`~secagg.errors.InconsistentShares` from :meth:`close_phase`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from secagg import keys, messages, quorum
from secagg.config import SecAggConfig
from secagg.errors import (
    AuthenticationFailed,
    DuplicateMessage,
    InconsistentShares,
    LocalProtocolError,
    MalformedMessage,
    ParameterMismatch,
    SecAggError,
    ThresholdNotMet,
    UnexpectedPhase,
    UnknownSender,
    WrongSession,
)
from secagg.graph import neighbour_index, neighbourhoods
from secagg.hazmat import shamir, signing
from secagg.hazmat.agreement import AgreementKey, is_clamped
from secagg.hazmat.exceptions import InvalidAuthentication
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES, MaskTerm, accumulate
from secagg.instance import InstanceTree
from secagg.randomness import RandomSource, system_random
from secagg.stages import SERVER_COLLECTS, MessageType, Phase, ServerStage, server_next_stage

__all__ = ["Server", "ServerResult"]


@dataclass(frozen=True, eq=False)
class ServerResult:
    """The outcome of a successful round.

    Attributes:
        total: the sum of the contributors' inputs modulo 2^b, as ring words.
        contributors: the clients whose inputs are in ``total`` (U3).
        dropped: the cohort members whose inputs are not.
    """

    total: np.ndarray
    contributors: frozenset[int]
    dropped: frozenset[int]


class Server:
    """The server of one secure-aggregation session.

    Example:
        >>> from secagg import SecAggConfig, Server
        >>> server = Server(SecAggConfig.create([1, 2, 3], vector_length=4))
        >>> # for each client message: server.receive(data)
        >>> # then: outgoing = server.close_phase()  -> {client_id: bytes}

    Args:
        config: the session's parameters, identical on every party.
        random_bytes: randomness for the key-validation probe (``os.urandom``).
        chunk_bytes: working-set size of the mask removal.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        random_bytes: RandomSource = system_random,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.config = config
        self._graph = neighbourhoods(config)
        self._limit = messages.size_limit(config)
        self._chunk_bytes = chunk_bytes
        self._probe = AgreementKey.generate(random_bytes)
        self._stage = ServerStage.COLLECTING_KEYS
        self._error: SecAggError | None = None
        self._expected: frozenset[int] = frozenset(config.client_ids)
        self._inbox: dict[int, messages.Payload | None] = {}
        self._adverts: dict[int, messages.AdvertiseKeys] = {}
        self._key_owners: dict[bytes, int] = {}
        self._rosters: dict[int, frozenset[int]] = {}
        self._share_keys: dict[int, messages.ShareKeys] = {}
        self._shared: frozenset[int] = frozenset()
        self._instance: InstanceTree | None = None
        self._survivors: frozenset[int] = frozenset()
        self._sum = np.zeros(config.vector_length, dtype=config.word_dtype)
        self._requests: dict[int, messages.UnmaskRequest] = {}
        self._result: ServerResult | None = None
        self._signatures: dict[int, bytes] = {}
        self._unmasked_by: frozenset[int] = frozenset()
        self._removal_answered: set[int] = set()

    @property
    def stage(self) -> ServerStage:
        """The current stage."""
        return self._stage

    @property
    def phase(self) -> Phase | None:
        """The phase being collected, or ``None`` once the round is over."""
        collecting = SERVER_COLLECTS.get(self._stage)
        return collecting[1] if collecting else None

    @property
    def expected(self) -> frozenset[int]:
        """Clients whose message for the current phase has not arrived yet."""
        return self._expected - set(self._inbox)

    @property
    def result(self) -> ServerResult:
        """The unmasked sum; available once the unmask phase has closed."""
        if self._result is None:
            raise LocalProtocolError(f"no result yet: the server is {self._stage.value}")
        return self._result

    def receive(self, data: bytes) -> int:
        """Accept one client message of the current phase; returns the sender's id.

        Raises:
            RemoteProtocolError: the message is rejected; the server is unchanged.
            LocalProtocolError: the round is already over.
        """
        collecting = SERVER_COLLECTS.get(self._stage)
        if collecting is None:
            raise LocalProtocolError(f"the round is over ({self._stage.value}); no more messages")
        envelope = self._open(data)
        sender = envelope.sender
        if sender not in self._graph:
            raise UnknownSender("not a member of this session's cohort", sender=sender)
        kind, phase = collecting
        if envelope.kind is not kind:
            raise UnexpectedPhase(
                f"sent {envelope.kind.name} while the server collects {kind.name}", sender=sender
            )
        if sender not in self._expected:
            raise UnexpectedPhase(
                f"not part of the {phase.value} phase (dropped out earlier)", sender=sender
            )
        if sender in self._inbox:
            raise DuplicateMessage(f"second {kind.name} in one phase", sender=sender)
        self._check_signature(envelope)
        {
            MessageType.ADVERTISE_KEYS: self._check_advert,
            MessageType.SHARE_KEYS: self._check_share_keys,
            MessageType.MASKED_INPUT: self._check_masked_input,
            MessageType.CONSISTENCY_SIGNATURE: self._check_consistency,
            MessageType.UNMASK_RESPONSE: self._check_unmask,
        }[kind](sender, envelope.payload)
        payload: messages.Payload | None = envelope.payload
        if kind is MessageType.MASKED_INPUT:
            np.add(self._sum, envelope.payload.vector(), out=self._sum)
            payload = None  # summed already: keep memory O(d), not O(n d)
        if kind is MessageType.ADVERTISE_KEYS:
            self._key_owners.update(
                dict.fromkeys((envelope.payload.channel_key, envelope.payload.mask_key), sender)
            )
        self._inbox[sender] = payload
        return sender

    def close_phase(self) -> dict[int, bytes]:
        """End the current phase with the messages received so far.

        Returns:
            The message for each client still in the round (empty after the last phase).

        Raises:
            ThresholdNotMet: fewer than t clients can continue; the server is ``FAILED``.
            InconsistentShares: reconstructed secrets do not verify; the server is ``FAILED``.
            LocalProtocolError: the round is already over.
        """
        if self._stage not in SERVER_COLLECTS:
            raise LocalProtocolError(f"the round is over ({self._stage.value})")
        try:
            outgoing = {
                ServerStage.COLLECTING_KEYS: self._close_keys,
                ServerStage.COLLECTING_SHARES: self._close_shares,
                ServerStage.COLLECTING_INPUTS: self._close_inputs,
                ServerStage.COLLECTING_SIGNATURES: self._close_signatures,
                ServerStage.COLLECTING_UNMASK: self._close_unmask,
            }[self._stage]()
        except (ThresholdNotMet, InconsistentShares) as error:
            self._fail(error)
        self._stage = server_next_stage(self._stage, identities=self.config.identities is not None)
        self._inbox = {}
        self._expected = frozenset(outgoing)
        return {client: self._encode(payload) for client, payload in outgoing.items()}

    # -- noise removal, after the round (secagg.removal, dp.removable) ---------------------------

    def noise_removal_requests(self) -> dict[int, bytes]:
        """After a round with identities: ask each client that answered the unmask request for
        the seeds of its removable noise, forwarding every consistency signature over U3.

        Raises:
            LocalProtocolError: the round is not done, or it ran without identities.
        """
        if self._result is None or self.config.identities is None:
            raise LocalProtocolError(
                "noise removal follows a completed round with identities "
                f"(the server is {self._stage.value})"
            )
        request = messages.NoiseRemovalRequest(tuple(sorted(self._signatures.items())))
        return {u: self._encode(request) for u in sorted(self._unmasked_by)}

    def receive_noise_removal(self, data: bytes) -> messages.NoiseRemovalResponse:
        """Accept one client's noise-removal answer; returns it (the server only records it).

        Raises:
            RemoteProtocolError: the message is rejected; the server is unchanged.
            LocalProtocolError: no noise removal is under way.
        """
        if self._result is None or self.config.identities is None:
            raise LocalProtocolError("no noise removal is under way")
        envelope = self._open(data)
        sender = envelope.sender
        if envelope.kind is not MessageType.NOISE_REMOVAL_RESPONSE:
            raise UnexpectedPhase(f"sent {envelope.kind.name} during noise removal", sender=sender)
        if sender not in self._unmasked_by:
            raise UnexpectedPhase("was not asked for noise removal", sender=sender)
        if sender in self._removal_answered:
            raise DuplicateMessage("second noise-removal answer", sender=sender)
        self._check_signature(envelope)
        self._removal_answered.add(sender)
        return envelope.payload

    def _open(self, data: bytes) -> messages.Envelope:
        """Decode a message for this session and round; the server is unchanged."""
        envelope = messages.decode(data, max_bytes=self._limit)
        if (envelope.session_id, envelope.round_index) != (
            self.config.session_id,
            self.config.round_index,
        ):
            raise WrongSession(
                f"message for round {envelope.round_index} of another session or round",
                sender=envelope.sender,
            )
        return envelope

    # -- validation of incoming messages (raise, change nothing) --------------------------------

    def _check_signature(self, envelope: messages.Envelope) -> None:
        if self.config.identities is None:
            if envelope.signature:
                raise ParameterMismatch(
                    "signed message, but this session has no identities", sender=envelope.sender
                )
            return
        try:
            signing.verify(
                self.config.identities[envelope.sender], envelope.signature, envelope.signed_bytes
            )
        except InvalidAuthentication:
            raise AuthenticationFailed(
                "message signature missing or invalid", sender=envelope.sender
            ) from None

    def _check_advert(self, sender: int, advert: messages.AdvertiseKeys) -> None:
        if not hmac.compare_digest(advert.config_digest, self.config.digest):
            raise ParameterMismatch(
                "client runs this session with different parameters (configuration digest differs)",
                sender=sender,
            )
        if self.config.identities is not None:
            keys.verify_key_advertisement(
                self.config.identities[sender],
                self.config.digest,
                sender,
                advert.channel_key,
                advert.mask_key,
                advert.key_signature,
                sender=sender,
            )
        elif advert.key_signature:
            raise ParameterMismatch(
                "key signature sent, but this session has no identities", sender=sender
            )
        if advert.channel_key == advert.mask_key:
            raise MalformedMessage("channel and mask keys must differ", sender=sender)
        for key in (advert.channel_key, advert.mask_key):
            if key in self._key_owners:
                raise MalformedMessage(
                    f"reuses a public key of client {self._key_owners[key]}", sender=sender
                )
        for key in (advert.channel_key, advert.mask_key):
            try:
                self._probe.exchange(key)
            except ValueError:
                raise MalformedMessage("advertised a low-order X25519 key", sender=sender) from None

    def _check_share_keys(self, sender: int, share_keys: messages.ShareKeys) -> None:
        receivers = frozenset(receiver for receiver, _ in share_keys.ciphertexts)
        if receivers != self._rosters[sender]:
            raise MalformedMessage(
                "shares must be addressed to exactly the clients in its roster", sender=sender
            )

    def _check_masked_input(self, sender: int, masked: messages.MaskedInput) -> None:
        itemsize = self.config.word_dtype.itemsize
        if (
            masked.word_bytes != itemsize
            or len(masked.data) != itemsize * self.config.vector_length
        ):
            raise MalformedMessage(
                f"masked vector must hold {self.config.vector_length} words of {itemsize} bytes",
                sender=sender,
            )
        if self.config.ring_bits not in (32, 64) and np.any(
            masked.vector() > self.config.ring_mask
        ):
            raise MalformedMessage("masked vector holds values outside the ring", sender=sender)

    def _check_consistency(self, sender: int, message: messages.ConsistencySignature) -> None:
        transcript = keys.consistency_transcript(
            self.config.digest, self._instance.root, self._survivors
        )
        try:
            signing.verify(self.config.identities[sender], message.signature, transcript)
        except InvalidAuthentication:
            raise AuthenticationFailed("consistency signature invalid", sender=sender) from None

    def _check_unmask(self, sender: int, response: messages.UnmaskResponse) -> None:
        request = self._requests[sender]
        if (
            tuple(i for i, _ in response.self_mask_shares) != request.alive
            or tuple(i for i, _ in response.key_shares) != request.dropped
        ):
            raise MalformedMessage("shares do not answer exactly the unmask request", sender=sender)

    # -- phase transitions -----------------------------------------------------------------------

    def _fail(self, error: SecAggError) -> NoReturn:
        self._stage, self._error = ServerStage.FAILED, error
        raise error

    def _encode(self, payload: messages.Payload) -> bytes:
        return messages.encode(
            payload,
            session_id=self.config.session_id,
            round_index=self.config.round_index,
            sender=0,
        )

    def _viable(self, members: frozenset[int], phase: Phase) -> frozenset[int]:
        """Drop clients with fewer than t - 1 neighbours among ``members``, until none is left."""
        t = self.config.threshold
        while True:
            keep = frozenset(u for u in members if len(self._graph[u] & members) + 1 >= t)
            if keep == members:
                break
            members = keep
        if len(members) < t:
            raise ThresholdNotMet(
                f"only {len(members)} clients can continue after the {phase.value} phase; "
                f"the threshold is {t}"
            )
        return members

    def _close_keys(self) -> dict[int, messages.Payload]:
        advertised = self._viable(frozenset(self._inbox), Phase.ADVERTISE_KEYS)
        self._adverts = {u: self._inbox[u] for u in advertised}
        self._instance = InstanceTree.build(
            self.config, {u: (a.channel_key, a.mask_key) for u, a in self._adverts.items()}
        )
        entries = {
            v: messages.RosterEntry(v, advert.channel_key, advert.mask_key, advert.key_signature)
            for v, advert in self._adverts.items()
        }
        outgoing = {}
        for u in sorted(advertised):
            peers = sorted(self._graph[u] & advertised)
            self._rosters[u] = frozenset(peers)
            outgoing[u] = messages.KeyRoster(
                tuple(entries[v] for v in peers), self._instance.root, self._instance.path(u)
            )
        return outgoing

    def _close_shares(self) -> dict[int, messages.Payload]:
        shared = self._viable(frozenset(self._inbox), Phase.SHARE_KEYS)
        self._share_keys = {u: self._inbox[u] for u in shared}
        self._shared = shared
        addressed = {u: dict(self._share_keys[u].ciphertexts) for u in shared}
        return {
            u: messages.ShareBundle(
                tuple((v, addressed[v][u]) for v in sorted(self._graph[u] & shared))
            )
            for u in sorted(shared)
        }

    def _close_inputs(self) -> dict[int, messages.Payload]:
        survivors = frozenset(self._inbox)
        if len(survivors) < self.config.threshold:
            raise ThresholdNotMet(
                f"only {len(survivors)} masked inputs arrived; the threshold is {self.config.threshold}"
            )
        self._survivors = survivors
        if self.config.identities is not None:
            request = messages.ConsistencyRequest(tuple(sorted(survivors)))
            return {u: request for u in sorted(survivors)}
        return self._unmask_requests(survivors)

    def _close_signatures(self) -> dict[int, messages.Payload]:
        """Send unmask requests to the signers whose every neighbourhood certified U3.

        A signer checks, for itself and each neighbour whose shares it holds, that t members
        of that client's closed neighbourhood signed U3 (:mod:`secagg.quorum`); a signer for
        whom that fails would refuse, so it is not asked. Each request carries a smallest-effort
        set of signatures that certifies the recipient's neighbourhoods (it verifies them all).
        """
        signers = frozenset(self._inbox)
        t = self.config.threshold
        index = neighbour_index(self.config)
        chosen: dict[int, list[int]] = {}
        for u in signers:
            needed, short = quorum.signers_to_verify(
                watched=self._watched(u), signers=signers, index=index, threshold=t, trusted=u
            )
            if not short:
                chosen[u] = needed
        if len(chosen) < t:
            raise ThresholdNotMet(
                f"only {len(chosen)} of {len(signers)} consistency signers have U3 certified "
                f"in every neighbourhood they act on; the threshold is {t}"
            )
        signature = {u: self._inbox[u].signature for u in signers}
        self._signatures = signature
        return self._unmask_requests(
            frozenset(chosen), lambda u: tuple((v, signature[v]) for v in sorted(chosen[u]))
        )

    def _watched(self, u: int) -> frozenset[int]:
        """The clients whose status ``u`` acts on: itself and the neighbours it holds shares of."""
        return (self._graph[u] & self._shared) | {u}

    def _unmask_requests(
        self,
        recipients: frozenset[int],
        signatures: Callable[[int], tuple[tuple[int, bytes], ...]] = lambda u: (),
    ) -> dict[int, messages.Payload]:
        requests = {}
        for u in sorted(recipients):
            peers = self._graph[u] & self._shared
            requests[u] = messages.UnmaskRequest(
                alive=tuple(sorted((peers & self._survivors) | {u})),
                dropped=tuple(sorted(peers - self._survivors)),
                signatures=signatures(u),
            )
        self._requests = requests
        return dict(requests)

    def _close_unmask(self) -> dict[int, messages.Payload]:
        responses: Mapping[int, messages.UnmaskResponse] = self._inbox
        self._unmasked_by = frozenset(responses)
        t = self.config.threshold
        if len(responses) < t:
            raise ThresholdNotMet(
                f"only {len(responses)} clients answered the unmask request; the threshold is {t}"
            )
        self_mask_shares: dict[int, dict[int, bytes]] = {u: {} for u in self._survivors}
        key_shares: dict[int, dict[int, bytes]] = {v: {} for v in self._shared - self._survivors}
        for holder, response in responses.items():
            for owner, share in response.self_mask_shares:
                self_mask_shares[owner][holder] = share
            for owner, share in response.key_shares:
                key_shares[owner][holder] = share
        terms = [
            MaskTerm(keys.self_mask_seed(secret, self.config.digest, owner), subtract=True)
            for owner, secret in self._reconstruct(
                self_mask_shares, "self-mask", self._self_mask_matches
            )
        ]
        for owner, secret in self._reconstruct(key_shares, "mask key", self._mask_key_matches):
            key = AgreementKey(secret)
            for peer in sorted(self._graph[owner] & self._survivors):
                seed = keys.pairwise_seed(
                    key.exchange(self._adverts[peer].mask_key), self.config.digest, owner, peer
                )
                terms.append(MaskTerm(seed, subtract=peer < owner))
        total = self._sum
        accumulate(total, terms, chunk_bytes=self._chunk_bytes)
        if self.config.ring_bits not in (32, 64):
            total &= total.dtype.type(self.config.ring_mask)
        total.flags.writeable = False
        self._result = ServerResult(
            total=total,
            contributors=self._survivors,
            dropped=frozenset(self.config.client_ids) - self._survivors,
        )
        return {}

    def _self_mask_matches(self, owner: int, secret: bytes) -> bool:
        commitment = keys.self_mask_commitment(secret, self.config.digest, owner)
        return hmac.compare_digest(commitment, self._share_keys[owner].commitment)

    def _mask_key_matches(self, owner: int, secret: bytes) -> bool:
        """The secret must be the canonical (clamped) private key of the advertised public key:
        X25519 ignores five bits of the scalar, so the public key alone does not pin it."""
        if not is_clamped(secret):
            return False
        public = AgreementKey(secret).public_bytes
        return hmac.compare_digest(public, self._adverts[owner].mask_key)

    def _reconstruct(
        self,
        shares: dict[int, dict[int, bytes]],
        what: str,
        matches: Callable[[int, bytes], bool],
    ) -> list[tuple[int, bytes]]:
        """Rebuild each owner's secret from its t lowest-id holders, grouped to reuse Lagrange."""
        t = self.config.threshold
        groups: dict[tuple[int, ...], list[int]] = {}
        for owner, by_holder in sorted(shares.items()):
            if len(by_holder) < t:
                raise ThresholdNotMet(
                    f"only {len(by_holder)} shares of client {owner}'s {what} arrived; need {t}"
                )
            groups.setdefault(tuple(sorted(by_holder)[:t]), []).append(owner)
        secrets = []
        for holders, owners in groups.items():
            try:
                values = shamir.reconstruct_many(
                    holders, [[shares[o][h] for h in holders] for o in owners]
                )
            except ValueError as error:
                raise InconsistentShares(f"{what} shares do not reconstruct: {error}") from None
            for owner, secret in zip(owners, values, strict=True):
                if not matches(owner, secret):
                    raise InconsistentShares(
                        f"reconstructed {what} of client {owner} does not match what it committed to"
                    )
                secrets.append((owner, secret))
        return secrets
