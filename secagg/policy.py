"""What a client accepts: the floors it holds against the parameters a server proposes.

The server proposes a session (cohort, threshold t, neighbourhood size k, ring, encoding, DP
noise); the client decides whether that is safe *for the client* and refuses, with
:class:`~secagg.errors.PolicyViolation`, anything below its :class:`ClientPolicy`. A server that
proposes ``t = 1``, a cohort of two, or no DP noise therefore gets nothing from an honest client.

The rules (SECURITY.md, "Conditions"):

* **cohort**: ``n >= min_clients``;
* **threshold**: ``2t > k + 1 + c``, where c bounds the corrupt members of one closed
  neighbourhood (:func:`secagg.parameters.corrupt_neighbours` for the assumed
  ``corrupt_fraction`` and ``security_bits``). This is what makes the per-neighbourhood
  consistency check sound: two stories about one client would need ``2t - c`` signers among its
  ``k + 1`` closed neighbourhood;
* **neighbourhood**: a client sends its masked input only when at least
  ``max(t - 1, ceil((1 - max_neighbour_loss) k))`` neighbours completed each key phase, so the
  server cannot shrink a neighbourhood to the bare threshold unseen;
* **ring and encoding**: only the listed ring sizes and encodings; with
  ``min_noise_multiplier > 0`` the client requires client-level DP noise at least that large;
* **identities**: with ``require_identities`` a session without Ed25519 identities (and so
  without the consistency check that defeats a lying server) is refused;
* **contribution** (:meth:`ClientPolicy.check_contribution`): the session's
  :class:`~secagg.contribution.Contribution` must carry every term the client pinned, with the
  same value, and every ranged term inside its range; a fixed-point encoding must resolve its
  clip range in at least ``2^min_resolution_bits`` steps; a staleness above ``max_staleness``
  is refused (:meth:`ClientPolicy.check_staleness`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from secagg.config import SecAggConfig
from secagg.contribution import Contribution, Encoding, Term
from secagg.errors import ConfigurationError, PolicyViolation
from secagg.parameters import corrupt_neighbours

__all__ = ["ClientPolicy", "Encoding"]


@dataclass(frozen=True)
class ClientPolicy:
    """The floors a client holds; the server's proposal must meet every one of them.

    Attributes:
        min_clients: the smallest cohort the client joins.
        corrupt_fraction: the fraction of clients assumed to collude with the server.
        security_bits: the corrupt-neighbour bound may fail with probability 2^-bits.
        max_neighbour_loss: the largest fraction of its k neighbours that may fail to complete a
            key phase before the client stops (1: down to the t - 1 the protocol needs).
        allowed_ring_bits: ring sizes the client accepts.
        allowed_encodings: encodings the client accepts.
        min_noise_multiplier: client-level DP noise floor (0: DP not required).
        require_identities: refuse sessions without Ed25519 identities.
        max_staleness: the largest staleness tau (server versions between the model a client
            trained on and the one the session aggregates for) it contributes at; 63 keeps the
            FedBuff weight 1 / sqrt(1 + tau) at 1/8 or more.
        min_resolution_bits: a fixed-point encoding must resolve its clip range in at least
            2^bits steps (``clip * 2^precision_bits >= 2^bits``), so no server can shrink a
            client's contribution to nothing by its clip.
        pinned_terms: contribution terms the client requires exactly (e.g. ``{"clip": 4.0}``).
        term_ranges: contribution terms the client requires inside ``[low, high]``.

    Example:
        >>> from secagg import SecAggConfig
        >>> config = SecAggConfig.create(range(1, 11), vector_length=4, threshold=2)
        >>> ClientPolicy().check_session(config)
        Traceback (most recent call last):
        ...
        secagg.errors.PolicyViolation: server: threshold 2 is below this client's floor ...
    """

    min_clients: int = 5
    corrupt_fraction: float = 0.05
    security_bits: int = 40
    max_neighbour_loss: float = 1 / 3
    allowed_ring_bits: frozenset[int] = field(default_factory=lambda: frozenset({32, 64}))
    allowed_encodings: frozenset[Encoding] = field(default_factory=lambda: frozenset(Encoding))
    min_noise_multiplier: float = 0.0
    require_identities: bool = False
    max_staleness: int = 63
    min_resolution_bits: int = 8
    pinned_terms: Mapping[str, Term] = field(default_factory=dict)
    term_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _expect(self, "min_clients", int)
        _expect(self, "security_bits", int)
        _expect(self, "require_identities", bool)
        _expect(self, "max_staleness", int)
        _expect(self, "min_resolution_bits", int)
        if self.max_staleness < 0:
            raise ConfigurationError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if not 0 <= self.min_resolution_bits <= 52:
            raise ConfigurationError(
                f"min_resolution_bits must lie in [0, 52], got {self.min_resolution_bits}"
            )
        self._normalise_terms()
        for name in ("corrupt_fraction", "max_neighbour_loss", "min_noise_multiplier"):
            _expect(self, name, float)
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.min_clients < 2:
            raise ConfigurationError(f"min_clients must be >= 2, got {self.min_clients}")
        if not 0.0 <= self.corrupt_fraction < 0.5:
            raise ConfigurationError(
                f"corrupt_fraction must lie in [0, 0.5), got {self.corrupt_fraction}"
            )
        if not 0 < self.security_bits <= 128:
            raise ConfigurationError(
                f"security_bits must lie in [1, 128], got {self.security_bits}"
            )
        if not 0.0 <= self.max_neighbour_loss <= 1.0:
            raise ConfigurationError(
                f"max_neighbour_loss must lie in [0, 1], got {self.max_neighbour_loss}"
            )
        if not math.isfinite(self.min_noise_multiplier) or self.min_noise_multiplier < 0:
            raise ConfigurationError(
                f"min_noise_multiplier must be finite and >= 0, got {self.min_noise_multiplier}"
            )
        rings = frozenset(self.allowed_ring_bits)
        if not rings or any(type(b) is not int or not 1 <= b <= 64 for b in rings):
            raise ConfigurationError(
                f"allowed_ring_bits must be ring sizes in [1, 64], got {sorted(rings)}"
            )
        object.__setattr__(self, "allowed_ring_bits", rings)
        try:
            encodings = frozenset(Encoding(e) for e in self.allowed_encodings)
        except ValueError:
            raise ConfigurationError(
                f"allowed_encodings must be among {[e.value for e in Encoding]}, "
                f"got {sorted(map(str, self.allowed_encodings))}"
            ) from None
        object.__setattr__(self, "allowed_encodings", encodings)

    def _normalise_terms(self) -> None:
        pinned = dict(self.pinned_terms)
        Contribution(Encoding.FIXED_POINT, pinned)  # the same types and names as a session's
        ranges = {}
        for name, bounds in dict(self.term_ranges).items():
            try:
                low, high = (float(b) for b in bounds)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"client policy term_ranges[{name!r}] must be [low, high], got {bounds!r}"
                ) from None
            if not low <= high:
                raise ConfigurationError(
                    f"client policy term_ranges[{name!r}] is empty: {low} > {high}"
                )
            ranges[str(name)] = (low, high)
        object.__setattr__(self, "pinned_terms", _FrozenTerms(sorted(pinned.items())))
        object.__setattr__(self, "term_ranges", _FrozenTerms(sorted(ranges.items())))

    @classmethod
    def permissive(cls) -> ClientPolicy:
        """No floors beyond the protocol's own (two clients, no colluders assumed, any ring).

        For tests and toy cohorts only: a server may then pick parameters that protect nobody
        against colluding clients.
        """
        return cls(
            min_clients=2,
            corrupt_fraction=0.0,
            max_neighbour_loss=1.0,
            allowed_ring_bits=frozenset(range(1, 65)),
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> ClientPolicy:
        """Build a policy from plain values (a TOML table, a Flower node config).

        Keys are the attribute names; ``allowed_ring_bits`` and ``allowed_encodings`` take lists.

        Raises:
            ConfigurationError: an unknown key or a value of the wrong type.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown client policy keys {unknown}; known keys: {sorted(known)}"
            )
        kwargs = dict(values)
        for name in ("allowed_ring_bits", "allowed_encodings"):
            if name in kwargs:
                if not isinstance(kwargs[name], (list, tuple, set, frozenset)):
                    raise ConfigurationError(f"client policy {name} must be a list")
                kwargs[name] = frozenset(kwargs[name])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, object]:
        """Plain values (lists sorted), the inverse of :meth:`from_mapping`."""
        values = asdict(self)
        values["allowed_ring_bits"] = sorted(self.allowed_ring_bits)
        values["allowed_encodings"] = sorted(e.value for e in self.allowed_encodings)
        values["pinned_terms"] = dict(self.pinned_terms)
        values["term_ranges"] = {k: list(v) for k, v in self.term_ranges.items()}
        return values

    # -- what the floors are for one session ------------------------------------------------------

    def corrupt_neighbours(self, config: SecAggConfig) -> int:
        """c: the assumed bound on colluding members of one closed neighbourhood of ``config``."""
        return corrupt_neighbours(
            config.num_clients,
            config.neighbours,
            corrupt_fraction=self.corrupt_fraction,
            security_bits=self.security_bits,
        )

    def minimum_threshold(self, config: SecAggConfig) -> int:
        """The smallest safe t for ``config``'s cohort and neighbourhood size: 2t > k + 1 + c."""
        return (config.neighbours + 1 + self.corrupt_neighbours(config)) // 2 + 1

    def honest_floor(self, config: SecAggConfig) -> int:
        """t - c: the fewest honest inputs in any sum the server can unmask (identities on).

        Distributed DP sizes each client's noise share for this many honest contributors.
        """
        return config.threshold - self.corrupt_neighbours(config)

    def min_live_neighbours(self, config: SecAggConfig) -> int:
        """How many neighbours must complete each key phase before the client goes on."""
        share = math.ceil((1.0 - self.max_neighbour_loss) * config.neighbours - 1e-9)
        return max(config.threshold - 1, share)

    def check_session(self, config: SecAggConfig) -> None:
        """Refuse a session whose parameters are below this policy.

        Raises:
            PolicyViolation: naming the parameter, the floor and how the server can meet it.
        """
        n, k, t = config.num_clients, config.neighbours, config.threshold
        if n < self.min_clients:
            raise PolicyViolation(
                f"a cohort of {n} clients is below this client's floor of {self.min_clients}; "
                "sample more clients per round",
                sender=0,
            )
        floor = self.minimum_threshold(config)
        if floor > k + 1:
            raise PolicyViolation(
                f"no threshold is safe with {k} neighbours and up to "
                f"{self.corrupt_neighbours(config)} corrupt ones (2t > k + 1 + c needs "
                f"t >= {floor} > k + 1); use more neighbours",
                sender=0,
            )
        if t < floor:
            raise PolicyViolation(
                f"threshold {t} is below this client's floor of {floor} for {k} neighbours "
                f"(2t > k + 1 + c with c = {self.corrupt_neighbours(config)} corrupt "
                f"neighbours at corrupt fraction {self.corrupt_fraction}); raise the threshold",
                sender=0,
            )
        if config.ring_bits not in self.allowed_ring_bits:
            raise PolicyViolation(
                f"a {config.ring_bits}-bit ring is not allowed by this client "
                f"(allowed: {sorted(self.allowed_ring_bits)})",
                sender=0,
            )
        if self.require_identities and config.identities is None:
            raise PolicyViolation(
                "this client requires Ed25519 identities (signed keys and the consistency "
                "check); the session has none",
                sender=0,
            )

    def check_encoding(self, encoding: Encoding) -> None:
        """Refuse an encoding this policy does not allow (or one without DP when DP is required).

        Raises:
            PolicyViolation: naming the encoding.
        """
        encoding = Encoding(encoding)
        if encoding not in self.allowed_encodings:
            raise PolicyViolation(
                f"encoding {encoding.value!r} is not allowed by this client "
                f"(allowed: {sorted(e.value for e in self.allowed_encodings)})",
                sender=0,
            )
        if self.min_noise_multiplier > 0 and encoding is not Encoding.DISTRIBUTED_DP:
            raise PolicyViolation(
                "this client requires client-level DP noise "
                f"(noise multiplier >= {self.min_noise_multiplier}); the session has none",
                sender=0,
            )

    def check_noise(
        self, config: SecAggConfig, *, noise_multiplier: float, noise_shares: int
    ) -> None:
        """Refuse distributed DP noise below this policy.

        Each client adds 1/``noise_shares`` of the target variance; any sum the server can unmask
        holds at least :meth:`honest_floor` honest inputs, so ``noise_shares`` may not exceed it
        (colluders subtract their own noise).

        Raises:
            PolicyViolation: the noise multiplier is below the floor, or each client's share is
                too small for the honest contributors a released sum is sure to hold.
        """
        if not noise_multiplier >= self.min_noise_multiplier:
            raise PolicyViolation(
                f"noise multiplier {noise_multiplier} is below this client's floor of "
                f"{self.min_noise_multiplier}",
                sender=0,
            )
        honest = self.honest_floor(config)
        if noise_shares > honest:
            raise PolicyViolation(
                f"each client is asked for 1/{noise_shares} of the noise, but a released sum is "
                f"only sure to hold {honest} honest inputs (t = {config.threshold} minus "
                f"{self.corrupt_neighbours(config)} possible colluders); size the shares for "
                f"at most {honest}",
                sender=0,
            )

    def check_contribution(self, config: SecAggConfig) -> Contribution:
        """Refuse a session whose contribution this client would not make; return it.

        The contribution is what the client encodes with (it never takes encoding values from
        anywhere else): its kind must be allowed, every pinned term present with the pinned
        value, every ranged term inside its range, a fixed-point clip resolved in at least
        ``2^min_resolution_bits`` steps, and distributed DP noise above the floors
        (:meth:`check_noise`).

        Raises:
            PolicyViolation: the session has no contribution, or one outside this policy.
        """
        contribution = config.contribution
        if contribution is None:
            raise PolicyViolation(
                "the session states no contribution (encoding and rules); this client only "
                "encodes by a contribution bound into the session",
                sender=0,
            )
        self.check_encoding(contribution.encoding)
        for name, value in self.pinned_terms.items():
            if contribution.optional(name) != value:
                raise PolicyViolation(
                    f"this client is pinned to {name} = {value!r}; the session says "
                    f"{contribution.optional(name)!r}",
                    sender=0,
                )
        for name, (low, high) in self.term_ranges.items():
            if not low <= contribution.number(name) <= high:
                raise PolicyViolation(
                    f"{name} = {contribution.number(name)} is outside this client's range "
                    f"[{low}, {high}]",
                    sender=0,
                )
        if contribution.encoding is Encoding.FIXED_POINT:
            steps = contribution.number("clip") * 2.0 ** contribution.integer("precision_bits")
            if not steps >= 2.0**self.min_resolution_bits:
                raise PolicyViolation(
                    f"a clip of {contribution.number('clip')} at "
                    f"{contribution.integer('precision_bits')} precision bits resolves "
                    f"{steps:.3g} steps, below this client's floor of "
                    f"2^{self.min_resolution_bits}; raise the clip or the precision",
                    sender=0,
                )
        else:
            self.check_noise(
                config,
                noise_multiplier=contribution.number("noise_multiplier"),
                noise_shares=contribution.integer("noise_shares"),
            )
        return contribution

    def check_staleness(self, staleness: int) -> None:
        """Refuse to contribute an update ``staleness`` versions old (or from the future).

        Raises:
            PolicyViolation: ``staleness`` is negative or above ``max_staleness``.
        """
        if not 0 <= staleness <= self.max_staleness:
            raise PolicyViolation(
                f"a staleness of {staleness} versions is outside this client's bound "
                f"[0, {self.max_staleness}] (policy max_staleness)",
                sender=0,
            )


class _FrozenTerms(Mapping):
    """A read-only, hashable mapping (a policy is frozen and hashable)."""

    def __init__(self, items: object) -> None:
        self._items = dict(items)  # type: ignore[call-overload]

    def __getitem__(self, key: str) -> object:
        return self._items[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


def _expect(policy: ClientPolicy, name: str, kind: type) -> None:
    value = getattr(policy, name)
    ok = (
        type(value) is bool
        if kind is bool
        else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, int) and not isinstance(value, bool)
        )
    )
    if not ok:
        raise ConfigurationError(
            f"client policy {name} must be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
