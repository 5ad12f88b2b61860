"""Data loading and partitioning: disjoint shards, non-IID skew, local files, clear errors."""

import numpy as np
import pytest
import torch

from fl.core.config import DataConfig
from fl.core.data import (
    arrays_from_dataset,
    build_federated_data,
    load_npz,
    partition_dirichlet,
    partition_iid,
)
from fl.errors import DataError


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_shards_are_disjoint_and_cover_the_training_set(partition):
    """Every training example belongs to exactly one client; test examples to none."""
    data = build_federated_data(DataConfig(partition=partition), clients=10, seed=0)
    combined = np.concatenate(data.client_indices)
    assert len(combined) == len(set(combined.tolist())) == len(data.train_y)
    assert len(data.test_y) == round(0.25 * 1797)
    assert min(len(s) for s in data.client_indices) >= 2


def test_dirichlet_is_more_skewed_than_iid():
    """Smaller alpha concentrates labels: the mean per-client label entropy drops."""

    def mean_entropy(shards, labels):
        values = []
        for shard in shards:
            counts = np.bincount(labels[shard], minlength=10) / len(shard)
            counts = counts[counts > 0]
            values.append(-(counts * np.log(counts)).sum())
        return np.mean(values)

    labels = np.repeat(np.arange(10), 100)
    generator = np.random.default_rng(0)
    iid = mean_entropy(partition_iid(labels, 10, generator), labels)
    skewed = mean_entropy(partition_dirichlet(labels, 10, 0.1, generator), labels)
    assert skewed < iid - 0.5


def test_seed_fixes_the_partition():
    """The same seed gives the same split; another seed another one."""
    a = build_federated_data(DataConfig(), clients=5, seed=1)
    b = build_federated_data(DataConfig(), clients=5, seed=1)
    c = build_federated_data(DataConfig(), clients=5, seed=2)
    assert all(
        np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices, strict=True)
    )
    assert not all(
        np.array_equal(x, y) for x, y in zip(a.client_indices, c.client_indices, strict=True)
    )


def test_npz_files_load_and_bad_files_fail(tmp_path):
    """A local .npz with x and y loads; missing files or arrays raise DataError."""
    x = np.random.default_rng(0).normal(size=(40, 3, 4)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    loaded_x, loaded_y = load_npz(tmp_path / "ok.npz")
    assert loaded_x.shape == (40, 12) and np.array_equal(loaded_y, y)
    data = build_federated_data(
        DataConfig(dataset="npz", path=str(tmp_path / "ok.npz"), partition="iid"), clients=4, seed=0
    )
    assert data.num_features == 12 and data.num_classes == 4
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match="lacks"):
        load_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")


def test_user_tensors_and_datasets():
    """Tensors, arrays and torch Datasets are accepted as the data."""
    x, y = torch.randn(30, 5), torch.arange(30) % 3
    arrays = arrays_from_dataset((x, y))
    assert arrays[0].shape == (30, 5)
    from_dataset = arrays_from_dataset(torch.utils.data.TensorDataset(x, y))
    assert np.allclose(from_dataset[0], arrays[0]) and np.array_equal(from_dataset[1], arrays[1])
    with pytest.raises(DataError):
        arrays_from_dataset((np.zeros((3, 2)), np.zeros(4, dtype=int)))


def test_too_many_clients_for_the_data():
    """More clients than examples allow is a clear error."""
    with pytest.raises(DataError):
        build_federated_data(
            DataConfig(dataset="synthetic", synthetic_samples=20), clients=50, seed=0
        )
