"""One secure-aggregation round with the clients' side in the worker processes.

The same round as :func:`secagg.aggregate`, phase by phase and byte for byte: the server (this
process) sends each phase's messages, every live client answers from the worker that holds it,
and the server receives the replies in client order. Each client's encoding (rounding, DP
noise), key agreements, share encryption and mask expansion run in its worker, in parallel with
the other workers'; the server's work stays here. The sum, the contributors and the traffic are
those of the in-process round for the same inputs and dropouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import secagg
from fl.core.aggregation import ClientUpdate, Encoding
from fl.engines.pool.processes import WorkerPool
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES
from secagg.randomness import system_random
from secagg.simulate import RoundTraffic

__all__ = ["PooledProtocol"]


def _dropout_phases(
    dropouts: Mapping[secagg.Phase, Iterable[int]] | None, ids: list[int], identities: bool
) -> dict[int, secagg.Phase]:
    """``{client: phase}`` from ``{phase: clients}``, checked as :func:`secagg.aggregate` does."""
    when: dict[int, secagg.Phase] = {}
    members = set(ids)
    for phase, clients in (dropouts or {}).items():
        phase = secagg.Phase(phase)
        if phase is secagg.Phase.CONSISTENCY_CHECK and not identities:
            raise ValueError("the consistency-check phase only exists with identities=True")
        for client in clients:
            if client not in members:
                raise ValueError(f"dropout client {client} is not in the cohort")
            if client in when:
                raise ValueError(f"client {client} is set to drop out in two phases")
            when[client] = phase
    return when


@dataclass(eq=False)
class PooledProtocol:
    """A :data:`fl.core.aggregation.ProtocolRunner` whose clients live in ``pool``'s workers.

    Clients are dealt to the workers in turn (by sorted id): in the protocol every client does
    about the same work.
    """

    pool: WorkerPool

    def __call__(
        self,
        updates: Mapping[int, ClientUpdate],
        encoding: Encoding,
        *,
        threshold: int | None = None,
        neighbours: int | None = None,
        ring_bits: int = 32,
        input_bound: int | None = None,
        dropouts: Mapping[secagg.Phase, Iterable[int]] | None = None,
        identities: bool = False,
        round_index: int = 0,
        policy: secagg.ClientPolicy | None = None,
        progress: secagg.ProgressCallback | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> secagg.AggregationResult:
        """Encode each update with ``encoding`` in its worker and run the round (arguments as
        for :func:`secagg.aggregate`; ``encoding`` must be picklable). With exact noise
        (``encoding.ladder`` set, identities on) each client keeps its ladder seeds in its
        worker and answers the server's noise-removal request there, as
        :func:`secagg.aggregate` has it answer with ``noise_removal``.

        Raises:
            secagg.ThresholdNotMet: too many dropouts for the threshold (with the bytes sent so
                far in ``bytes_up`` and ``bytes_down``, as :func:`secagg.aggregate` sets them).
            secagg.PolicyViolation: the parameters are below the clients' policy.
            secagg.ConfigurationError: invalid parameters.
            WorkerError: a client's work raised something else, or a worker stopped.
        """
        ids = sorted(updates)
        workers = self.pool.size
        shares = [ids[i::workers] for i in range(workers)]
        drop_phase = _dropout_phases(dropouts, ids, identities)
        lengths: dict[int, int] = {}
        public_keys: dict[int, bytes] = {}

        def encoded(client: int, item: tuple[int, bytes | None]) -> None:
            lengths[client] = item[0]
            if item[1] is not None:
                public_keys[client] = item[1]

        self._call(
            "encode",
            [
                (round_index, encoding, {u: updates[u] for u in share}, identities)
                for share in shares
            ],
            shares,
            round_index,
            encoded,
        )
        try:
            return self._run(
                ids=ids,
                shares=shares,
                length=lengths[ids[0]] if ids else 0,
                identities=public_keys or None,
                drop_phase=drop_phase,
                remove_noise=encoding.ladder is not None and identities,
                policy=policy,
                progress=progress,
                chunk_bytes=chunk_bytes,
                round_index=round_index,
                session=dict(
                    threshold=threshold,
                    neighbours=neighbours,
                    ring_bits=ring_bits,
                    input_bound=input_bound,
                    contribution=encoding.contribution,
                ),
            )
        except BaseException:
            if self.pool.healthy:  # free the round's clients now rather than at the next round
                self._call("close_session", [()] * len(shares), shares, round_index)
            raise

    def _call(
        self,
        command: str,
        args: list[tuple],
        shares: list[list[int]],
        round_index: int,
        on_item: Callable[[int, tuple], None] | None = None,
    ) -> list:
        return self.pool.call(
            command,
            [a if share else None for a, share in zip(args, shares, strict=True)],
            clients=shares,
            round_index=round_index,
            on_item=on_item,
        )

    def _run(
        self,
        *,
        ids: list[int],
        shares: list[list[int]],
        length: int,
        identities: dict[int, bytes] | None,
        drop_phase: dict[int, secagg.Phase],
        remove_noise: bool,
        policy: secagg.ClientPolicy | None,
        progress: secagg.ProgressCallback | None,
        chunk_bytes: int,
        round_index: int,
        session: dict,
    ) -> secagg.AggregationResult:
        """The phases, as :func:`secagg.aggregate` runs them, with the clients in the pool."""
        config = secagg.SecAggConfig.create(
            ids,
            length,
            identities=identities,
            round_index=round_index,
            random_bytes=system_random,
            **session,
        )
        policy = secagg.ClientPolicy() if policy is None else policy
        self._call(
            "open_session",
            [(config.encode(), policy, chunk_bytes)] * len(shares),
            shares,
            round_index,
        )
        owner = {u: index for index, share in enumerate(shares) for u in share}
        with_identities = identities is not None
        traffic = RoundTraffic(ids)
        server = secagg.Server(config, random_bytes=system_random, chunk_bytes=chunk_bytes)
        phases = [
            p for p in secagg.Phase if with_identities or p is not secagg.Phase.CONSISTENCY_CHECK
        ]
        outgoing: dict[int, bytes] = dict.fromkeys(ids, b"")
        for index, phase in enumerate(phases):
            started = time.perf_counter()
            recipients = sorted(outgoing)
            total_steps = len(recipients) + 1
            traffic.start_phase(phase)
            if progress:
                progress(phase, 0, total_steps)
            delivered: list[dict[int, bytes]] = [{} for _ in shares]
            for u in recipients:
                message = outgoing[u]
                dropped_at = drop_phase.get(u)
                reaches = dropped_at is None or phases.index(dropped_at) > index
                traffic.send(phase, u, message, delivered=reaches)
                if reaches:
                    delivered[owner[u]][u] = message
            replies: dict[int, tuple[bytes | None, float]] = {}
            self.pool.call(
                "phase",
                [(phase, messages) if messages else None for messages in delivered],
                clients=[sorted(messages) for messages in delivered],
                round_index=round_index,
                on_item=replies.__setitem__,
            )
            for step, u in enumerate(recipients, start=1):
                if u not in replies:
                    continue  # dropped out in or before this phase
                reply, seconds = replies[u]
                traffic.client_seconds[u] += seconds
                if reply is None:
                    continue  # stopped: too few peers left
                traffic.reply(server, phase, u, reply)
                if progress:
                    progress(phase, step, total_steps)
            outgoing = traffic.close_phase(server, phase, started)
            if progress:
                progress(phase, total_steps, total_steps)
        removals: dict[int, secagg.messages.NoiseRemovalResponse] = {}
        if remove_noise:
            requests = server.noise_removal_requests()
            answers: dict[int, bytes] = {}
            asked: list[dict[int, bytes]] = [{} for _ in shares]
            for u, request in requests.items():
                asked[owner[u]][u] = request
            self.pool.call(
                "remove_noise",
                [(requests_of,) if requests_of else None for requests_of in asked],
                clients=[sorted(requests_of) for requests_of in asked],
                round_index=round_index,
                on_item=answers.__setitem__,
            )
            for u, request in requests.items():  # in client order, as secagg.aggregate
                reply = answers[u]
                removals[u] = server.receive_noise_removal(reply)
                traffic.exchange(u, request, reply)
        stats = self._call("close_session", [()] * len(shares), shares, round_index)
        return traffic.result(
            server,
            mask_seconds=sum(s[0] for s in stats if s is not None),
            keystream_bytes=sum(s[1] for s in stats if s is not None),
            noise_removal=removals,
        )
