"""Data sets and their partition among clients.

Sources: scikit-learn's handwritten digits (1,797 8x8 images that ship with the package: no
download), a seeded synthetic Gaussian mixture of any size, Synthetic(alpha, beta) of the
FedProx paper (:mod:`fl.core.synthetic`: each client's data generated for it, any number of
clients), arrays ``x``/``y`` from a local ``.npz`` file, or the caller's own arrays, tensors or
``torch.utils.data.Dataset``. The test split is held out before partitioning (for
Synthetic(alpha, beta), from each client's own examples, as in the paper), so no client ever
trains on test examples.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl.core.config import DataConfig, Dataset, Partition
from fl.errors import DataError

__all__ = [
    "ClientData",
    "FederatedData",
    "SyntheticClients",
    "arrays_from_dataset",
    "build_federated_data",
    "load_digits_arrays",
    "load_npz",
    "partition_dirichlet",
    "partition_iid",
    "synthetic_arrays",
    "synthetic_clients",
    "synthetic_federation",
]

_MIN_EXAMPLES_PER_CLIENT = 2


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Train and test arrays, and each client's share of the training examples.

    Attributes:
        train_x, train_y: training features (float32, one row per example) and labels (int64).
        test_x, test_y: the held-out test set.
        client_indices: for each client (id = position + 1), the indices of its examples.
        num_classes: number of label values.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    client_indices: tuple[np.ndarray, ...]
    num_classes: int

    @property
    def num_features(self) -> int:
        """Features per example (flattened)."""
        return int(np.prod(self.train_x.shape[1:]))

    @property
    def client_sizes(self) -> tuple[int, ...]:
        """Each client's number of training examples (client id = position + 1)."""
        return tuple(len(indices) for indices in self.client_indices)

    def client_arrays(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The training examples of client ``client_id`` (1-based)."""
        indices = self.client_indices[client_id - 1]
        return self.train_x[indices], self.train_y[indices]


@dataclass(frozen=True, eq=False)
class SyntheticClients:
    """Synthetic(alpha, beta) whose clients' training examples are generated when asked for
    (:meth:`client_arrays`), from the client's own seed stream, so a run holds only the test set
    and the cohort's examples: O(cohort) memory rather than O(all clients) (10,000 clients hold
    about 1 GB of training examples). The examples are those of :func:`synthetic_federation`
    for the same seed, bit for bit.

    Attributes:
        alpha, beta: the data set's spreads (Li et al. 2020, Sec. 5.1).
        seed: the data set's seed.
        test_fraction: the share of each client's examples held out.
        test_x, test_y: the held-out test set (every client's held-out examples).
        client_sizes: each client's number of training examples.
    """

    alpha: float
    beta: float
    seed: int
    test_fraction: float
    test_x: np.ndarray
    test_y: np.ndarray
    client_sizes: tuple[int, ...]

    @property
    def num_features(self) -> int:
        """Features per example."""
        return int(self.test_x.shape[1])

    @property
    def num_classes(self) -> int:
        """Label values."""
        from fl.core.synthetic import CLASSES

        return CLASSES

    def client_arrays(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The training examples of client ``client_id`` (1-based), generated now.

        Raises:
            DataError: no such client.
        """
        if not 1 <= client_id <= len(self.client_sizes):
            raise DataError(f"client ids run from 1 to {len(self.client_sizes)}, got {client_id}")
        x, y, train, _ = _synthetic_split(
            client_id,
            alpha=self.alpha,
            beta=self.beta,
            seed=self.seed,
            test_fraction=self.test_fraction,
        )
        return x[train], y[train]


ClientData = FederatedData | SyntheticClients
"""What an engine reads a federation's data from: clients' examples, sizes and the test set."""


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 1,797 examples of 64 pixel intensities scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def synthetic_arrays(
    samples: int, features: int, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian mixture: one unit-variance cluster per class around a random centre."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(0.0, 2.0, size=(classes, features))
    y = generator.integers(0, classes, size=samples)
    x = centres[y] + generator.normal(size=(samples, features))
    return x.astype(np.float32), y.astype(np.int64)


def synthetic_federation(config: DataConfig, *, clients: int, seed: int) -> FederatedData:
    """Synthetic(alpha, beta) for ``clients`` clients, every client's examples in memory: each
    client's examples are generated for it (:func:`fl.core.synthetic.synthetic_client`), and
    ``config.test_fraction`` of each client's examples, shuffled, are held out; the test set is
    all clients' held-out examples (Li et al. 2020 hold out 10% of every device's data). Runs
    use :func:`synthetic_clients`, which generates the same training examples on demand."""
    from fl.core.synthetic import CLASSES

    train_x, train_y, test_x, test_y, shards = [], [], [], [], []
    offset = 0
    for client in range(1, clients + 1):
        x, y, train, test = _synthetic_split(
            client,
            alpha=config.synthetic_alpha,
            beta=config.synthetic_beta,
            seed=seed,
            test_fraction=config.test_fraction,
        )
        train_x.append(x[train])
        train_y.append(y[train])
        test_x.append(x[test])
        test_y.append(y[test])
        shards.append(np.arange(offset, offset + len(train), dtype=np.int64))
        offset += len(train)
    return FederatedData(
        train_x=np.concatenate(train_x),
        train_y=np.concatenate(train_y),
        test_x=np.concatenate(test_x),
        test_y=np.concatenate(test_y),
        client_indices=tuple(shards),
        num_classes=CLASSES,
    )


def _synthetic_split(
    client: int, *, alpha: float, beta: float, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Client ``client``'s examples and the positions of its training and held-out ones."""
    from fl.core.synthetic import synthetic_client

    x, y = synthetic_client(client, alpha=alpha, beta=beta, seed=seed)
    order = np.random.default_rng([seed, 0xDA7A, client]).permutation(len(y))
    held_out = max(1, round(test_fraction * len(y)))
    return x, y, order[held_out:], order[:held_out]


def synthetic_clients(config: DataConfig, *, clients: int, seed: int) -> SyntheticClients:
    """Synthetic(alpha, beta) for ``clients`` clients with only the test set in memory: each
    client's examples are generated once here for its held-out part, and again whenever its
    training examples are asked for (the same examples as :func:`synthetic_federation`)."""
    from fl.core.synthetic import FEATURES, client_size

    totals = [client_size(client, seed=seed) for client in range(1, clients + 1)]
    held_out = [max(1, round(config.test_fraction * n)) for n in totals]
    # filled in place: the test set is never held twice (a concatenation would)
    test_x = np.empty((sum(held_out), FEATURES), dtype=np.float32)
    test_y = np.empty(sum(held_out), dtype=np.int64)
    offset = 0
    for client, count in enumerate(held_out, start=1):
        x, y, _, test = _synthetic_split(
            client,
            alpha=config.synthetic_alpha,
            beta=config.synthetic_beta,
            seed=seed,
            test_fraction=config.test_fraction,
        )
        test_x[offset : offset + count], test_y[offset : offset + count] = x[test], y[test]
        offset += count
    return SyntheticClients(
        alpha=config.synthetic_alpha,
        beta=config.synthetic_beta,
        seed=seed,
        test_fraction=config.test_fraction,
        test_x=test_x,
        test_y=test_y,
        client_sizes=tuple(n - h for n, h in zip(totals, held_out, strict=True)),
    )


def _validated(x: Any, y: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{source}: x must be (examples, features...) and y (examples,) with the same length; "
            f"got x {x.shape} and y {y.shape}"
        )
    if len(y) < 2 * _MIN_EXAMPLES_PER_CLIENT:
        raise DataError(f"{source}: only {len(y)} examples")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(f"{source}: labels y must be non-negative integers, got {y.dtype}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise DataError(f"{source}: features x must be finite numbers")
    return x.reshape(len(x), -1).astype(np.float32), y.astype(np.int64)


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` (examples, features...) and ``y`` (integer labels) from a local ``.npz`` file.

    Raises:
        DataError: the file is missing, unreadable, or lacks valid ``x`` and ``y`` arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; pass the path of a .npz with arrays x and y"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{path} lacks array(s) {sorted(missing)}; it has {archive.files}")
            return _validated(archive["x"], archive["y"], str(path))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable .npz file: {error}") from None


def arrays_from_dataset(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Arrays from a ``torch.utils.data.Dataset`` of ``(features, label)`` pairs, or from a pair
    ``(x, y)`` of arrays or tensors."""
    if isinstance(dataset, tuple) and len(dataset) == 2:
        x, y = (v.detach().cpu().numpy() if hasattr(v, "detach") else v for v in dataset)
        return _validated(x, y, "the given arrays")
    pairs = [dataset[i] for i in range(len(dataset))]
    x = np.stack(
        [np.asarray(p[0].detach().cpu() if hasattr(p[0], "detach") else p[0]) for p in pairs]
    )
    y = np.array([int(p[1]) for p in pairs])
    return _validated(x, y, "the given dataset")


def partition_iid(
    labels: np.ndarray, clients: int, generator: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle and deal the examples into ``clients`` shards of (nearly) equal size."""
    order = generator.permutation(len(labels))
    return [np.sort(shard) for shard in np.array_split(order, clients)]


def partition_dirichlet(
    labels: np.ndarray,
    clients: int,
    alpha: float,
    generator: np.random.Generator,
    *,
    attempts: int = 100,
) -> list[np.ndarray]:
    """Non-IID shards: each class is split among clients in Dirichlet(alpha) proportions.

    Smaller ``alpha`` gives more skewed label mixes (Hsu et al. 2019). Draws are repeated until
    every client has at least two examples.

    Raises:
        DataError: no draw in ``attempts`` gives every client two examples (too few examples,
            too many clients or too small an ``alpha``).
    """
    for _ in range(attempts):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            members = generator.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(generator.dirichlet([alpha] * clients)) * len(members)).astype(int)[
                :-1
            ]
            for shard, part in zip(shards, np.split(members, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= _MIN_EXAMPLES_PER_CLIENT:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise DataError(
        f"Dirichlet({alpha}) left a client with fewer than {_MIN_EXAMPLES_PER_CLIENT} examples in "
        f"{attempts} draws; use fewer clients, a larger alpha, or more data"
    )


def build_federated_data(
    config: DataConfig,
    *,
    clients: int,
    seed: int,
    arrays: Any = None,
) -> ClientData:
    """Load the configured data (or take ``arrays``: an ``(x, y)`` pair of arrays or tensors, or a
    ``torch.utils.data.Dataset``), hold out the test set, and partition the rest among clients.
    Synthetic(alpha, beta) comes as :class:`SyntheticClients` (clients generated on demand)."""
    if arrays is None and config.dataset is Dataset.FEDPROX_SYNTHETIC:
        return synthetic_clients(config, clients=clients, seed=seed)
    if arrays is not None:
        x, y = arrays_from_dataset(arrays)
    elif config.dataset is Dataset.DIGITS:
        x, y = load_digits_arrays()
    elif config.dataset is Dataset.SYNTHETIC:
        x, y = synthetic_arrays(
            config.synthetic_samples, config.synthetic_features, config.synthetic_classes, seed
        )
    else:
        x, y = load_npz(config.path)
    generator = np.random.default_rng([seed, 0xDA7A])
    order = generator.permutation(len(y))
    test_count = max(1, round(config.test_fraction * len(y)))
    test, train = order[:test_count], order[test_count:]
    if len(train) < clients * _MIN_EXAMPLES_PER_CLIENT:
        raise DataError(f"{len(train)} training examples cannot give {clients} clients two each")
    if config.partition is Partition.IID:
        shards = partition_iid(y[train], clients, generator)
    else:
        shards = partition_dirichlet(y[train], clients, config.alpha, generator)
    return FederatedData(
        train_x=x[train],
        train_y=y[train],
        test_x=x[test],
        test_y=y[test],
        client_indices=tuple(shards),
        num_classes=int(y.max()) + 1,
    )
