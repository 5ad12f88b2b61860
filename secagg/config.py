"""The parameters of one secure-aggregation session, validated once and frozen."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import numpy as np

from secagg.contribution import Contribution
from secagg.errors import ConfigurationError
from secagg.hazmat.shamir import PRIME
from secagg.hazmat.signing import PUBLIC_KEY_BYTES
from secagg.parameters import recommend_parameters, recommend_threshold
from secagg.randomness import RandomSource, system_random

__all__ = ["MAX_CLIENT_ID", "PROTOCOL_VERSION", "SESSION_ID_BYTES", "SecAggConfig"]

PROTOCOL_VERSION = 3  # 3: the contribution contract in the configuration (and so the digest)
SESSION_ID_BYTES = 32
MAX_CLIENT_ID = PRIME - 1
_MAGIC = b"PAGC"
_HEADER = struct.Struct(">4sB32sIBIIIIBQB")
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class SecAggConfig:
    """Everything the parties of one round must agree on.

    Build it with :meth:`create` (fresh session id, recommended defaults) rather than directly.

    Attributes:
        session_id: 32 random bytes, fresh for every round.
        round_index: the training round this session belongs to.
        client_ids: the cohort, sorted; ids are Shamir x-coordinates, so 1 <= id <= 2^31 - 2.
        vector_length: d, the number of ring elements each client contributes.
        threshold: t, shares needed to reconstruct a secret and the minimum number of clients in
            every phase; the server never releases a sum of fewer than t inputs.
        neighbours: k, each client's number of neighbours; ``n - 1`` is the complete graph of
            classic SecAgg, anything smaller a random k-regular SecAgg+ graph.
        ring_bits: b, the sum is computed in Z_{2^b} (1 <= b <= 64).
        input_bound: if set, every input element, read as a signed b-bit integer, lies in
            [-input_bound, input_bound]; the ring must hold the sum of n such values.
        identities: optional long-term Ed25519 public keys, one per client. With identities the
            key advertisements, every client message and the consistency check are signed.
        contribution: what every client adds to the sum (encoding, its parameters, weight and
            staleness rules, model version; :mod:`secagg.contribution`). Part of the digest, so
            clients told different contributions derive different masks. None only for callers
            that encode their ring vectors themselves (:func:`secagg.aggregate` on raw vectors).
    """

    session_id: bytes
    round_index: int
    client_ids: tuple[int, ...]
    vector_length: int
    threshold: int
    neighbours: int
    ring_bits: int = 32
    input_bound: int | None = None
    identities: Mapping[int, bytes] | None = field(default=None, compare=True)
    contribution: Contribution | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise ConfigurationError(
                f"session_id must be {SESSION_ID_BYTES} random bytes; use SecAggConfig.create()"
            )
        if not 0 <= self.round_index < 2**32:
            raise ConfigurationError(f"round_index must lie in [0, 2^32), got {self.round_index}")
        ids = tuple(sorted(int(i) for i in self.client_ids))
        if len(ids) < 2:
            raise ConfigurationError(f"a session needs at least 2 clients, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ConfigurationError("client_ids contains duplicates; give each client one id")
        if ids[0] < 1 or ids[-1] > MAX_CLIENT_ID:
            raise ConfigurationError(f"client ids must lie in [1, {MAX_CLIENT_ID}]")
        object.__setattr__(self, "client_ids", ids)
        n = len(ids)
        if not 1 <= self.vector_length < 2**32:
            raise ConfigurationError(
                f"vector_length must lie in [1, 2^32), got {self.vector_length}"
            )
        if not 1 <= self.ring_bits <= 64:
            raise ConfigurationError(
                f"ring_bits must lie in [1, 64], got {self.ring_bits}; use 32 or 64"
            )
        self._check_graph(n)
        self._check_bound(n)
        self._check_identities(ids)
        if self.contribution is not None and not isinstance(self.contribution, Contribution):
            raise ConfigurationError(
                f"contribution must be a secagg.contribution.Contribution, "
                f"got {type(self.contribution).__name__}"
            )

    def _check_graph(self, n: int) -> None:
        k, t = self.neighbours, self.threshold
        if not 1 <= k <= n - 1:
            raise ConfigurationError(
                f"neighbours must lie in [1, {n - 1}] for {n} clients, got {k}; "
                f"use {n - 1} for the complete graph"
            )
        if k < n - 1 and k % 2 and n % 2:
            raise ConfigurationError(
                f"a {k}-regular graph on {n} clients does not exist (k and n both odd); "
                f"use neighbours={k + 1 if k + 1 < n - 1 else n - 1} or {k - 1}"
            )
        if not 1 <= t <= k + 1:
            raise ConfigurationError(
                f"threshold must lie in [1, {k + 1}] (each secret has {k + 1} holders: "
                f"{k} neighbours and its owner), got {t}; lower the threshold or raise neighbours"
            )

    def _check_bound(self, n: int) -> None:
        if self.input_bound is None:
            return
        if self.input_bound < 0:
            raise ConfigurationError(f"input_bound must be >= 0, got {self.input_bound}")
        limit = 2 ** (self.ring_bits - 1) - 1
        if n * self.input_bound > limit:
            needed = (2 * n * self.input_bound).bit_length() + 1
            raise ConfigurationError(
                f"a {self.ring_bits}-bit ring cannot hold the sum of {n} inputs bounded by "
                f"{self.input_bound} (it could wrap around); use ring_bits >= {min(needed, 64)}"
                f" or an input_bound <= {limit // n}"
            )

    def _check_identities(self, ids: tuple[int, ...]) -> None:
        if self.identities is None:
            return
        keys = {int(k): bytes(v) for k, v in self.identities.items()}
        if set(keys) != set(ids):
            raise ConfigurationError(
                "identities must give exactly one Ed25519 public key per client id "
                f"(missing: {sorted(set(ids) - set(keys))[:5]}, extra: {sorted(set(keys) - set(ids))[:5]})"
            )
        if any(len(v) != PUBLIC_KEY_BYTES for v in keys.values()):
            raise ConfigurationError(f"identity public keys must be {PUBLIC_KEY_BYTES} raw bytes")
        object.__setattr__(self, "identities", MappingProxyType(dict(sorted(keys.items()))))

    @classmethod
    def create(
        cls,
        client_ids: Iterable[int],
        vector_length: int,
        *,
        threshold: int | None = None,
        neighbours: int | None = None,
        ring_bits: int = 32,
        input_bound: int | None = None,
        identities: Mapping[int, bytes] | None = None,
        contribution: Contribution | None = None,
        round_index: int = 0,
        session_id: bytes | None = None,
        dropout_rate: float = 0.1,
        corrupt_fraction: float = 0.05,
        random_bytes: RandomSource = system_random,
    ) -> SecAggConfig:
        """A configuration with a fresh session id and recommended threshold and neighbours.

        Unset ``threshold`` and ``neighbours`` come from
        :func:`secagg.parameters.recommend_parameters` for the expected ``dropout_rate`` and
        ``corrupt_fraction``.

        Example:
            >>> config = SecAggConfig.create(range(1, 11), vector_length=1000)
            >>> (config.threshold, config.neighbours)
            (6, 9)
        """
        ids = tuple(client_ids)
        if len(ids) < 2:
            raise ConfigurationError(f"a session needs at least 2 clients, got {len(ids)}")
        if neighbours is None:
            choice = recommend_parameters(
                len(ids), dropout_rate=dropout_rate, corrupt_fraction=corrupt_fraction
            )
            if threshold is None:
                neighbours, threshold = choice.neighbours, choice.threshold
            else:  # widen the graph to hold t shares, up to the complete graph
                neighbours = min(max(choice.neighbours, threshold - 1), len(ids) - 1)
        elif threshold is None and 1 <= neighbours < len(ids):
            threshold = recommend_threshold(len(ids), neighbours, corrupt_fraction=corrupt_fraction)
        return cls(
            session_id=random_bytes(SESSION_ID_BYTES) if session_id is None else session_id,
            round_index=round_index,
            client_ids=ids,
            vector_length=vector_length,
            threshold=threshold,
            neighbours=neighbours,
            ring_bits=ring_bits,
            input_bound=input_bound,
            identities=identities,
            contribution=contribution,
        )

    @property
    def num_clients(self) -> int:
        """n, the size of the cohort."""
        return len(self.client_ids)

    @property
    def complete_graph(self) -> bool:
        """Whether every client is a neighbour of every other (classic SecAgg)."""
        return self.neighbours == self.num_clients - 1

    @property
    def word_dtype(self) -> np.dtype:
        """The numpy word type that holds one ring element."""
        return np.dtype(np.uint32 if self.ring_bits <= 32 else np.uint64)

    @property
    def ring_mask(self) -> int:
        """2^b - 1."""
        return (1 << self.ring_bits) - 1

    def encode(self) -> bytes:
        """Canonical bytes of the configuration (shipped to clients, hashed into the digest)."""
        header = _HEADER.pack(
            _MAGIC,
            PROTOCOL_VERSION,
            self.session_id,
            self.round_index,
            self.ring_bits,
            self.num_clients,
            self.threshold,
            self.neighbours,
            self.vector_length,
            self.input_bound is not None,
            self.input_bound or 0,
            self.identities is not None,
        )
        ids = struct.pack(f">{self.num_clients}I", *self.client_ids)
        keys = b"".join(self.identities.values()) if self.identities is not None else b""
        terms = b"" if self.contribution is None else self.contribution.encode()
        return header + ids + keys + _LENGTH.pack(len(terms)) + terms

    @classmethod
    def decode(cls, data: bytes) -> SecAggConfig:
        """Parse :meth:`encode` output.

        Raises:
            ConfigurationError: the bytes are not a valid configuration.
        """
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ConfigurationError("configuration bytes are truncated")
        (
            magic,
            version,
            session_id,
            round_index,
            ring_bits,
            n,
            threshold,
            neighbours,
            length,
            has_bound,
            bound,
            has_ids,
        ) = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ConfigurationError("not a privagg secure-aggregation configuration")
        if version != PROTOCOL_VERSION:
            raise ConfigurationError(
                f"configuration uses protocol version {version}; this side speaks {PROTOCOL_VERSION}"
            )
        keys_end = _HEADER.size + 4 * n + (PUBLIC_KEY_BYTES * n if has_ids else 0)
        if len(data) < keys_end + _LENGTH.size or has_bound > 1 or has_ids > 1:
            raise ConfigurationError("configuration bytes have the wrong length or flags")
        (terms_length,) = _LENGTH.unpack_from(data, keys_end)
        if len(data) != keys_end + _LENGTH.size + terms_length:
            raise ConfigurationError("configuration bytes have the wrong length or flags")
        terms = data[keys_end + _LENGTH.size :]
        ids = struct.unpack_from(f">{n}I", data, _HEADER.size)
        if list(ids) != sorted(set(ids)):
            raise ConfigurationError("configuration client ids are not sorted and unique")
        identities = None
        if has_ids:
            offset = _HEADER.size + 4 * n
            identities = {
                i: data[offset + PUBLIC_KEY_BYTES * j : offset + PUBLIC_KEY_BYTES * (j + 1)]
                for j, i in enumerate(ids)
            }
        return cls(
            session_id=session_id,
            round_index=round_index,
            client_ids=ids,
            vector_length=length,
            threshold=threshold,
            neighbours=neighbours,
            ring_bits=ring_bits,
            input_bound=bound if has_bound else None,
            identities=identities,
            contribution=Contribution.decode(terms) if terms else None,
        )

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`encode`: binds every key, signature and ciphertext to this session."""
        return hashlib.sha256(b"privagg/secagg/v1/config\x00" + self.encode()).digest()
