"""The client side of the protocol, as a sans-I/O state machine: bytes in, bytes out.

Error handling (see :mod:`secagg.errors`):

* Transport-level problems in a server message - malformed bytes, another session or round, a
  message for another stage, a duplicate - raise and leave the client unchanged, so a stale or
  corrupted message can simply be dropped.
* Anything wrong in a well-formed message of this session - a forged signature or ciphertext, a
  roster with strangers, an unmask request that asks for both shares of a peer or contradicts the
  consistency check, a story about U3 not certified in every neighbourhood the client acts on,
  too few peers left, parameters below the client's :class:`~secagg.policy.ClientPolicy`, a
  session joined before - means the server (or a peer it relays) is dishonest or the round cannot
  be completed safely: the client moves to the sticky ``ERROR`` stage and refuses everything after.

Only :func:`secagg.errors.error_code` of an error may be reported to the server; the text stays
local.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from numpy.typing import ArrayLike

from secagg import instance, keys, messages, quorum
from secagg.config import SecAggConfig
from secagg.errors import (
    AuthenticationFailed,
    ConfigurationError,
    InconsistentRequest,
    LocalProtocolError,
    PolicyViolation,
    ReplayedSession,
    ThresholdNotMet,
    UnexpectedPhase,
    UnknownSender,
    WrongSession,
)
from secagg.graph import neighbour_index, neighbourhoods
from secagg.hazmat import aead, shamir, signing
from secagg.hazmat.agreement import AgreementKey
from secagg.hazmat.exceptions import InvalidAuthentication
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES, MaskTerm, accumulate
from secagg.policy import ClientPolicy
from secagg.randomness import RandomSource, system_random
from secagg.removal import certified_honest_floor
from secagg.ring import to_ring
from secagg.sessions import SessionLog
from secagg.stages import CLIENT_TRANSITIONS, ClientStage, MessageType

__all__ = ["Client", "ClientStats"]

_STICKY = (
    AuthenticationFailed,
    InconsistentRequest,
    PolicyViolation,
    ReplayedSession,
    ThresholdNotMet,
    UnknownSender,
)


@dataclass
class ClientStats:
    """What the client measured about its own work (for benchmarks)."""

    mask_seconds: float = 0.0
    keystream_bytes: int = 0


class Client:
    """One client of one secure-aggregation session.

    Example:
        >>> from secagg import SecAggConfig, Client
        >>> config = SecAggConfig.create([1, 2, 3, 4, 5], vector_length=4)
        >>> client = Client(config, 1)
        >>> first_message = client.advertise_keys()  # send to the server
        >>> # then: reply = client.receive(server_bytes) for each server message

    Args:
        config: the session's parameters, identical on every party.
        client_id: this client's id in ``config.client_ids``.
        signing_key: this client's long-term Ed25519 key; required iff ``config.identities``.
        policy: the floors this client holds against the server's proposal
            (:class:`~secagg.policy.ClientPolicy`; the secure defaults when omitted).
        sessions: the log of sessions this client joined; :meth:`advertise_keys` refuses a
            session or a round joined before (Flower keeps it in the node's state).
        random_bytes: source of secret randomness (``os.urandom``; seed only in tests).
        chunk_bytes: working-set size of the mask expansion.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        *,
        signing_key: signing.SigningKey | None = None,
        policy: ClientPolicy | None = None,
        sessions: SessionLog | None = None,
        random_bytes: RandomSource = system_random,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if client_id not in config.client_ids:
            raise ConfigurationError(f"client id {client_id} is not in the session's cohort")
        if (signing_key is None) != (config.identities is None):
            raise ConfigurationError(
                "pass signing_key exactly when the configuration has identities"
            )
        if signing_key is not None and config.identities[client_id] != signing_key.public_bytes:
            raise ConfigurationError(
                f"signing_key does not match the identity configured for client {client_id}"
            )
        self.config = config
        self.client_id = client_id
        self.stats = ClientStats()
        self._signing_key = signing_key
        self.policy = ClientPolicy() if policy is None else policy
        self._sessions = sessions
        self._random = random_bytes
        self._chunk_bytes = chunk_bytes
        self._graph = neighbourhoods(config)
        self._neighbours = self._graph[client_id]
        self._limit = messages.size_limit(config)
        self._stage = ClientStage.NEW
        self._error: Exception | None = None
        self._input: np.ndarray | None = None
        self._channel_key: AgreementKey | None = None
        self._mask_key: AgreementKey | None = None
        self._own_shares: tuple[bytes, bytes] = (b"", b"")
        self._peer_shares: dict[int, tuple[bytes, bytes]] = {}
        self._survivors: frozenset[int] | None = None
        self._instance_root = b""
        self._self_mask_secret = b""
        self._pair_seeds: dict[int, bytes] = {}
        self._channel_secrets: dict[int, bytes] = {}
        self._removal_answered = False

    @property
    def stage(self) -> ClientStage:
        """The current stage."""
        return self._stage

    @property
    def needs_input(self) -> bool:
        """Whether the next server message is the share bundle, which consumes the input."""
        return self._stage is ClientStage.KEYS_SHARED

    def to_state(self) -> bytes:
        """This client's protocol state, for transports that keep no object between messages.

        The state holds this session's private keys and shares: keep it on the client's device
        (Flower keeps it in the node's context). The input vector is not included: set it right
        before delivering the share bundle. Encoded as JSON with hex strings (never pickle).
        """
        hexed = lambda mapping: {str(k): v.hex() for k, v in mapping.items()}  # noqa: E731
        state = {
            "digest": self.config.digest.hex(),
            "client": self.client_id,
            "stage": self._stage.value,
            "error": None if self._error is None else str(self._error),
            "channel_key": self._channel_key.private_bytes.hex() if self._channel_key else None,
            "mask_key": self._mask_key.private_bytes.hex() if self._mask_key else None,
            "own_shares": [share.hex() for share in self._own_shares],
            "peer_shares": {str(k): [a.hex(), b.hex()] for k, (a, b) in self._peer_shares.items()},
            "survivors": None if self._survivors is None else sorted(self._survivors),
            "instance_root": self._instance_root.hex(),
            "self_mask_secret": self._self_mask_secret.hex(),
            "pair_seeds": hexed(self._pair_seeds),
            "channel_secrets": hexed(self._channel_secrets),
            "removal_answered": self._removal_answered,
        }
        return json.dumps(state).encode()

    @classmethod
    def from_state(
        cls,
        config: SecAggConfig,
        state: bytes,
        *,
        signing_key: signing.SigningKey | None = None,
        policy: ClientPolicy | None = None,
        random_bytes: RandomSource = system_random,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> Client:
        """Rebuild a client from :meth:`to_state` output.

        Restoring an old snapshot again never repeats an AES-GCM key/nonce pair (every
        encryption draws a fresh nonce), but it does let the restored client act a second time:
        keep one live copy of the state, as Flower's node context does. The state records that
        the noise-removal request was answered, so a client restored from a later state refuses
        a second one.

        Raises:
            LocalProtocolError: the state is unreadable or belongs to another session.
        """
        try:
            data = json.loads(state)
            if data["digest"] != config.digest.hex():
                raise LocalProtocolError("the saved client state belongs to another session")
            client = cls(
                config,
                int(data["client"]),
                signing_key=signing_key,
                policy=policy,
                random_bytes=random_bytes,
                chunk_bytes=chunk_bytes,
            )
            unhex = lambda mapping: {int(k): bytes.fromhex(v) for k, v in mapping.items()}  # noqa: E731
            client._stage = ClientStage(data["stage"])
            client._error = LocalProtocolError(data["error"]) if data["error"] else None
            client._channel_key = (
                AgreementKey(bytes.fromhex(data["channel_key"])) if data["channel_key"] else None
            )
            client._mask_key = (
                AgreementKey(bytes.fromhex(data["mask_key"])) if data["mask_key"] else None
            )
            client._own_shares = tuple(bytes.fromhex(v) for v in data["own_shares"])
            client._peer_shares = {
                int(k): (bytes.fromhex(a), bytes.fromhex(b))
                for k, (a, b) in data["peer_shares"].items()
            }
            client._survivors = None if data["survivors"] is None else frozenset(data["survivors"])
            client._instance_root = bytes.fromhex(data["instance_root"])
            client._self_mask_secret = bytes.fromhex(data["self_mask_secret"])
            client._pair_seeds = unhex(data["pair_seeds"])
            client._channel_secrets = unhex(data["channel_secrets"])
            # a state without this record is refused (KeyError), never read as "not answered":
            # two removal answers for two floors would reveal the union of their ladder steps
            if type(data["removal_answered"]) is not bool:
                raise ValueError("removal_answered must be true or false")
            client._removal_answered = data["removal_answered"]
        except (KeyError, TypeError, ValueError) as error:
            raise LocalProtocolError(f"the saved client state is unreadable ({error})") from None
        return client

    def set_input(self, vector: ArrayLike) -> None:
        """Give the integer vector to aggregate (any time before the share bundle arrives).

        Raises:
            InvalidInput: wrong length, not integers, or beyond ``config.input_bound``.
            LocalProtocolError: the masked input was already sent.
        """
        if self._stage in (
            ClientStage.INPUT_MASKED,
            ClientStage.CONSISTENCY_SIGNED,
            ClientStage.DONE,
        ):
            raise LocalProtocolError("the masked input was already sent; the input cannot change")
        self._input = to_ring(
            vector,
            ring_bits=self.config.ring_bits,
            length=self.config.vector_length,
            bound=self.config.input_bound,
        )

    def advertise_keys(self) -> bytes:
        """Phase 0: draw this session's two X25519 key pairs and return the advertisement.

        Raises:
            PolicyViolation: the session's parameters are below this client's policy.
            ReplayedSession: the session (or a later round) was joined before.
            LocalProtocolError: called twice.
        """
        if self._stage is not ClientStage.NEW:
            raise LocalProtocolError(
                f"advertise_keys() is the first call; client is {self._stage.value}"
            )
        try:
            self.policy.check_session(self.config)
            if self._sessions is not None:
                self._sessions.admit(self.config)
        except (PolicyViolation, ReplayedSession) as error:
            self._fail(error)
        channel, mask = AgreementKey.generate(self._random), AgreementKey.generate(self._random)
        signature = b""
        if self._signing_key is not None:
            signature = self._signing_key.sign(
                keys.key_advertisement_transcript(
                    self.config.digest, self.client_id, channel.public_bytes, mask.public_bytes
                )
            )
        reply = messages.AdvertiseKeys(
            self.config.digest, channel.public_bytes, mask.public_bytes, signature
        )
        self._channel_key, self._mask_key = channel, mask
        self._stage = ClientStage.KEYS_ADVERTISED
        return self._encode(reply)

    def receive(self, data: bytes) -> bytes:
        """Process one server message and return the reply to send back.

        Raises:
            RemoteProtocolError: the message is bad (see the module doc for which are sticky).
            ThresholdNotMet: too few peers remain; the client stops.
            LocalProtocolError: the client already stopped, or no input was set in time.
        """
        envelope = self._open(data)
        if self._stage is ClientStage.DONE and envelope.kind is MessageType.UNMASK_REQUEST:
            self._fail(InconsistentRequest("a second unmask request in one session", sender=0))
        transition = CLIENT_TRANSITIONS.get((self._stage, envelope.kind))
        identities = self.config.identities is not None
        if transition is None or transition[1] not in (None, identities):
            needs_check = identities and self._stage is ClientStage.INPUT_MASKED
            raise UnexpectedPhase(
                f"{envelope.kind.name} is not expected while the client is {self._stage.value}"
                + (" (identities require the consistency check first)" if needs_check else ""),
                sender=0,
            )
        handler: Callable[[messages.Payload], messages.Payload] = {
            MessageType.KEY_ROSTER: self._on_roster,
            MessageType.SHARE_BUNDLE: self._on_bundle,
            MessageType.CONSISTENCY_REQUEST: self._on_consistency,
            MessageType.UNMASK_REQUEST: self._on_unmask,
        }[envelope.kind]
        try:
            reply = handler(envelope.payload)
        except _STICKY as error:
            self._fail(error)
        self._stage = transition[0]
        return self._encode(reply)

    def answer_noise_removal(
        self, data: bytes, reveal: Callable[[int], tuple[tuple[int, bytes], ...]]
    ) -> bytes:
        """After the round, reveal the seeds of removable noise that the certified U3 allows.

        The server's request carries consistency signatures over the U3 this client signed.
        The client verifies every one, bounds the honest clients of any sum the server can
        unmask (:func:`secagg.removal.certified_honest_floor`) and asks ``reveal(m)`` for the
        seeds to send. One answer per session; a refused request changes nothing.

        Args:
            data: the server's ``NoiseRemovalRequest``.
            reveal: ``m -> ((component index, seed), ...)``, the seeds that leave this client at
                least V / m of noise (:meth:`dp.removable.RemovableNoise.removal`).

        Raises:
            UnexpectedPhase: no certified U3 (identities off, or the round is not done here),
                or a second request.
            InconsistentRequest: signatures from clients outside U3.
            AuthenticationFailed: a signature does not verify.
        """
        envelope = self._open(data)
        if envelope.kind is not MessageType.NOISE_REMOVAL_REQUEST:
            raise UnexpectedPhase(f"{envelope.kind.name} is not a noise-removal request", sender=0)
        if self._stage is not ClientStage.DONE or self._survivors is None:
            raise UnexpectedPhase(
                "noise removal needs a certified U3: identities on and this client's unmask "
                f"answered (the client is {self._stage.value})",
                sender=0,
            )
        if self._removal_answered:
            raise UnexpectedPhase("a second noise-removal request in one session", sender=0)
        signed = self._signed_inside_u3(envelope.payload.signatures)
        self._verify_story(signed)
        honest_floor = certified_honest_floor(
            signers={*signed, self.client_id},
            index=neighbour_index(self.config),
            threshold=self.config.threshold,
            corrupt=self.policy.corrupt_neighbours(self.config),
        )
        seeds = tuple(sorted(reveal(honest_floor)))
        self._removal_answered = True
        return self._encode(messages.NoiseRemovalResponse(honest_floor, seeds))

    def _open(self, data: bytes) -> messages.Envelope:
        """Decode a server message for this session and round; the client is unchanged."""
        if self._stage is ClientStage.ERROR:
            raise LocalProtocolError(f"client {self.client_id} stopped after: {self._error}")
        envelope = messages.decode(data, max_bytes=self._limit)
        if envelope.sender != messages.SERVER_ID or envelope.signature:
            raise UnknownSender(
                "clients only accept unsigned messages from the server", sender=envelope.sender
            )
        if (envelope.session_id, envelope.round_index) != (
            self.config.session_id,
            self.config.round_index,
        ):
            raise WrongSession(
                f"message for round {envelope.round_index} of session "
                f"{envelope.session_id.hex()[:16]}..., this is round {self.config.round_index} "
                f"of {self.config.session_id.hex()[:16]}...",
                sender=envelope.sender,
            )
        return envelope

    def _fail(self, error: Exception) -> NoReturn:
        self._stage, self._error = ClientStage.ERROR, error
        self._channel_key = self._mask_key = None
        self._peer_shares, self._pair_seeds, self._channel_secrets = {}, {}, {}
        self._self_mask_secret = b""
        raise error

    def _encode(self, payload: messages.Payload) -> bytes:
        return messages.encode(
            payload,
            session_id=self.config.session_id,
            round_index=self.config.round_index,
            sender=self.client_id,
            signing_key=self._signing_key,
        )

    def _require(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise ThresholdNotMet(
                f"client {self.client_id}: only {count} {what}, threshold is {self.config.threshold}"
            )

    def _require_neighbours(self, count: int, phase: str) -> None:
        floor = self.policy.min_live_neighbours(self.config)
        if count < floor:
            raise ThresholdNotMet(
                f"client {self.client_id}: only {count} of {self.config.neighbours} neighbours "
                f"{phase}; this client's policy needs {floor}"
            )

    def _on_roster(self, roster: messages.KeyRoster) -> messages.ShareKeys:
        own_leaf = instance.key_leaf(
            self.config.digest,
            self.client_id,
            self._channel_key.public_bytes,
            self._mask_key.public_bytes,
        )
        if not instance.verify_path(
            self.config, self.client_id, own_leaf, roster.instance_root, roster.instance_path
        ):
            raise InconsistentRequest(
                "the session-instance commitment does not hold this client's keys", sender=0
            )
        own = {self._channel_key.public_bytes, self._mask_key.public_bytes}
        seen: set[bytes] = set(own)
        for entry in roster.entries:
            peer = entry.client_id
            if peer not in self.config.client_ids:
                raise UnknownSender(
                    f"roster lists client {peer}, who is not in the cohort", sender=0
                )
            if peer not in self._neighbours:
                raise InconsistentRequest(
                    f"roster lists client {peer}, who is not a neighbour", sender=0
                )
            if (
                entry.channel_key in seen
                or entry.mask_key in seen
                or entry.channel_key == entry.mask_key
            ):
                raise InconsistentRequest(f"roster reuses a public key (client {peer})", sender=0)
            seen |= {entry.channel_key, entry.mask_key}
            if self.config.identities is not None:
                keys.verify_key_advertisement(
                    self.config.identities[peer],
                    self.config.digest,
                    peer,
                    entry.channel_key,
                    entry.mask_key,
                    entry.key_signature,
                    sender=0,
                )
        self._require_neighbours(len(roster.entries), "advertised keys")
        secret = self._random(shamir.SECRET_BYTES)
        holders = sorted([self.client_id, *(e.client_id for e in roster.entries)])
        shares = shamir.split(
            [self._mask_key.private_bytes, secret],
            threshold=self.config.threshold,
            xs=holders,
            random_bytes=self._random,
        )
        by_holder = dict(zip(holders, shares, strict=True))
        ciphertexts, pair_seeds, channel_secrets = [], {}, {}
        for entry in roster.entries:
            peer = entry.client_id
            try:
                shared = self._channel_key.exchange(entry.channel_key)
                mask_secret = self._mask_key.exchange(entry.mask_key)
            except ValueError:
                raise InconsistentRequest(
                    f"client {peer} advertised a low-order key", sender=0
                ) from None
            pair_seeds[peer] = keys.pairwise_seed(
                mask_secret, self.config.digest, self.client_id, peer
            )
            channel_secrets[peer] = shared
            key = keys.channel_key(shared, self.config.digest, self.client_id, peer)
            associated = keys.share_associated_data(
                self.config.session_id,
                self.config.round_index,
                self.config.digest,
                self.client_id,
                peer,
            )
            sealed = aead.seal_framed(
                key, b"".join(by_holder[peer]), associated, random_bytes=self._random
            )
            ciphertexts.append((peer, sealed))
        self._pair_seeds, self._channel_secrets = pair_seeds, channel_secrets
        self._instance_root = roster.instance_root
        self._own_shares = tuple(by_holder[self.client_id])
        self._self_mask_secret = secret
        commitment = keys.self_mask_commitment(secret, self.config.digest, self.client_id)
        return messages.ShareKeys(commitment, tuple(ciphertexts))

    def _on_bundle(self, bundle: messages.ShareBundle) -> messages.MaskedInput:
        if self._input is None:
            raise LocalProtocolError("call set_input() before delivering the share bundle")
        received: dict[int, tuple[bytes, bytes]] = {}
        for peer, ciphertext in bundle.ciphertexts:
            shared = self._channel_secrets.get(peer)
            if shared is None:
                raise InconsistentRequest(
                    f"share bundle holds a ciphertext from non-roster client {peer}", sender=0
                )
            key = keys.channel_key(shared, self.config.digest, peer, self.client_id)
            associated = keys.share_associated_data(
                self.config.session_id,
                self.config.round_index,
                self.config.digest,
                peer,
                self.client_id,
            )
            try:
                plaintext = aead.open_framed(key, ciphertext, associated)
            except InvalidAuthentication:
                raise AuthenticationFailed(
                    f"shares from client {peer} fail authentication", sender=0
                ) from None
            half = shamir.SHARE_BYTES
            received[peer] = (plaintext[:half], plaintext[half:])
        self._require_neighbours(len(received), "shared keys")
        started = time.perf_counter()
        terms = [
            MaskTerm(
                keys.self_mask_seed(self._self_mask_secret, self.config.digest, self.client_id)
            )
        ]
        terms += [MaskTerm(self._pair_seeds[p], subtract=self.client_id > p) for p in received]
        masked = self._input.copy()
        accumulate(masked, terms, chunk_bytes=self._chunk_bytes)
        if self.config.ring_bits not in (32, 64):
            masked &= masked.dtype.type(self.config.ring_mask)
        self.stats.mask_seconds += time.perf_counter() - started
        self.stats.keystream_bytes += len(terms) * masked.nbytes
        self._peer_shares = received
        self._pair_seeds, self._channel_secrets = {}, {}
        self._input = None
        return messages.MaskedInput.from_vector(masked)

    def _on_consistency(
        self, request: messages.ConsistencyRequest
    ) -> messages.ConsistencySignature:
        survivors = frozenset(request.survivors)
        self._check_known(survivors)
        if self.client_id not in survivors:
            raise InconsistentRequest("U3 omits this client, which sent its masked input", sender=0)
        strangers = (survivors & self._neighbours) - set(self._peer_shares)
        if strangers:
            raise InconsistentRequest(
                f"U3 names neighbours {sorted(strangers)[:5]} that never shared keys with this client",
                sender=0,
            )
        self._require(len(survivors), "clients in U3")
        signature = self._signing_key.sign(
            keys.consistency_transcript(self.config.digest, self._instance_root, survivors)
        )
        self._survivors = survivors
        return messages.ConsistencySignature(signature)

    def _on_unmask(self, request: messages.UnmaskRequest) -> messages.UnmaskResponse:
        alive, dropped = frozenset(request.alive), frozenset(request.dropped)
        both = alive & dropped
        if both:
            raise InconsistentRequest(
                f"asked for both the self-mask share and the key share of client {min(both)}",
                sender=0,
            )
        expected = {*self._peer_shares, self.client_id}
        if alive | dropped != expected or self.client_id not in alive:
            raise InconsistentRequest(
                "unmask request must name this client alive and each neighbour that shared keys "
                f"exactly once; unknown: {sorted((alive | dropped) - expected)[:5]}, "
                f"missing: {sorted(expected - alive - dropped)[:5]}",
                sender=0,
            )
        if self._survivors is not None:
            if alive != expected & self._survivors:
                raise InconsistentRequest(
                    "the unmask request contradicts the set U3 of the consistency check", sender=0
                )
            self._check_one_story(request.signatures)
        self._require(len(alive), "live holders of this client's self-mask")
        own_secret_share = self._own_shares[1]
        self_mask_shares = tuple(
            (peer, own_secret_share if peer == self.client_id else self._peer_shares[peer][1])
            for peer in sorted(alive)
        )
        key_shares = tuple((peer, self._peer_shares[peer][0]) for peer in sorted(dropped))
        self._peer_shares = {}
        self._self_mask_secret = b""
        return messages.UnmaskResponse(self_mask_shares, key_shares)

    def _check_known(self, ids: frozenset[int]) -> None:
        unknown = ids - set(self.config.client_ids)
        if unknown:
            raise UnknownSender(
                f"server names clients {sorted(unknown)[:5]} outside the cohort", sender=0
            )

    def _check_one_story(self, signatures: tuple[tuple[int, bytes], ...]) -> None:
        """Act on U3 only if it is certified in every neighbourhood this client acts on.

        For itself and each neighbour whose shares it holds, t members of that client's closed
        neighbourhood must have signed this same U3 (:mod:`secagg.quorum`). Every signature the
        server forwards must verify.
        """
        signed = self._signed_inside_u3(signatures)
        short = quorum.shortfalls(
            watched={self.client_id, *self._peer_shares},
            signers={*signed, self.client_id},
            index=neighbour_index(self.config),
            threshold=self.config.threshold,
        )
        if short:
            worst = min(short, key=lambda x: (-short[x], x))
            raise ThresholdNotMet(
                f"client {self.client_id}: U3 is not certified around client {worst}: "
                f"{self.config.threshold - short[worst]} of its neighbourhood signed it, "
                f"the threshold is {self.config.threshold}"
            )
        self._verify_story(signed)

    def _signed_inside_u3(self, signatures: tuple[tuple[int, bytes], ...]) -> dict[int, bytes]:
        """The signatures by signer; every signer must be in this client's U3."""
        signed = dict(signatures)
        outsiders = set(signed) - self._survivors
        if outsiders:
            raise InconsistentRequest(
                f"consistency signatures from clients {sorted(outsiders)[:5]}, outside U3",
                sender=0,
            )
        return signed

    def _verify_story(self, signed: dict[int, bytes]) -> None:
        """Every signature must verify over this session's instance and this client's U3."""
        transcript = keys.consistency_transcript(
            self.config.digest, self._instance_root, self._survivors
        )
        for signer, signature in signed.items():
            try:
                signing.verify(self.config.identities[signer], signature, transcript)
            except InvalidAuthentication:
                raise AuthenticationFailed(
                    f"consistency signature of client {signer} does not verify", sender=0
                ) from None
