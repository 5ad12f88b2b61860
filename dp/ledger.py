"""The privacy ledger: what each round spent, per client (sample level) or for the federation
(client level), written as ``privacy.json`` and restored on resume so no spent budget is lost."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
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

__all__ = ["ClientLevelEntry", "PrivacyLedger", "PrivacyLevel", "SampleLevelEntry"]


class PrivacyLevel(str, Enum):
    """Whose privacy is protected."""

    NONE = "none"
    SAMPLE = "sample"  # each record of a client's data set (DP-SGD on the client)
    CLIENT = "client"  # each client as a whole (distributed noise on the clipped update)


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
class ClientLevelEntry:
    """One round of client-level distributed DP: the noisy sum of a Poisson sample of clients.

    Sensitivities and noise are in the scaled integer domain the noise was added in.
    """

    round: int
    mechanism: str  # "skellam" or "ddg"
    client_sampling_rate: float
    l1_sensitivity: float
    l2_sensitivity: float
    variance: float  # of the summed noise, per coordinate (skellam)
    local_sigma: float  # per client (ddg)
    noise_shares: int  # the minimum number of clients whose noise is in the sum
    dimension: int
    l2_clip: float
    wrap_probability: float

    def event(self) -> Event:
        if self.mechanism == "skellam":
            inner: Event = SkellamEvent(self.l1_sensitivity, self.l2_sensitivity, self.variance)
        else:
            inner = DiscreteGaussianEvent(
                self.l1_sensitivity,
                self.l2_sensitivity,
                self.local_sigma,
                self.noise_shares,
                self.dimension,
            )
        return PoissonSampledEvent(self.client_sampling_rate, inner)


@dataclass
class PrivacyLedger:
    """Every mechanism a run applied, and epsilon so far.

    Attributes:
        level: sample- or client-level.
        delta: the delta every epsilon is reported at.
        accountant: which accountant computes epsilon.
        sample_entries / client_entries: the mechanisms, in the order they ran.
        epsilons: epsilon after each round (max over clients at sample level).
    """

    level: PrivacyLevel
    delta: float
    accountant: AccountantKind = AccountantKind.RDP
    sample_entries: list[SampleLevelEntry] = field(default_factory=list)
    client_entries: list[ClientLevelEntry] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)

    def record_sample(self, entry: SampleLevelEntry) -> None:
        """Add one client's DP-SGD of one round."""
        self.sample_entries.append(entry)

    def record_client(self, entry: ClientLevelEntry) -> None:
        """Add one round of client-level distributed noise."""
        self.client_entries.append(entry)

    def client_epsilon(self, client: int, extra: tuple[SampleLevelEntry, ...] = ()) -> float:
        """Sample-level epsilon of one client so far (plus ``extra`` prospective entries)."""
        accountant = make_accountant(self.accountant)
        for entry in (*self.sample_entries, *extra):
            if entry.client == client:
                accountant.compose(entry.event(), entry.steps)
        return accountant.get_epsilon(self.delta)

    def epsilon(self, extra: tuple[SampleLevelEntry | ClientLevelEntry, ...] = ()) -> float:
        """The epsilon the run has spent (the worst client at sample level), with ``extra``."""
        if self.level is PrivacyLevel.SAMPLE:
            clients = {e.client for e in (*self.sample_entries, *extra)}
            return max((self.client_epsilon(c, extra) for c in clients), default=0.0)  # type: ignore[arg-type]
        accountant = make_accountant(self.accountant)
        for entry in (*self.client_entries, *extra):
            accountant.compose(entry.event())
        return accountant.get_epsilon(self.delta)

    def close_round(self) -> float:
        """Record and return epsilon after the round just accounted."""
        value = self.epsilon()
        self.epsilons.append(value)
        return value

    def to_json(self) -> str:
        """The ledger as JSON (``privacy.json``)."""
        per_client = {}
        if self.level is PrivacyLevel.SAMPLE:
            for client in sorted({e.client for e in self.sample_entries}):
                per_client[str(client)] = self.client_epsilon(client)
        return json.dumps(
            {
                "level": self.level.value,
                "delta": self.delta,
                "accountant": self.accountant.value,
                "epsilon_per_round": self.epsilons,
                "epsilon": self.epsilons[-1] if self.epsilons else 0.0,
                "epsilon_per_client": per_client,
                "sample_entries": [asdict(e) for e in self.sample_entries],
                "client_entries": [asdict(e) for e in self.client_entries],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Restore a ledger written by :meth:`to_json`."""
        try:
            data = json.loads(text)
            return cls(
                level=PrivacyLevel(data["level"]),
                delta=float(data["delta"]),
                accountant=AccountantKind(data["accountant"]),
                sample_entries=[SampleLevelEntry(**e) for e in data["sample_entries"]],
                client_entries=[ClientLevelEntry(**e) for e in data["client_entries"]],
                epsilons=[float(v) for v in data["epsilon_per_round"]],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DPError(
                f"the privacy ledger cannot be read ({error}); it must not be edited by hand"
            ) from None

    def write(self, folder: Path) -> None:
        """Write ``privacy.json`` into ``folder``."""
        (folder / "privacy.json").write_text(self.to_json() + "\n")
