"""All parties of one round in one process, talking through the real byte messages.

For tests, experiments and benchmarks: every message is encoded, handed over as bytes and
decoded, so the bytes counted are the bytes a deployment would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from secagg.client import Client
from secagg.config import SecAggConfig
from secagg.contribution import Contribution
from secagg.errors import ThresholdNotMet
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES
from secagg.hazmat.signing import SigningKey
from secagg.messages import SERVER_ID, NoiseRemovalResponse
from secagg.policy import ClientPolicy
from secagg.randomness import RandomSource, system_random
from secagg.server import Server
from secagg.stages import Phase

__all__ = ["AggregationResult", "ProgressCallback", "RevealNoise", "RoundTraffic", "aggregate"]

ProgressCallback = Callable[[Phase, int, int], None]
"""Called as ``progress(phase, done, total)``: once with ``done=0``, then after each step."""
RevealNoise = Callable[[int], tuple[tuple[int, bytes], ...]]
"""Called as ``reveal(m)`` by a client: the (component index, seed) pairs it reveals."""


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """What one simulated round produced and cost.

    Attributes:
        total: the unmasked sum of the contributors' inputs modulo 2^b (ring words).
        contributors: the clients whose inputs are in ``total``.
        dropped: the clients that dropped out or aborted.
        config: the session's parameters.
        bytes_sent: bytes each party sent, by id (0 is the server).
        bytes_received: bytes each party received, by id (0 is the server).
        client_seconds: compute time of each client, summed over phases.
        server_seconds: compute time of the server.
        phase_seconds: wall time of each phase (all parties, run one after another).
        phase_bytes_up: bytes clients sent to the server in each phase.
        phase_bytes_down: bytes the server sent to clients at the start of each phase.
        mask_seconds: time the clients spent expanding masks, summed.
        keystream_bytes: keystream bytes the clients expanded, summed.
        noise_removal: each client's answer to the noise-removal request, by id (empty unless
            ``noise_removal`` was passed to :func:`aggregate`).
    """

    total: np.ndarray
    contributors: frozenset[int]
    dropped: frozenset[int]
    config: SecAggConfig
    bytes_sent: Mapping[int, int]
    bytes_received: Mapping[int, int]
    client_seconds: Mapping[int, float]
    server_seconds: float
    phase_seconds: Mapping[Phase, float]
    phase_bytes_up: Mapping[Phase, int]
    phase_bytes_down: Mapping[Phase, int]
    mask_seconds: float
    keystream_bytes: int
    noise_removal: Mapping[int, NoiseRemovalResponse] = field(default_factory=dict)


def _dropout_phases(
    dropouts: Mapping[Phase, Iterable[int]] | None, ids: Sequence[int], identities: bool
) -> dict[int, Phase]:
    when: dict[int, Phase] = {}
    for phase, clients in (dropouts or {}).items():
        phase = Phase(phase)
        if phase is Phase.CONSISTENCY_CHECK and not identities:
            raise ValueError("the consistency-check phase only exists with identities=True")
        for client in clients:
            if client not in ids:
                raise ValueError(
                    f"dropout client {client} is not in the cohort {ids[0]}..{ids[-1]}"
                )
            if client in when:
                raise ValueError(f"client {client} is set to drop out in two phases")
            when[client] = phase
    return when


class RoundTraffic:
    """The bytes and seconds of one driven round, counted one way by every driver of the
    protocol (:func:`aggregate`, and the worker pool of ``fl.engines.pool``).

    The server's time is counted around its own calls (receive, close_phase); each phase's
    bytes down are every message the server sends, delivered or not (a client that dropped out
    never reads its message), and its bytes up every reply the server receives.
    """

    def __init__(self, ids: Sequence[int]) -> None:
        self.bytes_sent = dict.fromkeys([SERVER_ID, *ids], 0)
        self.bytes_received = dict.fromkeys([SERVER_ID, *ids], 0)
        self.client_seconds = dict.fromkeys(ids, 0.0)
        self.phase_seconds: dict[Phase, float] = {}
        self.phase_bytes_up: dict[Phase, int] = {}
        self.phase_bytes_down: dict[Phase, int] = {}
        self.server_seconds = 0.0

    def start_phase(self, phase: Phase) -> None:
        """Begin counting ``phase``."""
        self.phase_bytes_up[phase] = self.phase_bytes_down[phase] = 0

    def send(self, phase: Phase, client: int, message: bytes, *, delivered: bool) -> None:
        """The server sends ``message`` to ``client``, who reads it if ``delivered``."""
        self.bytes_sent[SERVER_ID] += len(message)
        self.phase_bytes_down[phase] += len(message)
        if delivered:
            self.bytes_received[client] += len(message)

    def reply(self, server: Server, phase: Phase, client: int, reply: bytes) -> None:
        """``client``'s reply reaches the server, which receives it."""
        self.bytes_sent[client] += len(reply)
        self.bytes_received[SERVER_ID] += len(reply)
        self.phase_bytes_up[phase] += len(reply)
        tick = time.perf_counter()
        server.receive(reply)
        self.server_seconds += time.perf_counter() - tick

    def close_phase(self, server: Server, phase: Phase, started: float) -> dict[int, bytes]:
        """The server's messages for the next phase; a round that ends with
        :class:`ThresholdNotMet` says what it cost (``bytes_up``, ``bytes_down``)."""
        tick = time.perf_counter()
        try:
            outgoing = server.close_phase()
        except ThresholdNotMet as error:  # the round ends: say what it cost
            error.bytes_up = sum(n for party, n in self.bytes_sent.items() if party != SERVER_ID)
            error.bytes_down = self.bytes_sent[SERVER_ID]
            raise
        self.server_seconds += time.perf_counter() - tick
        self.phase_seconds[phase] = time.perf_counter() - started
        return outgoing

    def exchange(self, client: int, request: bytes, reply: bytes) -> None:
        """One request from the server and ``client``'s reply, outside the phases."""
        for party, size in ((SERVER_ID, len(request)), (client, len(reply))):
            self.bytes_sent[party] += size
            self.bytes_received[client if party == SERVER_ID else SERVER_ID] += size

    def result(
        self,
        server: Server,
        *,
        mask_seconds: float,
        keystream_bytes: int,
        noise_removal: dict[int, NoiseRemovalResponse],
    ) -> AggregationResult:
        """The finished round's sum with everything counted."""
        result = server.result
        return AggregationResult(
            total=result.total,
            contributors=result.contributors,
            dropped=result.dropped,
            config=server.config,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            client_seconds=self.client_seconds,
            server_seconds=self.server_seconds,
            phase_seconds=self.phase_seconds,
            phase_bytes_up=self.phase_bytes_up,
            phase_bytes_down=self.phase_bytes_down,
            mask_seconds=mask_seconds,
            keystream_bytes=keystream_bytes,
            noise_removal=noise_removal,
        )


def aggregate(
    inputs: Mapping[int, ArrayLike] | Sequence[ArrayLike],
    *,
    threshold: int | None = None,
    neighbours: int | None = None,
    ring_bits: int = 32,
    input_bound: int | None = None,
    dropouts: Mapping[Phase, Iterable[int]] | None = None,
    identities: bool = False,
    round_index: int = 0,
    policy: ClientPolicy | None = None,
    rng: RandomSource = system_random,
    progress: ProgressCallback | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    noise_removal: Mapping[int, RevealNoise] | None = None,
    contribution: Contribution | None = None,
) -> AggregationResult:
    """Run one secure-aggregation round with every party in this process.

    Args:
        inputs: integer vectors of equal length, by client id (a sequence gets ids 1..n).
        threshold: t; default from :func:`secagg.parameters.recommend_parameters`.
        neighbours: k; ``n - 1`` is the complete graph; default as for ``threshold``.
        ring_bits: b, the sum is taken modulo 2^b.
        input_bound: optional bound on each element's magnitude (signed), checked up front.
        dropouts: ``{phase: client ids}``; a client drops out *in* that phase, sending nothing
            from it on (``Phase.MASKED_INPUT``: it shared its keys but never sends its input).
        identities: give every client an Ed25519 identity: signed keys, signed messages and the
            consistency check.
        round_index: recorded in the session and bound into every message.
        policy: the floors every client holds (:class:`~secagg.policy.ClientPolicy`; secure
            defaults when omitted: at least 5 clients, 2t > k + 1 + c, 32- or 64-bit rings).
        rng: randomness for keys, seeds and shares (``os.urandom``; seed only for replay).
        progress: optional callback ``progress(phase, done, total)``.
        chunk_bytes: working-set size of mask expansion.
        noise_removal: with identities, each client's ``reveal(m)`` callback: after the round
            the server forwards the consistency signatures and each client answers with the
            seeds of removable noise its certified honest floor m allows
            (:meth:`secagg.Client.answer_noise_removal`).
        contribution: how the inputs were encoded (:mod:`secagg.contribution`), bound into the
            session like every other parameter.

    Returns:
        The sum and what the round cost.

    Raises:
        ThresholdNotMet: too many dropouts for the threshold (with the bytes sent so far in
            ``bytes_up`` and ``bytes_down``).
        ConfigurationError: invalid parameters.
        PolicyViolation: the parameters are below the clients' policy.

    Example:
        >>> import numpy as np
        >>> result = aggregate([np.full(4, i) for i in range(5)])
        >>> result.total.tolist()
        [10, 10, 10, 10]
    """
    # a Mapping is read lazily, one client at a time, so inputs may be generated on demand
    by_id = inputs if isinstance(inputs, Mapping) else dict(enumerate(inputs, start=1))
    ids = sorted(by_id)
    length = len(np.asarray(by_id[ids[0]])) if ids else 0
    signing_keys = {u: SigningKey.generate(rng) for u in ids} if identities else {}
    config = SecAggConfig.create(
        ids,
        length,
        threshold=threshold,
        neighbours=neighbours,
        ring_bits=ring_bits,
        input_bound=input_bound,
        identities={u: key.public_bytes for u, key in signing_keys.items()} or None,
        contribution=contribution,
        round_index=round_index,
        random_bytes=rng,
    )
    drop_phase = _dropout_phases(dropouts, ids, identities)
    traffic = RoundTraffic(ids)
    server = Server(config, random_bytes=rng, chunk_bytes=chunk_bytes)
    clients = {
        u: Client(
            config,
            u,
            signing_key=signing_keys.get(u),
            policy=policy,
            random_bytes=rng,
            chunk_bytes=chunk_bytes,
        )
        for u in ids
    }
    aborted: set[int] = set()
    phases = [p for p in Phase if identities or p is not Phase.CONSISTENCY_CHECK]
    outgoing: dict[int, bytes] = dict.fromkeys(ids, b"")

    for index, phase in enumerate(phases):
        started = time.perf_counter()
        recipients = sorted(outgoing)
        total_steps = len(recipients) + 1
        traffic.start_phase(phase)
        if progress:
            progress(phase, 0, total_steps)
        for step, u in enumerate(recipients, start=1):
            message = outgoing[u]
            dropped_at = drop_phase.get(u)
            delivered = dropped_at is None or phases.index(dropped_at) > index
            traffic.send(phase, u, message, delivered=delivered)
            if not delivered:
                continue
            tick = time.perf_counter()
            try:
                if phase is Phase.ADVERTISE_KEYS:
                    reply = clients[u].advertise_keys()
                else:
                    if phase is Phase.MASKED_INPUT:  # given late: only one input in memory
                        clients[u].set_input(by_id[u])
                    reply = clients[u].receive(message)
            except ThresholdNotMet:
                aborted.add(u)
                continue
            finally:
                traffic.client_seconds[u] += time.perf_counter() - tick
            traffic.reply(server, phase, u, reply)
            if progress:
                progress(phase, step, total_steps)
        outgoing = traffic.close_phase(server, phase, started)
        if progress:
            progress(phase, total_steps, total_steps)

    removals: dict[int, NoiseRemovalResponse] = {}
    if noise_removal is not None and identities:
        for u, request in server.noise_removal_requests().items():
            reply = clients[u].answer_noise_removal(request, noise_removal[u])
            removals[u] = server.receive_noise_removal(reply)
            traffic.exchange(u, request, reply)
    return traffic.result(
        server,
        mask_seconds=sum(c.stats.mask_seconds for c in clients.values()),
        keystream_bytes=sum(c.stats.keystream_bytes for c in clients.values()),
        noise_removal=removals,
    )
