"""The parameters of one multi-step session and of one step within it, validated and frozen.

A *session* fixes who its members are, their agreement keys (agreed once, :mod:`.member`), the
ring and the threshold rule. A *step* is one secure sum inside the session: its index, an attempt
counter, the contributors (all members for synchronous SGD, a buffer of K for asynchronous SGD)
and the vector length. Every per-step secret is derived from the *step digest*, which binds the
session digest and all of these, so no two steps (or two attempts of one step, or two buffers with
different contributors) ever share a mask.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np

from secagg.config import MAX_CLIENT_ID, SESSION_ID_BYTES
from secagg.errors import ConfigurationError
from secagg.hazmat.agreement import KEY_BYTES
from secagg.parameters import recommend_threshold

__all__ = ["MAX_STEP", "PARAMETERS_BYTES", "SessionConfig", "StepContext", "step_threshold"]

MAX_STEP = 2**32 - 1
PARAMETERS_BYTES = 32
_SESSION_MAGIC = b"privagg/multistep/session\x00"
_STEP_MAGIC = b"privagg/multistep/step\x00"


def step_threshold(contributors: int, *, corrupt_fraction: float) -> int:
    """t for a step summing ``contributors`` vectors on the complete graph.

    The rule of :func:`secagg.parameters.recommend_threshold` with k = m - 1 neighbours:
    ``t = floor((m + c) / 2) + 1`` with ``c = ceil(corrupt_fraction (m - 1))``, capped at m. It is
    both the Shamir threshold of the step's self-mask seeds and the fewest live holders a missing
    seed needs.
    """
    if contributors < 2:
        raise ConfigurationError(f"a step needs at least 2 contributors, got {contributors}")
    return min(
        contributors,
        recommend_threshold(contributors, contributors - 1, corrupt_fraction=corrupt_fraction),
    )


@dataclass(frozen=True)
class SessionConfig:
    """What the members of one session agreed on (built by :meth:`SessionMember.join`).

    Attributes:
        session_id: 32 bytes agreed before the keys are advertised (fresh for every session).
        members: the member ids, sorted (each >= 1; the distributed engine uses rank + 1).
        agreement_keys: each member's X25519 public key for this session.
        ring_bits: the sum is computed in Z_{2^b}, b in {32, 64}.
        corrupt_fraction: the collusion assumption that sets each step's threshold
            (:func:`step_threshold`).
        parameters: 32 bytes the application binds into the session (its encoding: clip,
            precision); members whose parameters differ never agree on a key.
    """

    session_id: bytes
    members: tuple[int, ...]
    agreement_keys: Mapping[int, bytes]
    ring_bits: int = 32
    corrupt_fraction: float = 0.05
    parameters: bytes = bytes(PARAMETERS_BYTES)

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise ConfigurationError(f"session_id must be {SESSION_ID_BYTES} bytes")
        members = tuple(sorted(int(m) for m in self.members))
        if len(members) < 2 or len(set(members)) != len(members):
            raise ConfigurationError(f"a session needs at least 2 distinct members, got {members}")
        if members[0] < 1 or members[-1] > MAX_CLIENT_ID:
            raise ConfigurationError(f"member ids must lie in [1, {MAX_CLIENT_ID}]")
        object.__setattr__(self, "members", members)
        keys = {int(k): bytes(v) for k, v in self.agreement_keys.items()}
        if set(keys) != set(members) or any(len(v) != KEY_BYTES for v in keys.values()):
            raise ConfigurationError("agreement_keys must hold one 32-byte key per member")
        if len(set(keys.values())) != len(keys):
            raise ConfigurationError("two members advertised the same agreement key")
        object.__setattr__(self, "agreement_keys", MappingProxyType(dict(sorted(keys.items()))))
        if self.ring_bits not in (32, 64):
            raise ConfigurationError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not 0.0 <= self.corrupt_fraction < 0.5:
            raise ConfigurationError(
                f"corrupt_fraction must lie in [0, 0.5), got {self.corrupt_fraction}"
            )
        if not isinstance(self.parameters, bytes) or len(self.parameters) != PARAMETERS_BYTES:
            raise ConfigurationError(f"parameters must be {PARAMETERS_BYTES} bytes")

    # -- the attributes ClientPolicy reads (the complete graph over the members) ----------------

    @property
    def num_clients(self) -> int:
        """n, the number of members."""
        return len(self.members)

    @property
    def client_ids(self) -> tuple[int, ...]:
        """The members (the name :class:`~secagg.policy.ClientPolicy` reads)."""
        return self.members

    @property
    def neighbours(self) -> int:
        """n - 1: every member masks with every other (complete graph)."""
        return len(self.members) - 1

    @property
    def threshold(self) -> int:
        """t of a step that sums every member (:func:`step_threshold`)."""
        return step_threshold(len(self.members), corrupt_fraction=self.corrupt_fraction)

    @property
    def identities(self) -> None:
        """Ed25519 identities are not used by multi-step sessions (SECURITY.md)."""
        return None

    @property
    def word_dtype(self) -> np.dtype:
        """The numpy word type of one ring element."""
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint64)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 over everything above: every step digest, and so every mask, binds it."""
        ids = struct.pack(f">I{len(self.members)}I", len(self.members), *self.members)
        keys = b"".join(self.agreement_keys.values())
        fraction = struct.pack(">d", self.corrupt_fraction)
        return hashlib.sha256(
            _SESSION_MAGIC
            + self.session_id
            + bytes([self.ring_bits])
            + fraction
            + self.parameters
            + ids
            + keys
        ).digest()


@dataclass(frozen=True)
class StepContext:
    """One secure sum within a session.

    Attributes:
        step: the step index (per session, each (step, attempt) is used once, in increasing
            order).
        attempt: 0 for the first try of a step; a step re-formed after a contributor was lost
            (asynchronous buffers) counts up.
        contributors: whose vectors this step sums (sorted member ids).
        length: d, the number of ring words each contributor sends.
    """

    step: int
    attempt: int
    contributors: tuple[int, ...]
    length: int

    def __post_init__(self) -> None:
        if not 0 <= self.step <= MAX_STEP or not 0 <= self.attempt <= 255:
            raise ConfigurationError(
                f"step must lie in [0, 2^32) and attempt in [0, 255], got {self.step}, "
                f"{self.attempt}"
            )
        contributors = tuple(sorted(int(c) for c in self.contributors))
        if len(contributors) < 2 or len(set(contributors)) != len(contributors):
            raise ConfigurationError(
                f"a step needs at least 2 distinct contributors, got {contributors}"
            )
        object.__setattr__(self, "contributors", contributors)
        if not 1 <= self.length < 2**40:
            raise ConfigurationError(f"length must lie in [1, 2^40), got {self.length}")

    @classmethod
    def every_member(cls, config: SessionConfig, step: int, length: int) -> StepContext:
        """The step of synchronous SGD: every member contributes, first attempt."""
        return cls(step=step, attempt=0, contributors=config.members, length=length)

    def check_in(self, config: SessionConfig) -> None:
        """Raise unless every contributor is a member of ``config``'s session.

        Raises:
            ConfigurationError: naming the strangers.
        """
        strangers = sorted(set(self.contributors) - set(config.members))
        if strangers:
            raise ConfigurationError(f"contributors {strangers[:5]} are not session members")

    def threshold(self, config: SessionConfig) -> int:
        """t of this step (:func:`step_threshold` for its number of contributors)."""
        return step_threshold(len(self.contributors), corrupt_fraction=config.corrupt_fraction)

    @property
    def key(self) -> tuple[int, int]:
        """(step, attempt): the order in which a member may take part in steps."""
        return (self.step, self.attempt)

    def digest(self, config: SessionConfig) -> bytes:
        """SHA-256 binding the session digest, the step, the attempt, the contributors, d."""
        ids = struct.pack(
            f">I{len(self.contributors)}I", len(self.contributors), *self.contributors
        )
        return hashlib.sha256(
            _STEP_MAGIC
            + config.digest
            + struct.pack(">IBQ", self.step, self.attempt, self.length)
            + ids
        ).digest()
