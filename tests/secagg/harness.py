"""A hand-driven round for protocol tests: every party in reach, every message inspectable."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from secagg import Client, ClientPolicy, DeterministicRandom, SecAggConfig, Server, messages
from secagg.hazmat.signing import SigningKey


class Round:
    """n clients and a server over one session, stepped phase by phase by the test.

    The clients hold ``policy`` (default: :meth:`ClientPolicy.permissive`, so that toy cohorts
    exercise the protocol's mechanics; the attack tests use the secure defaults at realistic
    sizes).
    """

    def __init__(
        self,
        n: int,
        *,
        threshold: int | None = None,
        neighbours: int | None = None,
        identities: bool = False,
        length: int = 6,
        ring_bits: int = 32,
        seed: int = 0,
        round_index: int = 0,
        policy: ClientPolicy | None = None,
    ) -> None:
        rng = DeterministicRandom(seed)
        self.policy = ClientPolicy.permissive() if policy is None else policy
        self.signing_keys = (
            {u: SigningKey.generate(rng) for u in range(1, n + 1)} if identities else {}
        )
        self.config = SecAggConfig.create(
            range(1, n + 1),
            length,
            threshold=threshold,
            neighbours=neighbours,
            ring_bits=ring_bits,
            identities={u: k.public_bytes for u, k in self.signing_keys.items()} or None,
            round_index=round_index,
            random_bytes=rng,
        )
        self.server = Server(self.config, random_bytes=rng)
        self.clients = {
            u: Client(
                self.config,
                u,
                signing_key=self.signing_keys.get(u),
                policy=self.policy,
                random_bytes=rng,
            )
            for u in self.config.client_ids
        }
        self.inputs = {
            u: (np.arange(length, dtype=np.int64) + 1) * u for u in self.config.client_ids
        }
        for u, client in self.clients.items():
            client.set_input(self.inputs[u])

    def advertise(self, skip: Iterable[int] = ()) -> dict[int, bytes]:
        """Phase 0 for every client not in ``skip``; returns the server's rosters."""
        for u, client in self.clients.items():
            if u not in skip:
                self.server.receive(client.advertise_keys())
        return self.server.close_phase()

    def step(self, outgoing: dict[int, bytes], skip: Iterable[int] = ()) -> dict[int, bytes]:
        """Deliver the server's messages, return replies to it, close the phase."""
        for u, message in outgoing.items():
            if u not in skip:
                self.server.receive(self.clients[u].receive(message))
        return self.server.close_phase()

    def until_unmask(self, skip: Iterable[int] = ()) -> dict[int, bytes]:
        """Run up to the unmask requests (through the consistency check with identities)."""
        outgoing = self.step(self.step(self.advertise(skip), skip), skip)
        if self.config.identities is not None:
            outgoing = self.step(outgoing, skip)
        return outgoing

    def expected_sum(self, contributors: Iterable[int]) -> np.ndarray:
        """The plaintext sum of the contributors' inputs in the ring."""
        total = sum(self.inputs[u] for u in contributors)
        return (np.asarray(total).astype(np.uint64) & np.uint64(self.config.ring_mask)).astype(
            self.config.word_dtype
        )

    def from_server(self, payload: messages.Payload, **header: object) -> bytes:
        """Encode a (possibly forged) server message for this session."""
        fields = dict(
            session_id=self.config.session_id, round_index=self.config.round_index, sender=0
        )
        fields.update(header)
        return messages.encode(payload, **fields)

    def from_client(self, payload: messages.Payload, sender: int, **header: object) -> bytes:
        """Encode a (possibly forged) client message, signed when the session has identities."""
        fields = dict(
            session_id=self.config.session_id,
            round_index=self.config.round_index,
            sender=sender,
            signing_key=self.signing_keys.get(sender),
        )
        fields.update(header)
        return messages.encode(payload, **fields)
