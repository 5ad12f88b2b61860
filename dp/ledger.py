"""The privacy ledger: what each round spent, per client (sample level) or for the federation
(client level), written as ``privacy.json`` and restored on resume so no spent budget is lost.

Two epsilons at client level (:class:`EpsilonReport`):

* **observer**: against parties who see the released models but not who took part. Cohorts are
  Poisson samples drawn from a secret source, so each round is a Poisson-subsampled mechanism
  (amplification by sampling, Zhu and Wang 2019);
* **server**: against the aggregation server, which sees who took part in every round. No
  amplification: each client's epsilon composes the rounds it took part in, and the ledger
  reports the worst client. This is the headline whenever the server is not trusted, which is
  always the case at client level (the noise is added under secure aggregation).

At sample level both are the same number: each client's DP-SGD accounting does not depend on
who else took part.

At **central** level the aggregator is trusted with the noise-free sum (it adds the noise, once,
to the unmasked sum of clipped updates): there is no epsilon against the server (reported as
infinite, ``null`` in JSON), and the headline is the observers' epsilon, amplified by the
secret Poisson sampling of each round's cohort.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path

from dp.accounting import (
    AccountantKind,
    DiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SkellamEvent,
    make_accountant,
)
from dp.errors import DPError

__all__ = [
    "CentralEntry",
    "ClientLevelEntry",
    "CountEntry",
    "EpsilonReport",
    "PrivacyLedger",
    "PrivacyLevel",
    "SampleLevelEntry",
]


class PrivacyLevel(str, Enum):
    """Whose privacy is protected."""

    NONE = "none"
    SAMPLE = "sample"  # each record of a client's data set (DP-SGD on the client)
    CLIENT = "client"  # each client as a whole (distributed noise on the clipped update)
    CENTRAL = "central"  # each client as a whole, against all but the aggregator (server noise)


@dataclass(frozen=True)
class SampleLevelEntry:
    """One client's DP-SGD in one round: ``steps`` Poisson-sampled Gaussian mechanisms."""

    round: int
    client: int
    sampling_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float

    def event(self) -> Event:
        return PoissonSampledEvent(self.sampling_rate, GaussianEvent(self.noise_multiplier))


@dataclass(frozen=True)
class CountEntry:
    """A client's record count, released once with discrete Gaussian noise (sensitivity 1 under
    add/remove of a record): ``noisy_count`` is public and everything derived from it (the
    DP-SGD sampling rate and steps, the averaging weight) is post-processing."""

    client: int
    noisy_count: int
    noise_std: float

    def event(self) -> Event:
        # the discrete Gaussian is at least as private as the continuous one (Canonne, Kamath,
        # Steinke 2020, Thm. 4: rho = 1 / (2 sigma^2)-zCDP)
        return GaussianEvent(self.noise_std)


@dataclass(frozen=True)
class ClientLevelEntry:
    """One round of client-level distributed DP: the noisy sum of a Poisson sample of clients.

    Sensitivities and noise are in the scaled integer domain the noise was added in.

    Attributes:
        noise_shares: t - c, the fewest honest clients whose noise is in the sum.
        threshold, corrupt: t and c (None / 0 when not stated).
        participants: the clients whose updates are in the released sum (empty: not recorded,
            and every client is assumed to have taken part).
        sampler_distance: total-variation distance of the round's noise from the analysed law
            (added to delta).
        variance_left: the variance per coordinate of the released sum's noise once the
            clients removed what the certified survivors made unnecessary (:mod:`dp.removable`);
            None when no noise was removed. ``variance`` stays what the accounting relies on:
            the honest clients of any sum keep at least that much.
    """

    round: int
    mechanism: str  # "skellam" or "ddg"
    client_sampling_rate: float
    l1_sensitivity: float
    l2_sensitivity: float
    variance: float  # of the summed noise, per coordinate (skellam)
    local_sigma: float  # per client (ddg)
    noise_shares: int
    dimension: int
    l2_clip: float
    wrap_probability: float
    threshold: int | None = None
    corrupt: int = 0
    participants: tuple[int, ...] = ()
    sampler_distance: float = 0.0
    variance_left: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(int(p) for p in self.participants))

    def inner_event(self) -> Event:
        """The mechanism on the sum, without subsampling (what the server's view costs)."""
        if self.mechanism == "skellam":
            return SkellamEvent(self.l1_sensitivity, self.l2_sensitivity, self.variance)
        return DiscreteGaussianEvent(
            self.l1_sensitivity,
            self.l2_sensitivity,
            self.local_sigma,
            self.noise_shares,
            self.dimension,
        )

    def event(self) -> Event:
        """The round for an observer who does not know the cohort: Poisson-subsampled."""
        return PoissonSampledEvent(self.client_sampling_rate, self.inner_event())


@dataclass(frozen=True)
class CentralEntry:
    """One round of central DP: the trusted aggregator adds Gaussian noise of standard deviation
    ``noise_multiplier * l2_sensitivity`` to the sum of a Poisson sample of clipped updates.

    Attributes:
        client_sampling_rate: q, each client's probability of being in the round.
        noise_multiplier: z, the noise's standard deviation over the L2 sensitivity.
        l2_sensitivity: the most one client's contribution can move the sum, in the domain the
            noise is added in (the scaled integers of the fixed-point encoding).
        participants: the clients whose updates are in the released sum.
    """

    round: int
    client_sampling_rate: float
    noise_multiplier: float
    l2_sensitivity: float
    participants: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(int(p) for p in self.participants))

    def event(self) -> Event:
        """The sampled Gaussian mechanism: what the round costs against observers."""
        return PoissonSampledEvent(self.client_sampling_rate, GaussianEvent(self.noise_multiplier))


@dataclass(frozen=True)
class EpsilonReport:
    """What a run has spent.

    Attributes:
        observer: epsilon against parties who do not see who took part (with amplification by
            sampling at client level).
        server: epsilon against the aggregation server, who sees who took part (the worst
            client's composition over its own rounds at client level).
        delta: the delta both are reported at, including the samplers' distance.
    """

    observer: float
    server: float
    delta: float
    trusted_server: bool = False

    @property
    def headline(self) -> float:
        """The number to show first: against the server (never below the observer's); the
        observers' when the server is trusted with the noise-free sum (central DP)."""
        if self.trusted_server:
            return self.observer
        return max(self.server, self.observer)


@dataclass
class PrivacyLedger:
    """Every mechanism a run applied, and epsilon so far.

    Attributes:
        level: sample- or client-level.
        delta: the delta every epsilon is reported at.
        accountant: which accountant computes epsilon.
        sample_entries / client_entries / count_entries: the mechanisms, in the order they ran.
        epsilons: the headline epsilon after each round (max over clients at sample level).
        observer_epsilons: the observer's epsilon after each round.
    """

    level: PrivacyLevel
    delta: float
    accountant: AccountantKind = AccountantKind.RDP
    sample_entries: list[SampleLevelEntry] = field(default_factory=list)
    client_entries: list[ClientLevelEntry] = field(default_factory=list)
    count_entries: list[CountEntry] = field(default_factory=list)
    central_entries: list[CentralEntry] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    observer_epsilons: list[float] = field(default_factory=list)
    _taken_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def record_sample(self, entry: SampleLevelEntry) -> None:
        """Add one client's DP-SGD of one round."""
        self.sample_entries.append(entry)

    def record_client(self, entry: ClientLevelEntry) -> None:
        """Add one round of client-level distributed noise."""
        self.client_entries.append(entry)

    def record_central(self, entry: CentralEntry) -> None:
        """Add one round of central DP."""
        self.central_entries.append(entry)

    def record_count(self, entry: CountEntry) -> None:
        """Add a client's noisy record count (released once)."""
        if any(e.client == entry.client for e in self.count_entries):
            raise DPError(f"client {entry.client}'s record count is already released")
        self.count_entries.append(entry)

    def noisy_counts(self) -> dict[int, int]:
        """The released noisy record count of each client."""
        return {e.client: e.noisy_count for e in self.count_entries}

    def client_epsilon(self, client: int, extra: tuple[SampleLevelEntry, ...] = ()) -> float:
        """Sample-level epsilon of one client so far (plus ``extra`` prospective entries),
        including the release of its noisy record count."""
        steps: Counter[Event] = Counter()
        for entry in self.count_entries:
            if entry.client == client:
                steps[entry.event()] += 1
        for entry in (*self.sample_entries, *extra):
            if entry.client == client:
                steps[entry.event()] += entry.steps
        accountant = make_accountant(self.accountant)
        for event, count in steps.items():
            accountant.compose(event, count)
        return accountant.get_epsilon(self.delta)

    def _taken(self) -> tuple[dict[int, Counter], Counter]:
        """Per client, how often each (unrounded) mechanism covered it, and the rounds with no
        recorded participants; kept up to date incrementally as rounds are recorded."""
        cached = self._taken_cache
        entries = self.client_entries
        if cached is None or cached[0] is not entries or cached[1] > len(entries):
            cached = (entries, 0, {}, Counter())
        _, done, taken, unknown = cached
        for entry in entries[done:]:
            key = _unrounded(entry)
            if not entry.participants:
                unknown[key] += 1
            for client in entry.participants:
                taken.setdefault(client, Counter())[key] += 1
        self._taken_cache = (entries, len(entries), taken, unknown)
        return taken, unknown

    def participations(
        self, extra: tuple[ClientLevelEntry, ...] = ()
    ) -> dict[int, Counter[ClientLevelEntry]]:
        """Client level: for each client, how often each round's mechanism covered it."""
        taken, _ = self._taken()
        result = {client: Counter(counts) for client, counts in taken.items()}
        for entry in extra:
            for client in entry.participants:
                result.setdefault(client, Counter())[_unrounded(entry)] += 1
        return result

    def _server_epsilon(self, extra: tuple[ClientLevelEntry, ...]) -> float:
        """The worst client's composition over the rounds it took part in (no amplification);
        rounds without recorded participants count for every client."""
        taken, unknown = self._taken()
        unknown = unknown + Counter(_unrounded(e) for e in extra if not e.participants)
        touched = {c for e in extra for c in e.participants}
        signatures = {
            frozenset((counts + unknown).items())
            for client, counts in taken.items()
            if client not in touched
        }
        for client, counts in self.participations(extra).items():
            if client in touched:
                signatures.add(frozenset((counts + unknown).items()))
        if not signatures and unknown:
            signatures = {frozenset(unknown.items())}
        worst = 0.0
        for signature in signatures:
            worst = max(worst, _composed_epsilon(signature, self.accountant, self.delta))
        return worst

    def spent(self, extra: tuple[SampleLevelEntry | ClientLevelEntry, ...] = ()) -> EpsilonReport:
        """Both epsilons the run has spent (with ``extra`` prospective entries), and the delta
        they hold at (the configured delta plus the samplers' distance)."""
        if self.level is PrivacyLevel.SAMPLE:
            clients = {e.client for e in (*self.sample_entries, *extra)}  # type: ignore[union-attr]
            value = max((self.client_epsilon(c, extra) for c in clients), default=0.0)  # type: ignore[arg-type]
            return EpsilonReport(observer=value, server=value, delta=self.delta)
        if self.level is PrivacyLevel.CENTRAL:
            return self._central_spent(extra)  # type: ignore[arg-type]
        entries = (*self.client_entries, *extra)
        accountant = make_accountant(self.accountant)
        for event, count in Counter(e.event() for e in entries).items():  # type: ignore[union-attr]
            accountant.compose(event, count)
        observer = accountant.get_epsilon(self.delta)
        server = self._server_epsilon(tuple(extra))  # type: ignore[arg-type]
        distance = sum(e.sampler_distance for e in entries)  # type: ignore[union-attr]
        # a coupling within distance d turns (eps, delta) into (eps, delta + (1 + e^eps) d)
        headline = max(observer, server)
        delta = self.delta + (1 + math.exp(min(headline, 700.0))) * distance
        return EpsilonReport(observer=observer, server=server, delta=delta)

    def _central_spent(self, extra: tuple[CentralEntry, ...]) -> EpsilonReport:
        """Central level: the sampled Gaussian rounds composed (against observers); nothing
        holds against the aggregator, which sees the noise-free sum."""
        accountant = make_accountant(self.accountant)
        for event, count in Counter(e.event() for e in (*self.central_entries, *extra)).items():
            accountant.compose(event, count)
        return EpsilonReport(
            observer=accountant.get_epsilon(self.delta),
            server=math.inf,
            delta=self.delta,
            trusted_server=True,
        )

    def epsilon(self, extra: tuple[SampleLevelEntry | ClientLevelEntry, ...] = ()) -> float:
        """The headline epsilon the run has spent (the worst client at sample level; against
        the server at client level), with ``extra`` prospective entries."""
        return self.spent(extra).headline

    def close_round(self) -> float:
        """Record and return the headline epsilon after the round just accounted."""
        report = self.spent()
        self.epsilons.append(report.headline)
        self.observer_epsilons.append(report.observer)
        return report.headline

    def repeat_last(self) -> float:
        """Record a round that released nothing: epsilon stays where it was."""
        value = self.epsilons[-1] if self.epsilons else 0.0
        self.epsilons.append(value)
        self.observer_epsilons.append(self.observer_epsilons[-1] if self.observer_epsilons else 0.0)
        return value

    def to_json(self) -> str:
        """The ledger as JSON (``privacy.json``)."""
        per_client = {}
        if self.level is PrivacyLevel.SAMPLE:
            for client in sorted({e.client for e in self.sample_entries}):
                per_client[str(client)] = self.client_epsilon(client)
        report = self.spent()
        return json.dumps(
            {
                "level": self.level.value,
                "delta": self.delta,
                "delta_with_samplers": report.delta,
                "accountant": self.accountant.value,
                "epsilon_per_round": self.epsilons,
                "epsilon": self.epsilons[-1] if self.epsilons else 0.0,
                # null: no guarantee against a server trusted with the noise-free sum
                "epsilon_against_server": None if math.isinf(report.server) else report.server,
                "trusted_server": report.trusted_server,
                "epsilon_against_observers": report.observer,
                "observer_epsilon_per_round": self.observer_epsilons,
                "epsilon_per_client": per_client,
                "participations": {
                    str(c): sum(n.values()) for c, n in sorted(self.participations().items())
                },
                "count_entries": [asdict(e) for e in self.count_entries],
                "sample_entries": [asdict(e) for e in self.sample_entries],
                "client_entries": [asdict(e) for e in self.client_entries],
                "central_entries": [asdict(e) for e in self.central_entries],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Restore a ledger written by :meth:`to_json`."""
        try:
            data = json.loads(text)
            epsilons = [float(v) for v in data["epsilon_per_round"]]
            return cls(
                level=PrivacyLevel(data["level"]),
                delta=float(data["delta"]),
                accountant=AccountantKind(data["accountant"]),
                sample_entries=[SampleLevelEntry(**e) for e in data["sample_entries"]],
                client_entries=[
                    ClientLevelEntry(**{**e, "participants": tuple(e.get("participants", ()))})
                    for e in data["client_entries"]
                ],
                count_entries=[CountEntry(**e) for e in data.get("count_entries", [])],
                central_entries=[
                    CentralEntry(**{**e, "participants": tuple(e.get("participants", ()))})
                    for e in data.get("central_entries", [])
                ],
                epsilons=epsilons,
                observer_epsilons=[
                    float(v) for v in data.get("observer_epsilon_per_round", epsilons)
                ],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DPError(
                f"the privacy ledger cannot be read ({error}); it must not be edited by hand"
            ) from None

    def write(self, folder: Path) -> None:
        """Write ``privacy.json`` into ``folder``."""
        (folder / "privacy.json").write_text(self.to_json() + "\n")


@lru_cache(maxsize=4096)
def _composed_epsilon(
    signature: frozenset[tuple[ClientLevelEntry, int]], accountant: AccountantKind, delta: float
) -> float:
    """Epsilon of each mechanism in ``signature`` composed its number of times (cached: most
    clients share a handful of participation patterns)."""
    composed = make_accountant(accountant)
    for entry, count in signature:
        composed.compose(entry.inner_event(), count)
    return composed.get_epsilon(delta)


def _unrounded(entry: ClientLevelEntry) -> ClientLevelEntry:
    """The entry with its round and participants blanked: entries that differ only there are
    the same mechanism, so counting them groups the composition."""
    return ClientLevelEntry(
        **{**asdict(entry), "round": 0, "participants": (), "sampler_distance": 0.0}
    )
