"""A worker's share of the clients: their training, their encoding, and their side of the
secure-aggregation protocol, driven by the commands of :mod:`fl.engines.pool.processes`.

Every command works client after client and reports each client as it finishes (the parent
shows progress from these reports and, if the process dies, knows which client it was on). The
clients' protocol objects live here for the length of one session: their keys, seeds and shares
never leave this process, and what crosses to the server is exactly the protocol's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import secagg
from dp.removable import NoiseSeeds, RemovableNoise
from fl.core.aggregation import ClientUpdate, Encoding, revealer
from fl.engines.local import ClientTask, LocalTrainer
from secagg.hazmat.signing import SigningKey
from secagg.randomness import system_random

__all__ = ["ClientShard", "Report"]

Report = Callable[[int, Any], None]
"""``report(client, item)``: one client's result, sent to the parent as soon as it is ready."""


class ClientShard:
    """The state a worker keeps between commands.

    Attributes:
        current: ``(round_index, client)`` of the work under way (for error reports).
    """

    def __init__(self) -> None:
        self.current: tuple[int | None, int | None] = (None, None)
        self._trainer: LocalTrainer | None = None
        self._round: int | None = None
        self._inputs: dict[int, np.ndarray] = {}
        self._ladder: RemovableNoise | None = None
        self._noise_seeds: dict[int, NoiseSeeds] = {}
        self._signing_keys: dict[int, SigningKey] = {}
        self._clients: dict[int, secagg.Client] = {}

    def setup(self, report: Report, trainer: LocalTrainer | None) -> int:
        """Keep a private copy of the run's trainer; returns this process's id.

        The copy matters: torch sends a model's parameters to another process as shared memory,
        so without it every worker (and the parent) would train the same parameters at once.
        """
        import copy
        import os

        self._trainer = copy.deepcopy(trainer)
        return os.getpid()

    def train(
        self,
        report: Report,
        round_index: int,
        starts: Mapping[int, np.ndarray],
        tasks: Sequence[ClientTask],
    ) -> None:
        """Train each client of ``tasks`` in turn from its start vector ``starts[task.start]``
        (as numpy: it crosses the pipe as bytes, not as shared memory); reports ``(vector,
        weight, seconds)``."""
        if self._trainer is None:
            raise RuntimeError("this worker has no trainer: the pool was started without one")
        vectors = {key: torch.from_numpy(vector) for key, vector in starts.items()}
        for task in tasks:
            self.current = (round_index, task.client)
            trained = self._trainer.train(round_index, task, vectors[task.start])
            report(task.client, (trained.update.vector, trained.update.weight, trained.seconds))
        self.current = (round_index, None)

    def encode(
        self,
        report: Report,
        round_index: int,
        encoding: Encoding,
        updates: Mapping[int, ClientUpdate],
        identities: bool,
    ) -> None:
        """Encode each client's update into ring words, kept here for its masked input (with
        exact noise, its secret ladder seeds too, until it answers noise removal), and draw its
        signing key when the session has identities; reports ``(input length, public key or
        None)``."""
        self.close_session(report)
        self._round = round_index
        self._ladder = encoding.ladder
        for client, update in updates.items():
            self.current = (round_index, client)
            encoded = encoding(client, update)
            self._inputs[client] = np.asarray(encoded.words)
            if encoded.seeds is not None:
                self._noise_seeds[client] = encoded.seeds
            public = None
            if identities:
                key = SigningKey.generate(system_random)
                self._signing_keys[client] = key
                public = key.public_bytes
            report(client, (len(self._inputs[client]), public))
        self.current = (round_index, None)

    def open_session(
        self, report: Report, config: bytes, policy: secagg.ClientPolicy, chunk_bytes: int
    ) -> None:
        """Create the protocol clients of this shard for the session ``config`` (its canonical
        bytes)."""
        session = secagg.SecAggConfig.decode(config)
        for client in self._inputs:
            self.current = (self._round, client)
            self._clients[client] = secagg.Client(
                session,
                client,
                signing_key=self._signing_keys.get(client),
                policy=policy,
                random_bytes=system_random,
                chunk_bytes=chunk_bytes,
            )
        self.current = (self._round, None)

    def phase(self, report: Report, phase: secagg.Phase, messages: Mapping[int, bytes]) -> None:
        """Deliver the server's message of ``phase`` to each client; reports
        ``(reply or None, seconds)``, None for a client that stopped with too few peers left
        (:class:`secagg.ThresholdNotMet`), as :func:`secagg.aggregate` does."""
        for client in sorted(messages):
            self.current = (self._round, client)
            protocol = self._clients[client]
            started = time.perf_counter()
            try:
                if phase is secagg.Phase.ADVERTISE_KEYS:
                    reply = protocol.advertise_keys()
                else:
                    if phase is secagg.Phase.MASKED_INPUT:
                        protocol.set_input(self._inputs.pop(client))
                    reply = protocol.receive(messages[client])
            except secagg.ThresholdNotMet:
                reply = None
            report(client, (reply, time.perf_counter() - started))
        self.current = (self._round, None)

    def remove_noise(self, report: Report, requests: Mapping[int, bytes]) -> None:
        """Each client answers the server's noise-removal request from its own seeds
        (:meth:`secagg.Client.answer_noise_removal`: it verifies the forwarded signatures
        over U3 and reveals only what its certified honest floor allows); reports the answer's
        bytes. A refused request raises, as in :func:`secagg.aggregate`."""
        if self._ladder is None:
            raise RuntimeError("noise removal without a ladder: the round drew no removable noise")
        for client in sorted(requests):
            self.current = (self._round, client)
            reveal = revealer(self._ladder, self._noise_seeds[client])
            reply = self._clients[client].answer_noise_removal(requests[client], reveal)
            report(client, reply)
        self.current = (self._round, None)

    def close_session(self, report: Report) -> tuple[float, int]:
        """Forget the session's clients, keys, inputs and noise seeds; returns the clients'
        mask-expansion seconds and keystream bytes, summed."""
        seconds = sum(c.stats.mask_seconds for c in self._clients.values())
        keystream = sum(c.stats.keystream_bytes for c in self._clients.values())
        self._clients, self._inputs, self._signing_keys = {}, {}, {}
        self._ladder, self._noise_seeds = None, {}
        return seconds, keystream
