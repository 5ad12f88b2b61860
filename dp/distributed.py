"""Client-level distributed DP: integer noise added by the clients before masking.

Each client clips its update to L2 norm C, rotates it with a random Hadamard transform (shared,
public randomness), scales it by s, rounds it to integers with conditional randomized rounding
(retry until the rounded norm is within the bound of Kairouz, Liu, Steinke 2021, Thm. 1), and
adds its share of integer noise:

* **Skellam** (Agarwal, Kairouz, Liu, NeurIPS 2021): Sk(lambda, lambda) = Poisson - Poisson,
  closed under summation;
* **distributed discrete Gaussian** (Kairouz, Liu, Steinke, ICML 2021): N_Z(0, sigma_l^2).

Each client adds variance ``V / (t - c)``: t is the secure-aggregation threshold (the server can
only ever unmask a sum of at least t inputs) and c the colluding clients a client's policy
assumes (they know, and can subtract, their own shares), so the honest shares of any sum the
server can unmask carry at least the target variance V = (z C s)^2, whoever drops out, and no
party ever sees a noise-free sum. The server unscales, inverts the rotation and divides by the
number of contributors (client-level DP averages updates with equal weights, DP-FedAvg of
McMahan et al. 2018).

The scale s fills the ring so that the aggregate stays within ``k`` standard deviations of its
sub-Gaussian bound (Kairouz et al. 2021, Sec. 4.4), with ``k`` chosen from the target probability
of a modular wrap-around, which is reported. Noise comes from :mod:`dp.samplers`, driven by
``os.urandom``: the discrete Gaussian exactly (Canonne, Kamath, Steinke 2020), Skellam within a
total-variation distance of about 10^-34 per draw, which the ledger adds to delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from dp.errors import PrivacyConfigError
from dp.ledger import ClientLevelEntry
from dp.rdp import rounded_norm_bounds
from dp.removable import RemovableNoise
from dp.samplers import sample_discrete_gaussian, sample_skellam, skellam_table
from secagg.contribution import Contribution, Encoding, WeightRule
from secagg.encoding import stochastic_round
from secagg.errors import ConfigurationError
from secagg.randomness import RandomSource, system_random
from secagg.ring import to_signed

__all__ = [
    "DistributedNoiseEncoder",
    "Mechanism",
    "hadamard_rotate",
    "sample_discrete_gaussian",
    "sample_skellam",
]

_MAX_LOCAL_STD = 256.0  # scaled noise std per client: rounding error (variance 1/4) is negligible
_MAX_ROUNDING_TRIES = 1000


class Mechanism(str, Enum):
    """The integer noise distribution."""

    SKELLAM = "skellam"
    DISCRETE_GAUSSIAN = "ddg"


def _fwht(values: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length 2^m)."""
    out = values.astype(np.float64, copy=True)
    size, h = out.shape[-1], 1
    rows = out.reshape(-1, size)
    while h < size:
        blocks = rows.reshape(rows.shape[0], -1, 2, h)
        top, bottom = blocks[:, :, 0, :].copy(), blocks[:, :, 1, :]
        blocks[:, :, 0, :] += bottom
        blocks[:, :, 1, :] = top - bottom
        h *= 2
    return out


def hadamard_rotate(values: np.ndarray, signs: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """The orthogonal map ``x -> H D x / sqrt(n)`` (random signs D), or its inverse, applied to
    a vector or to each row of a matrix."""
    scale = 1.0 / math.sqrt(values.shape[-1])
    if inverse:
        return _fwht(values) * scale * signs
    return _fwht(values * signs) * scale


@dataclass(frozen=True)
class DistributedNoiseEncoder:
    """Encodes clipped, noised client updates into the ring; decodes the noisy mean.

    Attributes:
        mechanism: Skellam or distributed discrete Gaussian.
        dimension: d, the update length (padded to a power of two, D).
        l2_clip: C, the L2 bound every update is clipped to.
        noise_multiplier: z; the released sum carries noise of standard deviation z C per
            coordinate (after unscaling).
        cohort: n, the most clients summed (bounds the signal).
        noise_shares: the fewest *honest* clients whose noise is in any sum the server can
            unmask: t - c, the secure-aggregation threshold less the colluding clients assumed
            (c of them can subtract their own shares). Each client adds V / noise_shares.
        ring_bits: b.
        beta: conditional rounding parameter (Kairouz et al. 2021 use exp(-1/2)).
        wrap_target: target probability that any coordinate of the sum wraps around.
        threshold: t, recorded in the ledger (None: not stated).
        corrupt: c, recorded in the ledger; with ``threshold`` set, ``noise_shares = t - c``.
    """

    mechanism: Mechanism
    dimension: int
    l2_clip: float
    noise_multiplier: float
    cohort: int
    noise_shares: int
    ring_bits: int = 32
    beta: float = math.exp(-0.5)
    wrap_target: float = 1e-6
    threshold: int | None = None
    corrupt: int = 0

    def __post_init__(self) -> None:
        if not self.l2_clip > 0:
            raise PrivacyConfigError(f"the L2 clipping bound must be positive, got {self.l2_clip}")
        if self.noise_multiplier < 0:
            raise PrivacyConfigError(
                f"the noise multiplier must be >= 0, got {self.noise_multiplier}"
            )
        if not 1 <= self.noise_shares <= self.cohort:
            raise PrivacyConfigError(
                f"noise_shares must lie in [1, cohort={self.cohort}], got {self.noise_shares}"
            )
        if self.threshold is not None and self.noise_shares != self.threshold - self.corrupt:
            raise PrivacyConfigError(
                f"noise_shares must be threshold - corrupt = {self.threshold} - {self.corrupt}, "
                f"got {self.noise_shares}"
            )
        if not 8 <= self.ring_bits <= 64:
            raise PrivacyConfigError(f"ring_bits must lie in [8, 64], got {self.ring_bits}")
        if self._ring_fit * self.l2_clip < 1:
            raise PrivacyConfigError(
                f"a {self.ring_bits}-bit ring cannot hold the noisy sum of {self.cohort} clients at "
                f"wrap-around probability {self.wrap_target} with updates resolved to more than one "
                "integer step; use more ring bits (privacy.ring_bits) or fewer clients per round"
            )

    def contribution(self, *, rotation_seed: bytes) -> Contribution:
        """This encoding as a session's contribution: every parameter and the rotation seed,
        with equal weights (a client's weight would reveal its data)."""
        terms = {
            "mechanism": self.mechanism.value,
            "dimension": self.dimension,
            "l2_clip": float(self.l2_clip),
            "noise_multiplier": float(self.noise_multiplier),
            "cohort": self.cohort,
            "noise_shares": self.noise_shares,
            "ring_bits": self.ring_bits,
            "beta": float(self.beta),
            "wrap_target": float(self.wrap_target),
            "corrupt": self.corrupt,
            "rotation_seed": bytes(rotation_seed),
            "weights": WeightRule.EQUAL.value,
        }
        if self.threshold is not None:
            terms["threshold"] = self.threshold
        return Contribution(Encoding.DISTRIBUTED_DP, terms)

    @classmethod
    def from_contribution(cls, contribution: Contribution) -> tuple[DistributedNoiseEncoder, bytes]:
        """The encoder and rotation seed a session's distributed-DP contribution describes.

        Raises:
            ConfigurationError: another encoding or a missing term.
            PrivacyConfigError: parameters the encoder refuses.
        """
        if contribution.encoding is not Encoding.DISTRIBUTED_DP:
            raise ConfigurationError(
                f"the session's contribution is {contribution.encoding.value}, not distributed-dp"
            )
        if contribution.weights is not WeightRule.EQUAL:
            raise ConfigurationError("distributed DP needs equal weights")
        threshold = contribution.optional("threshold")
        encoder = cls(
            mechanism=Mechanism(contribution.text("mechanism")),
            dimension=contribution.integer("dimension"),
            l2_clip=contribution.number("l2_clip"),
            noise_multiplier=contribution.number("noise_multiplier"),
            cohort=contribution.integer("cohort"),
            noise_shares=contribution.integer("noise_shares"),
            ring_bits=contribution.integer("ring_bits"),
            beta=contribution.number("beta"),
            wrap_target=contribution.number("wrap_target"),
            threshold=None if threshold is None else contribution.integer("threshold"),
            corrupt=contribution.integer("corrupt"),
        )
        return encoder, contribution.blob("rotation_seed")

    @property
    def padded(self) -> int:
        """D: the dimension padded to a power of two for the Hadamard transform."""
        return 1 << max(0, math.ceil(math.log2(self.dimension)))

    @property
    def _k(self) -> float:
        """Standard deviations of the aggregate that must fit in half the ring."""
        return math.sqrt(2 * math.log(2 * self.padded / self.wrap_target))

    @property
    def local_sigma(self) -> float:
        """Each client's noise standard deviation before scaling: z C / sqrt(t - c)."""
        return self.noise_multiplier * self.l2_clip / math.sqrt(self.noise_shares)

    @property
    def _ring_fit(self) -> float:
        """The largest scale whose aggregate stays within k standard deviations of the ring."""
        n, clip = self.cohort, self.l2_clip
        room = 2.0 ** (2 * (self.ring_bits - 1)) / self._k**2 - n / 4
        per_unit = (n * clip) ** 2 / self.padded + n * self.local_sigma**2
        return math.sqrt(room / per_unit) if room > 0 else 0.0

    @property
    def scale(self) -> float:
        """s: fills the ring (Kairouz et al. 2021, Sec. 4.4), capped so that each client's
        scaled noise has standard deviation at most 256 (rounding noise is then negligible)."""
        fit = self._ring_fit
        return min(fit, _MAX_LOCAL_STD / self.local_sigma) if self.local_sigma > 0 else fit

    @property
    def sensitivities(self) -> tuple[float, float]:
        """(L1, L2) sensitivity of one client's rounded, scaled vector."""
        return rounded_norm_bounds(self.l2_clip * self.scale, self.padded, self.beta)

    @property
    def central_variance(self) -> float:
        """Variance per coordinate of the released sum's noise, scaled: (z C s)^2."""
        return (self.noise_multiplier * self.l2_clip * self.scale) ** 2

    @property
    def wrap_probability(self) -> float:
        """Union bound on any coordinate of the sum wrapping around the ring in one round."""
        s, n = self.scale, self.cohort
        variance = (
            (n * self.l2_clip * s) ** 2 / self.padded + n / 4 + n * (self.local_sigma * s) ** 2
        )
        return min(
            1.0, 2 * self.padded * math.exp(-((2.0 ** (self.ring_bits - 1)) ** 2) / (2 * variance))
        )

    @property
    def sampler_distance(self) -> float:
        """Total-variation distance of one client's noise vector from the analysed law: 0 for
        the exact discrete Gaussian; ``padded`` draws times the Skellam table's bound."""
        if self.mechanism is Mechanism.DISCRETE_GAUSSIAN or self.local_sigma == 0:
            return 0.0
        return self.padded * skellam_table((self.local_sigma * self.scale) ** 2).tv_bound

    def removable(self, most_honest: int) -> RemovableNoise:
        """This encoder's noise share split into a base and a removable ladder (Skellam only).

        Args:
            most_honest: the most honest clients a certified sum can hold (k + 1 - c).
        """
        if self.mechanism is not Mechanism.SKELLAM:
            raise PrivacyConfigError(
                "exact noise under dropouts removes Skellam components; the discrete Gaussian "
                "mechanism cannot split a share exactly: use mechanism = 'skellam'"
            )
        return RemovableNoise(
            total_variance=self.central_variance,
            noise_shares=self.noise_shares,
            most_honest=max(most_honest, self.noise_shares),
        )

    def ledger_entry(
        self,
        *,
        round_index: int,
        client_sampling_rate: float,
        participants: tuple[int, ...] = (),
        variance_left: float | None = None,
        ladder: RemovableNoise | None = None,
    ) -> ClientLevelEntry:
        """What one round of this mechanism spends, for :class:`dp.ledger.PrivacyLedger`.

        Args:
            round_index: the round (1-based).
            client_sampling_rate: q, the Poisson rate the cohort was drawn with.
            participants: the clients whose updates are in the released sum (what the server
                sees); the sampler's distance is charged for each of them.
            variance_left: the released sum's noise variance after removal (None: none).
            ladder: the removable split the clients drew their noise with (its samplers'
                distance is charged instead of the single share's).
        """
        l1, l2 = self.sensitivities
        return ClientLevelEntry(
            round=round_index,
            mechanism=self.mechanism.value,
            client_sampling_rate=client_sampling_rate,
            l1_sensitivity=l1,
            l2_sensitivity=l2,
            variance=self.central_variance,
            local_sigma=self.local_sigma * self.scale,
            noise_shares=self.noise_shares,
            dimension=self.padded,
            l2_clip=self.l2_clip,
            wrap_probability=self.wrap_probability,
            threshold=self.threshold,
            corrupt=self.corrupt,
            participants=tuple(sorted(participants)),
            sampler_distance=(
                self.sampler_distance if ladder is None else ladder.sampler_distance(self.padded)
            )
            * (len(participants) or self.cohort),
            variance_left=variance_left,
        )

    def _signs(self, rotation_seed: bytes) -> np.ndarray:
        from secagg.hazmat.prg import keystream

        bits = np.unpackbits(
            np.frombuffer(keystream(rotation_seed, (self.padded + 7) // 8), dtype=np.uint8)
        )
        return np.where(bits[: self.padded] == 1, 1.0, -1.0)

    def round_updates(
        self,
        updates: np.ndarray,
        *,
        rotation_seed: bytes,
        random_bytes: RandomSource = system_random,
    ) -> np.ndarray:
        """Clip each update to L2 norm C, rotate, scale and round it conditionally (retrying
        the randomized rounding until the norm bound of Kairouz et al. 2021, Thm. 1 holds): the
        integer vectors before noise, int64, one row per update (or one vector).

        Raises:
            PrivacyConfigError: a wrong length or a non-finite value.
        """
        values = np.asarray(updates, dtype=np.float64)
        rows = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values[None, :]
        if rows.shape[-1] != self.dimension or not np.all(np.isfinite(rows)):
            raise PrivacyConfigError(f"each update must hold {self.dimension} finite values")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows * np.minimum(1.0, self.l2_clip / np.maximum(norms, 1e-300))
        padded = np.zeros((rows.shape[0], self.padded))
        padded[:, : self.dimension] = rows
        scaled = hadamard_rotate(padded, self._signs(rotation_seed)) * self.scale
        bound = self.sensitivities[1]
        rounded = np.empty(scaled.shape, dtype=np.int64)
        todo = np.arange(scaled.shape[0])
        for _ in range(_MAX_ROUNDING_TRIES):
            rounded[todo] = stochastic_round(scaled[todo], random_bytes)
            todo = todo[np.linalg.norm(rounded[todo].astype(np.float64), axis=1) > bound]
            if not todo.size:
                break
        else:  # probability at most beta^tries
            raise PrivacyConfigError("conditional rounding did not meet its norm bound; raise beta")
        return rounded if values.ndim > 1 else rounded[0]

    def noise(self, *, shares: int = 1, random_bytes: RandomSource = system_random) -> np.ndarray:
        """The sum of ``shares`` clients' noise shares (int64, ``padded`` coordinates): Skellam
        shares add up to one Skellam draw of the summed variance; discrete Gaussian shares are
        drawn one by one."""
        variance = (self.local_sigma * self.scale) ** 2
        if self.mechanism is Mechanism.SKELLAM:
            return sample_skellam(shares * variance, self.padded, random_bytes)
        draws = sample_discrete_gaussian(math.sqrt(variance), shares * self.padded, random_bytes)
        return draws.reshape(shares, self.padded).sum(axis=0)

    def encode(
        self,
        update: np.ndarray,
        *,
        rotation_seed: bytes,
        random_bytes: RandomSource = system_random,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Clip, rotate, scale, round conditionally, add this client's noise; ring words (uint64).

        Args:
            update: the float update, length ``dimension``.
            rotation_seed: 32 public bytes shared by the round (the server uses them to decode).
            random_bytes: secure randomness for rounding and noise.
            noise: this client's noise share, already drawn (``padded`` integers; e.g. a
                removable split, :meth:`removable`); drawn here when omitted.
        """
        rounded = self.round_updates(
            np.asarray(update, dtype=np.float64).ravel(),
            rotation_seed=rotation_seed,
            random_bytes=random_bytes,
        )
        if noise is None:
            noise = self.noise(random_bytes=random_bytes)
        return self.to_ring(rounded + noise)

    def to_ring(self, values: np.ndarray) -> np.ndarray:
        """Integers reduced into the ring Z_(2^b), as uint64 words."""
        return values.astype(np.uint64) & np.uint64((1 << self.ring_bits) - 1)

    def decode(self, total: np.ndarray, *, contributors: int, rotation_seed: bytes) -> np.ndarray:
        """The noisy mean of ``contributors`` updates from the ring sum (float64, length d)."""
        signed = to_signed(np.asarray(total), self.ring_bits).astype(np.float64) / self.scale
        restored = hadamard_rotate(signed, self._signs(rotation_seed), inverse=True)
        return restored[: self.dimension] / contributors
