"""One validated, frozen configuration for a federated run: TOML in, CLI overrides, TOML out."""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import tomli_w

from dp.accounting import AccountantKind
from dp.distributed import Mechanism
from dp.ledger import PrivacyLevel
from fl.errors import ConfigError, ConfigFileError
from secagg import ClientPolicy, ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AlgorithmConfig",
    "AlgorithmName",
    "DataConfig",
    "Dataset",
    "Device",
    "ModelConfig",
    "ModelName",
    "Optimizer",
    "Partition",
    "PolicyConfig",
    "PrivacyConfig",
    "RunConfig",
    "ScheduleConfig",
    "ScheduleMode",
    "SecureConfig",
    "TrainingConfig",
    "load_config",
    "parse_toml",
]


class Dataset(str, Enum):
    """Where the examples come from."""

    DIGITS = "digits"  # scikit-learn's 8x8 handwritten digits (ships with the package)
    SYNTHETIC = "synthetic"  # a seeded Gaussian mixture, any size
    FEDPROX_SYNTHETIC = "fedprox-synthetic"  # Synthetic(alpha, beta) of Li et al. 2020, per client
    NPZ = "npz"  # arrays x, y from a local .npz file


class Partition(str, Enum):
    """How the training examples are split among clients."""

    IID = "iid"
    DIRICHLET = "dirichlet"


class ModelName(str, Enum):
    """The reference models."""

    MLP = "mlp"
    CNN = "cnn"
    LOGISTIC = "logistic"  # multinomial logistic regression (FedProx's model on Synthetic)


class AlgorithmName(str, Enum):
    """What clients and server compute each round (:mod:`fl.algorithms`)."""

    FEDAVG = "fedavg"  # McMahan et al. 2017; stragglers are dropped
    FEDPROX = "fedprox"  # Li et al. 2020: proximal term, stragglers send partial work


class ScheduleMode(str, Enum):
    """When the server updates the model."""

    SYNC = "sync"  # rounds: a cohort trains from the same model, the server waits for all
    ASYNC = "async"  # FedBuff: every K arrivals form one secure-aggregation session


class Optimizer(str, Enum):
    """The local optimiser."""

    SGD = "sgd"
    ADAM = "adam"


class Device(str, Enum):
    """Where local training runs; ``auto`` picks CUDA when available."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _require(condition: bool, key: str, value: object, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number with a fraction" if not float(value).is_integer() else "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _coerce(key: str, value: object, hint: object) -> object:
    """``value`` checked against the field type ``hint``: strict TOML types (no bool for an int,
    no string for a bool, no float for an int), ints widened to float where a float is wanted.

    Raises:
        ConfigError: a value of another type, or a non-finite number.
    """
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        (hint,) = options
    if isinstance(hint, type) and issubclass(hint, Enum):
        if isinstance(value, hint):
            return value
        if not isinstance(value, str):
            allowed = ", ".join(f'"{e.value}"' for e in hint)
            raise ConfigError(key, value, f"a string, one of {allowed} (got {_describe(value)})")
        return _enum(hint, key, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, f"true or false, unquoted (got {_describe(value)})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            fix = f": write {int(value)}" if _describe(value) == "a float" else ""
            raise ConfigError(key, value, f"an integer (got {_describe(value)}{fix})")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(key, value, f"a number (got {_describe(value)})")
        if not math.isfinite(value):
            raise ConfigError(key, value, "a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, f"a string (got {_describe(value)})")
        return value
    raise AssertionError(f"no type check for {hint!r}")  # pragma: no cover - a new field type


def _check_types(obj: Any, prefix: str) -> None:
    """Check and normalise every field of a frozen configuration dataclass in place."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if not f.init or dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        object.__setattr__(obj, f.name, _coerce(key, getattr(obj, f.name), hints[f.name]))


def _enum(enum: type[Enum], key: str, value: object) -> Enum:
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(key, value, "one of " + ", ".join(e.value for e in enum)) from None


@dataclass(frozen=True)
class DataConfig:
    """The data set, its train/test split and the partition among clients."""

    dataset: Dataset = Dataset.DIGITS
    path: str | None = None
    partition: Partition = Partition.DIRICHLET
    alpha: float = 0.5
    test_fraction: float = 0.25
    synthetic_samples: int = 3000
    synthetic_features: int = 64
    synthetic_classes: int = 10
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _require(
            self.alpha > 0 and math.isfinite(self.alpha),
            "data.alpha",
            self.alpha,
            "a positive number",
        )
        _require(
            0 < self.test_fraction < 1,
            "data.test_fraction",
            self.test_fraction,
            "a number in (0, 1)",
        )
        _require(
            self.dataset is not Dataset.NPZ or bool(self.path),
            "data.path",
            self.path,
            "the path of a .npz file with arrays x and y (data.dataset = npz)",
        )
        _require(
            self.synthetic_samples >= 20,
            "data.synthetic_samples",
            self.synthetic_samples,
            "an integer >= 20",
        )
        _require(
            self.synthetic_features >= 1,
            "data.synthetic_features",
            self.synthetic_features,
            "an integer >= 1",
        )
        _require(
            self.synthetic_classes >= 2,
            "data.synthetic_classes",
            self.synthetic_classes,
            "an integer >= 2",
        )
        for key in ("synthetic_alpha", "synthetic_beta"):
            _require(
                getattr(self, key) >= 0,
                f"data.{key}",
                getattr(self, key),
                "a number >= 0 (the spread of Synthetic(alpha, beta) across clients; 0: none)",
            )


@dataclass(frozen=True)
class ModelConfig:
    """The reference model to train (any ``nn.Module`` can be passed from Python instead)."""

    name: ModelName = ModelName.MLP
    hidden: int = 64

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _require(self.hidden >= 1, "model.hidden", self.hidden, "an integer >= 1")


@dataclass(frozen=True)
class TrainingConfig:
    """Rounds, cohort sampling and local training."""

    rounds: int = 20
    clients: int = 10
    fraction: float = 1.0
    per_round: int | None = None
    min_clients: int = 3
    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    optimizer: Optimizer = Optimizer.SGD
    momentum: float = 0.0
    server_learning_rate: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self, "training")
        _require(self.rounds >= 1, "training.rounds", self.rounds, "an integer >= 1")
        _require(self.clients >= 2, "training.clients", self.clients, "an integer >= 2")
        _require(0 < self.fraction <= 1, "training.fraction", self.fraction, "a number in (0, 1]")
        _require(
            self.per_round is None or 2 <= self.per_round <= self.clients,
            "training.per_round",
            self.per_round,
            f"an integer in [2, training.clients = {self.clients}], or unset to use training.fraction",
        )
        _require(
            2 <= self.min_clients <= self.clients,
            "training.min_clients",
            self.min_clients,
            f"an integer in [2, training.clients = {self.clients}]",
        )
        _require(
            self.local_epochs >= 1, "training.local_epochs", self.local_epochs, "an integer >= 1"
        )
        _require(self.batch_size >= 1, "training.batch_size", self.batch_size, "an integer >= 1")
        _require(
            self.learning_rate > 0,
            "training.learning_rate",
            self.learning_rate,
            "a positive number",
        )
        _require(0 <= self.momentum < 1, "training.momentum", self.momentum, "a number in [0, 1)")
        _require(
            self.server_learning_rate > 0,
            "training.server_learning_rate",
            self.server_learning_rate,
            "a positive number (1.0 is FedAvg)",
        )

    @property
    def cohort_size(self) -> int:
        """Clients sampled per round: ``per_round`` if set, else the fraction of clients; never
        below ``min_clients``."""
        wanted = (
            self.per_round if self.per_round is not None else round(self.fraction * self.clients)
        )
        return min(self.clients, max(self.min_clients, wanted))


@dataclass(frozen=True)
class AlgorithmConfig:
    """The federated algorithm (:mod:`fl.algorithms`) and the stragglers of each round.

    ``stragglers`` is the fraction of every round's cohort that cannot finish its local epochs,
    drawn per round from the seed (the systems heterogeneity of Li et al. 2020, Sec. 5.2):
    FedAvg drops them; FedProx takes their partial work, a number of epochs drawn uniformly
    from 1 to ``training.local_epochs - 1``. ``mu`` weighs FedProx's proximal term
    (mu / 2) ||w - w_global||^2 in every client's local objective.
    """

    name: AlgorithmName = AlgorithmName.FEDAVG
    mu: float = 0.0
    stragglers: float = 0.0

    def __post_init__(self) -> None:
        _check_types(self, "algorithm")
        _require(self.mu >= 0, "algorithm.mu", self.mu, "a number >= 0 (0: no proximal term)")
        _require(
            self.mu == 0 or self.name is AlgorithmName.FEDPROX,
            "algorithm.mu",
            self.mu,
            "0 with FedAvg: mu weighs FedProx's proximal term (set algorithm.name = fedprox, "
            "--algorithm fedprox)",
        )
        _require(
            0 <= self.stragglers <= 1,
            "algorithm.stragglers",
            self.stragglers,
            "a fraction of each round's cohort in [0, 1]",
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """Synchronous rounds, or buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022),
    and the simulated clock both run on.

    Every client has a simulated speed, seconds per local step, drawn once from the seed:
    ``step_seconds`` times a lognormal factor exp(N(0, ``speed_sigma``^2)). A synchronous round
    lasts as long as its slowest client; in ``async`` mode ``concurrency`` clients train at any
    time, each on the model version it pulled, and every ``buffer`` arrivals form one
    secure-aggregation session (a server update). Unset, ``buffer`` is the cohort size
    (training.per_round or training.fraction) and ``concurrency`` twice the buffer (at most
    training.clients).
    """

    mode: ScheduleMode = ScheduleMode.SYNC
    buffer: int | None = None
    concurrency: int | None = None
    speed_sigma: float = 1.0
    step_seconds: float = 0.01

    def __post_init__(self) -> None:
        _check_types(self, "schedule")
        _require(
            self.buffer is None or self.buffer >= 1,
            "schedule.buffer",
            self.buffer,
            "an integer >= 1 (arrivals per server update), or unset for the cohort size",
        )
        _require(
            self.concurrency is None or self.concurrency >= 1,
            "schedule.concurrency",
            self.concurrency,
            "an integer >= 1 (clients training at once), or unset for twice the buffer",
        )
        _require(
            self.speed_sigma >= 0,
            "schedule.speed_sigma",
            self.speed_sigma,
            "a number >= 0 (the spread of client speeds; 0: all equally fast)",
        )
        _require(
            self.step_seconds > 0,
            "schedule.step_seconds",
            self.step_seconds,
            "a positive number of simulated seconds per local step",
        )
        for key in ("buffer", "concurrency"):
            _require(
                getattr(self, key) is None or self.mode is ScheduleMode.ASYNC,
                f"schedule.{key}",
                getattr(self, key),
                "unset in synchronous mode: it applies to schedule.mode = async (--mode async)",
            )


@dataclass(frozen=True)
class SecureConfig:
    """Secure aggregation of the updates, and the dropouts injected into it."""

    enabled: bool = True
    dropout: float = 0.1
    precision_bits: int = 16
    clip: float = 4.0
    max_weight: int = 10_000
    ring_bits: int | None = None
    threshold: int | None = None
    neighbours: int | None = None
    identities: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "secure")
        _require(0 <= self.dropout < 1, "secure.dropout", self.dropout, "a probability in [0, 1)")
        _require(
            0 <= self.precision_bits <= 40,
            "secure.precision_bits",
            self.precision_bits,
            "an integer in [0, 40]",
        )
        _require(
            self.clip > 0 and math.isfinite(self.clip),
            "secure.clip",
            self.clip,
            "a positive number",
        )
        _require(self.max_weight >= 1, "secure.max_weight", self.max_weight, "an integer >= 1")
        _require(
            self.ring_bits is None or 2 <= self.ring_bits <= 64,
            "secure.ring_bits",
            self.ring_bits,
            "an integer in [2, 64], or unset to size the ring automatically",
        )
        _require(
            self.threshold is None or self.threshold >= 1,
            "secure.threshold",
            self.threshold,
            "an integer >= 1, or unset for the recommended threshold",
        )
        _require(
            self.neighbours is None or self.neighbours >= 1,
            "secure.neighbours",
            self.neighbours,
            "an integer >= 1, or unset for the recommended graph",
        )


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy: sample level (DP-SGD on each client) or client level (distributed
    noise added before masking). Give a target ``epsilon`` or a ``noise_multiplier``.

    DP noise comes from ``os.urandom`` unless ``reproducible_noise`` seeds it from ``seed`` (for
    experiments that must replay exactly; never for data that needs protecting).

    ``exact_noise`` (client level, Skellam, with ``secure.identities``): after each round the
    clients remove the noise their certified survivors make unnecessary, so the sum carries the
    target variance whatever the dropouts (:mod:`dp.removable`); without identities each client
    keeps the worst case's share, V / (t - c), and the run says how much more that is.
    """

    level: PrivacyLevel = PrivacyLevel.NONE
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    accountant: AccountantKind = AccountantKind.RDP
    max_epsilon: float | None = None
    mechanism: Mechanism = Mechanism.SKELLAM
    ring_bits: int = 32
    max_physical_batch: int = 64
    ghost_clipping: bool = False
    reproducible_noise: bool = False
    exact_noise: bool = True

    def __post_init__(self) -> None:
        _check_types(self, "privacy")
        _require(
            0 < self.delta < 1,
            "privacy.delta",
            self.delta,
            "a number in (0, 1), below 1 / (records or clients)",
        )
        _require(
            self.clip > 0 and math.isfinite(self.clip),
            "privacy.clip",
            self.clip,
            "a positive clipping bound",
        )
        _require(
            self.epsilon is None or (self.epsilon > 0 and math.isfinite(self.epsilon)),
            "privacy.epsilon",
            self.epsilon,
            "a positive finite target (for no privacy use privacy.level = none)",
        )
        _require(
            self.noise_multiplier is None or self.noise_multiplier > 0,
            "privacy.noise_multiplier",
            self.noise_multiplier,
            "a positive number",
        )
        _require(
            self.max_epsilon is None or self.max_epsilon > 0,
            "privacy.max_epsilon",
            self.max_epsilon,
            "a positive budget",
        )
        _require(
            8 <= self.ring_bits <= 64, "privacy.ring_bits", self.ring_bits, "an integer in [8, 64]"
        )
        _require(
            self.max_physical_batch >= 1,
            "privacy.max_physical_batch",
            self.max_physical_batch,
            "an integer >= 1",
        )
        if self.level is PrivacyLevel.NONE:
            for key in ("epsilon", "noise_multiplier", "max_epsilon"):
                _require(
                    getattr(self, key) is None,
                    f"privacy.{key}",
                    getattr(self, key),
                    "it needs a privacy level: add privacy.level = sample, client or central "
                    "(--dp sample, --dp client or --dp central), or leave it out; without a "
                    "level the run has no differential privacy",
                )
        else:
            _require(
                (self.epsilon is None) != (self.noise_multiplier is None),
                "privacy.epsilon",
                self.epsilon,
                "set exactly one of privacy.epsilon (a target) and privacy.noise_multiplier",
            )
        if self.accountant is AccountantKind.PRV:
            _require(
                self.level is not PrivacyLevel.CLIENT,
                "privacy.accountant",
                self.accountant.value,
                "rdp or rdp-classic at client level (PRV covers the sampled Gaussian of DP-SGD)",
            )


@dataclass(frozen=True)
class PolicyConfig:
    """The floors every client of the federation holds against the server's proposal
    (:class:`secagg.ClientPolicy`; SECURITY.md, "Client policy"). Lowering them weakens what a
    dishonest server is kept from; the defaults are the secure ones."""

    min_clients: int = ClientPolicy.min_clients
    corrupt_fraction: float = ClientPolicy.corrupt_fraction
    security_bits: int = ClientPolicy.security_bits
    max_neighbour_loss: float = ClientPolicy.max_neighbour_loss
    allowed_ring_bits: tuple[int, ...] = (32, 64)
    min_noise_multiplier: float = ClientPolicy.min_noise_multiplier
    require_identities: bool = ClientPolicy.require_identities

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ring_bits", tuple(self.allowed_ring_bits))
        try:
            self.client_policy()
        except ConfigurationError as error:
            raise ConfigError("policy", dataclasses.asdict(self), str(error)) from None

    def client_policy(self) -> ClientPolicy:
        """The :class:`secagg.ClientPolicy` these settings describe."""
        return ClientPolicy(
            min_clients=self.min_clients,
            corrupt_fraction=self.corrupt_fraction,
            security_bits=self.security_bits,
            max_neighbour_loss=self.max_neighbour_loss,
            allowed_ring_bits=frozenset(self.allowed_ring_bits),
            min_noise_multiplier=self.min_noise_multiplier,
            require_identities=self.require_identities,
        )


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "algorithm": AlgorithmConfig,
    "schedule": ScheduleConfig,
    "secure": SecureConfig,
    "privacy": PrivacyConfig,
    "policy": PolicyConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs; build with :func:`load_config` or :meth:`from_dict`.

    ``seed`` fixes the data split, cohort sampling, dropouts, model initialisation, local
    training and stochastic rounding, so runs repeat exactly. It never touches the secure
    aggregation keys and masks, which always come from ``os.urandom`` (they cancel out of the
    sum, so the model does not depend on them).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    seed: int = 0
    device: Device = Device.AUTO
    out: str | None = None

    def __post_init__(self) -> None:
        _check_types(self, "")
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if self.privacy.level is PrivacyLevel.CLIENT:
            _require(
                self.secure.enabled,
                "privacy.level",
                "client",
                "client-level DP adds its noise before masking: keep secure.enabled = true",
            )
        self._check_algorithm()
        if self.schedule.mode is ScheduleMode.ASYNC:
            self._check_async()
            return
        cohort = self.training.cohort_size
        floor = self.policy.min_clients
        if self.secure.enabled and cohort < floor:
            raise ConfigError(
                "training.clients",
                self.training.clients,
                f"a cohort of at least {floor} clients per round: the clients' policy refuses "
                f"smaller sessions (policy.min_clients = {floor}); raise training.clients or "
                "training.per_round, or lower policy.min_clients (weaker protection)",
            )
        if self.secure.enabled and self.secure.threshold is not None:
            _require(
                self.secure.threshold <= cohort,
                "secure.threshold",
                self.secure.threshold,
                f"at most the cohort size {cohort} (training.clients x training.fraction)",
            )

    def _check_algorithm(self) -> None:
        algorithm = self.algorithm
        if algorithm.name is not AlgorithmName.FEDPROX:
            return
        _require(
            self.privacy.level is not PrivacyLevel.SAMPLE,
            "algorithm.name",
            algorithm.name.value,
            "fedavg with sample-level DP: DP-SGD runs in Opacus' optimiser, which has no "
            "proximal term (use client- or central-level DP with FedProx)",
        )
        _require(
            algorithm.stragglers == 0 or self.training.local_epochs >= 2,
            "algorithm.stragglers",
            algorithm.stragglers,
            "0 with training.local_epochs = 1: a FedProx straggler runs fewer epochs than the "
            "others, drawn from 1 to local_epochs - 1 (set training.local_epochs >= 2)",
        )

    def _check_async(self) -> None:
        """Buffered asynchronous aggregation: a session per ``buffer`` arrivals."""
        buffer, concurrency = self.async_buffer, self.async_concurrency
        clients = self.training.clients
        _require(
            concurrency <= clients,
            "schedule.concurrency",
            concurrency,
            f"at most training.clients = {clients} (each client trains one task at a time)",
        )
        _require(
            buffer <= concurrency,
            "schedule.buffer",
            buffer,
            f"at most schedule.concurrency = {concurrency}: a buffer fills with the arrivals of "
            "the clients training at once",
        )
        floor = self.policy.min_clients
        _require(
            not self.secure.enabled or buffer >= floor,
            "schedule.buffer",
            buffer,
            f"at least {floor}: every buffer is one secure-aggregation session of its K clients, "
            f"and the clients' policy refuses sessions below policy.min_clients = {floor}; raise "
            "--buffer, or lower policy.min_clients (weaker protection)",
        )
        _require(
            not self.secure.enabled
            or self.secure.threshold is None
            or self.secure.threshold <= buffer,
            "secure.threshold",
            self.secure.threshold,
            f"at most the buffer size {buffer} (one session per buffer)",
        )
        _require(
            self.privacy.level is PrivacyLevel.NONE,
            "schedule.mode",
            self.schedule.mode.value,
            "sync with differential privacy: the accounting composes sampled rounds, and "
            "asynchronous buffers are not sampled rounds (drop --dp, or use --mode sync)",
        )
        _require(
            self.algorithm.stragglers == 0,
            "algorithm.stragglers",
            self.algorithm.stragglers,
            "0 in async mode: slow clients are not cut off there, they arrive later (their "
            "speeds come from schedule.speed_sigma)",
        )

    @property
    def async_buffer(self) -> int:
        """K: arrivals per server update in async mode (default: the cohort size)."""
        buffer = self.schedule.buffer
        return buffer if buffer is not None else self.training.cohort_size

    @property
    def async_concurrency(self) -> int:
        """C: clients training at once in async mode (default: twice the buffer, at most all)."""
        concurrency = self.schedule.concurrency
        if concurrency is not None:
            return concurrency
        return min(self.training.clients, 2 * self.async_buffer)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from nested dicts (as parsed from TOML); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        for key in values:
            _require(
                key in known,
                key,
                values[key],
                "not a configuration key; known: " + ", ".join(sorted(known)),
            )
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            section = _SECTIONS.get(name)
            if section is None:
                kwargs[name] = value
                continue
            _require(isinstance(value, dict), name, value, "a table of settings")
            allowed = {f.name for f in fields(section)}
            for key in value:
                _require(
                    key in allowed,
                    f"{name}.{key}",
                    value[key],
                    "not a configuration key; known: " + ", ".join(sorted(allowed)),
                )
            try:
                kwargs[name] = section(**value)
            except TypeError as error:  # a value of the wrong type reaching a comparison
                raise ConfigError(name, value, str(error)) from None
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise ConfigError("config", values, str(error)) from None

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (enums as strings, unset values left out), ready for TOML."""

        def plain(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {
                    f.name: plain(getattr(obj, f.name))
                    for f in fields(obj)
                    if getattr(obj, f.name) is not None
                }
            if isinstance(obj, tuple):  # TOML has arrays only
                return [plain(item) for item in obj]
            return obj.value if isinstance(obj, Enum) else obj

        return plain(self)

    def to_toml(self) -> str:
        """The resolved configuration as TOML (what ``config.toml`` in the output folder holds)."""
        return tomli_w.dumps(self.to_dict())

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted keys replaced, e.g. ``{"training.rounds": 5}``; validated again."""
        return RunConfig.from_dict(_with_dotted(self.to_dict(), overrides))


def _with_dotted(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` (nested dicts, changed in place) with dotted keys such as
    ``"training.rounds"`` set."""
    for dotted, value in overrides.items():
        target = values
        *parents, last = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value.value if isinstance(value, Enum) else value
    return values


def parse_toml(
    text: str, *, source: str = "--config", overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Validate a configuration given as TOML text, with ``overrides`` (dotted keys, e.g. the
    command line's) applied first: the file and its overrides are checked as one whole, so a
    file's ``training.min_clients = 800`` is valid with ``--clients 10000`` on the command line.

    Raises:
        ConfigError: not TOML, or invalid values.
    """
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(source, f"not valid TOML ({error}); fix the file") from None
    try:
        return RunConfig.from_dict(_with_dotted(values, overrides or {}))
    except ConfigError as error:
        raise error.in_file(source) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a TOML configuration file, with ``overrides`` (dotted keys) applied
    before validation (:func:`parse_toml`).

    Raises:
        ConfigFileError: the file is missing, unreadable or not TOML.
        ConfigError: it holds invalid values (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigFileError(str(path), "is a folder; --config needs an existing TOML file")
    if not path.is_file():
        raise ConfigFileError(str(path), "not found; --config needs an existing TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigFileError(str(path), f"cannot be read ({reason})") from None
    return parse_toml(text, source=str(path), overrides=overrides)
