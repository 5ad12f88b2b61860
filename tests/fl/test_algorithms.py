"""FedAvg and FedProx as algorithm objects: the proximal term (Li et al. 2020, Eq. 2), stragglers
(Sec. 5.2: dropped by FedAvg, partial work under FedProx), and FedProx with mu = 0 as FedAvg."""

import numpy as np
import pytest
import torch
from torch import nn

from fl.algorithms.base import draw_stragglers, make_algorithm
from fl.algorithms.fedavg import FedAvg
from fl.algorithms.fedprox import FedProx
from fl.core.config import RunConfig, TrainingConfig
from fl.core.params import load_vector, to_vector
from fl.core.training import ProximalTerm, train_locally
from fl.engines.federation import Federation
from fl.engines.inprocess import run_federation
from fl.errors import ConfigError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_proximal_gradient_is_mu_times_the_distance_to_the_global_model():
    """add_gradient adds exactly the autograd gradient of (mu/2)||w - w_global||^2, and value()
    is that term."""
    model, anchor = _model(0), to_vector(_model(1))
    term = ProximalTerm(model, anchor, mu=0.7)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    term.add_gradient()
    added = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    term.value().backward()
    autograd = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(added, autograd, rtol=1e-6, atol=1e-7)
    assert torch.allclose(added, 0.7 * (to_vector(model) - anchor), rtol=1e-6, atol=1e-7)
    assert float(term.value().detach()) == pytest.approx(
        0.35 * float(((to_vector(model) - anchor) ** 2).sum()), rel=1e-5
    )


def test_local_training_takes_proximal_gradient_steps():
    """Two full-batch SGD steps from w_global: w1 = w0 - lr grad F(w0) (the term vanishes at
    w_global), w2 = w1 - lr (grad F(w1) + mu (w1 - w0)), computed by hand, equal the client's."""
    x = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 12)
    training = TrainingConfig(local_epochs=2, batch_size=12, learning_rate=0.5)
    mu, lr = 2.0, 0.5
    start = to_vector(_model(0))
    result = train_locally(
        _model(3),
        start,
        x,
        y,
        training=training,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        proximal_mu=mu,
    )
    by_hand, features, labels = _model(3), torch.as_tensor(x), torch.as_tensor(y)
    load_vector(by_hand, start)
    for _ in range(2):
        by_hand.zero_grad()
        nn.functional.cross_entropy(by_hand(features), labels).backward()
        with torch.no_grad():
            for parameter, anchor in zip(
                by_hand.parameters(),
                torch.split(start, [p.numel() for p in by_hand.parameters()]),
                strict=True,
            ):
                parameter -= lr * (parameter.grad + mu * (parameter - anchor.view_as(parameter)))
    expected = to_vector(by_hand) - start
    assert torch.allclose(torch.as_tensor(result.update.vector), expected, atol=1e-6)
    plain = train_locally(
        _model(3),
        start,
        x,
        y,
        training=training,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    assert not np.allclose(plain.update.vector, result.update.vector, atol=1e-4)


def _config(tmp_path, name, **overrides):
    values = {
        "training.clients": 6,
        "training.rounds": 2,
        "secure.dropout": 0.0,
        "out": str(tmp_path / name),
        **overrides,
    }
    return RunConfig().with_overrides(values)


def test_fedprox_with_mu_zero_and_no_stragglers_is_fedavg_bit_for_bit(tmp_path):
    """Same seed, no stragglers: FedProx(mu = 0), which runs its proximal term, ends at the very
    same model and metrics as FedAvg; FedProx(mu = 1) does not (the comparison has power)."""
    fedavg = run_federation(_config(tmp_path, "fedavg"))
    zero = run_federation(
        _config(tmp_path, "zero", **{"algorithm.name": "fedprox", "algorithm.mu": 0.0})
    )
    one = run_federation(
        _config(tmp_path, "one", **{"algorithm.name": "fedprox", "algorithm.mu": 1.0})
    )
    for a, b in zip(fedavg.model.parameters(), zero.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [m.loss for m in fedavg.history] == [m.loss for m in zero.history]
    assert not all(
        torch.equal(a, b)
        for a, b in zip(fedavg.model.parameters(), one.model.parameters(), strict=True)
    )
    assert zero.summary["algorithm"] == "fedprox" and fedavg.summary["algorithm"] == "fedavg"


def test_stragglers_are_a_seeded_fraction_of_the_cohort():
    """round(f K) distinct members of the cohort, the same for the same seed (so FedAvg and
    FedProx see the same stragglers), uniformly spread over the cohort."""
    cohort = list(range(11, 31))
    first = draw_stragglers(cohort, 0.9, np.random.default_rng([0, 3]))
    assert first == draw_stragglers(cohort, 0.9, np.random.default_rng([0, 3]))
    assert len(first) == 18 and first <= set(cohort)
    assert draw_stragglers(cohort, 0.0, np.random.default_rng(0)) == frozenset()
    counts = np.zeros(len(cohort))
    for seed in range(2000):
        for client in draw_stragglers(cohort, 0.25, np.random.default_rng(seed)):
            counts[cohort.index(client)] += 1
    expected = 2000 * 5 / 20
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_fedavg_drops_stragglers_and_fedprox_gives_them_partial_epochs():
    """FedAvg leaves the stragglers out of the plan; FedProx keeps them with 1 to E-1 epochs,
    drawn uniformly (each value appears), and the others with E."""
    cohort, stragglers = list(range(1, 11)), frozenset({2, 5, 7})
    assert sorted(FedAvg().plan_work(cohort, epochs=20, stragglers=stragglers, generator=None)) == [
        u for u in cohort if u not in stragglers
    ]
    seen = set()
    generator = np.random.default_rng(0)
    for _ in range(300):
        work = FedProx(mu=1.0).plan_work(
            cohort, epochs=5, stragglers=stragglers, generator=generator
        )
        assert set(work) == set(cohort)
        assert all(
            work[u].epochs == 5 and not work[u].partial for u in cohort if u not in stragglers
        )
        assert all(work[u].partial and 1 <= work[u].epochs <= 4 for u in stragglers)
        seen |= {work[u].epochs for u in stragglers}
    assert seen == {1, 2, 3, 4}


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_the_engine_runs_the_algorithms_plan(tmp_path, name, monkeypatch):
    """In the engine, a FedAvg round trains only the non-stragglers (the rest are counted as
    dropped), a FedProx round trains everyone, the stragglers for fewer epochs; both see the
    same stragglers, and the metrics count them."""
    trained: dict[int, list[tuple[int, int]]] = {}
    original = Federation._train_all

    def spy(self, round_index, tasks, starts=None):
        trained.setdefault(round_index, []).extend((t.client, t.work.epochs) for t in tasks)
        return original(self, round_index, tasks, starts)

    monkeypatch.setattr(Federation, "_train_all", spy)
    overrides = {
        "training.clients": 10,
        "training.local_epochs": 3,
        "algorithm.name": name,
        "algorithm.stragglers": 0.5,
        "secure.enabled": False,
    }
    result = run_federation(_config(tmp_path, name, **overrides))
    config = result.config
    for metrics in result.history:
        engine = Federation.__new__(Federation)
        engine.config, engine.algorithm = config, make_algorithm(config.algorithm)
        cohort = list(range(1, 11))
        plan = engine.plan_work(metrics.round - 1, cohort)
        got = dict(trained[metrics.round - 1])
        assert metrics.stragglers == 5
        if name == "fedavg":
            assert len(got) == 5 and all(epochs == 3 for epochs in got.values())
            assert metrics.dropped == 5
        else:
            assert len(got) == 10 and sum(epochs < 3 for epochs in got.values()) == 5
            assert metrics.dropped == 0
        assert got == {u: w.epochs for u, w in plan.items()}


@pytest.mark.parametrize(
    ("overrides", "key", "phrase"),
    [
        ({"algorithm.mu": 1.0}, "algorithm.mu", "fedprox"),
        ({"algorithm.stragglers": 1.5}, "algorithm.stragglers", "[0, 1]"),
        ({"algorithm.name": "fedprox", "algorithm.mu": -1.0}, "algorithm.mu", ">= 0"),
        (
            {
                "algorithm.name": "fedprox",
                "algorithm.stragglers": 0.5,
                "training.local_epochs": 1,
            },
            "algorithm.stragglers",
            "local_epochs >= 2",
        ),
        (
            {
                "algorithm.name": "fedprox",
                "privacy.level": "sample",
                "privacy.noise_multiplier": 1.0,
            },
            "algorithm.name",
            "proximal term",
        ),
    ],
)
def test_invalid_algorithm_settings_are_refused_with_the_fix(overrides, key, phrase):
    """Each bad [algorithm] setting is a ConfigError naming the key and what would work."""
    with pytest.raises(ConfigError) as error:
        RunConfig().with_overrides(overrides)
    assert error.value.key == key
    assert phrase in str(error.value)
