"""The in-process federation: learning, exact resume, dropouts, and errors before round 1."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import secagg
from fl.core.config import RunConfig
from fl.engines.federation import draw_dropouts
from fl.engines.inprocess import run_federation
from fl.errors import ConfigError, FLError, NonFiniteUpdateWarning


def _config(tmp_path, name="run", **overrides):
    values = {"training.clients": 6, "training.rounds": 3, "out": str(tmp_path / name), **overrides}
    return RunConfig().with_overrides(values)


def test_three_rounds_improve_accuracy_and_write_outputs(tmp_path):
    """A 3-round, 5-client secure run beats its first round and writes the four output files."""
    result = run_federation(_config(tmp_path))
    accuracies = [m.accuracy for m in result.history]
    assert len(accuracies) == 3
    assert accuracies[-1] > accuracies[0]
    for name in ("config.toml", "metrics.jsonl", "summary.json", "training.png"):
        assert (result.out / name).is_file(), name
    assert len((result.out / "metrics.jsonl").read_text().splitlines()) == 3
    assert result.summary["rounds"] == 3 and result.summary["secure_aggregation"]


def test_resume_gives_a_bit_identical_model(tmp_path):
    """Two rounds, then resume to four == four rounds straight (same seed)."""
    straight = run_federation(_config(tmp_path, "straight", **{"training.rounds": 4}))
    run_federation(_config(tmp_path, "resumed", **{"training.rounds": 2}))
    resumed = run_federation(_config(tmp_path, "resumed", **{"training.rounds": 4}), resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [m.accuracy for m in straight.history] == [m.accuracy for m in resumed.history]


def test_interrupted_round_loses_only_that_round(tmp_path):
    """Metrics written for a round whose checkpoint never landed are dropped on resume."""
    config = _config(tmp_path, **{"training.rounds": 2})
    run_federation(config)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(
        metrics.read_text()
        + metrics.read_text().splitlines()[-1].replace('"round": 2', '"round": 3')
        + "\n"
    )
    with pytest.warns(
        UserWarning, match=r"metrics\.jsonl: dropped 1 line\(s\) of round\(s\) after round 2"
    ):
        result = run_federation(config.with_overrides({"training.rounds": 3}), resume=True)
    assert [m.round for m in result.history] == [1, 2, 3]


def test_existing_run_is_not_overwritten(tmp_path):
    """Starting a new run in a folder that holds one is an error; so is resuming with other settings."""
    config = _config(tmp_path, **{"training.rounds": 1})
    run_federation(config)
    with pytest.raises(FLError, match="--resume"):
        run_federation(config)
    with pytest.raises(FLError, match=r"training\.clients"):
        run_federation(config.with_overrides({"training.clients": 7}), resume=True)


def test_secure_and_plaintext_runs_agree_within_quantisation(tmp_path):
    """Secure FedAvg and plaintext FedAvg from the same seed end at nearly the same model."""
    settings = {"training.rounds": 2, "training.clients": 6}  # no round fails at 6 clients
    secure = run_federation(_config(tmp_path, "secure", **settings))
    plain = run_federation(_config(tmp_path, "plain", **settings, **{"secure.enabled": False}))
    assert not any(m.failed for m in secure.history)
    difference = max(
        float((a - b).detach().abs().max())
        for a, b in zip(secure.model.parameters(), plain.model.parameters(), strict=True)
    )
    assert difference < 1e-3
    assert [m.dropped for m in secure.history] == [m.dropped for m in plain.history]


@pytest.mark.parametrize("phase", list(secagg.Phase))
def test_dropouts_in_every_phase_are_survived(tmp_path, phase, monkeypatch):
    """While at least t clients remain (and each keeps its policy's neighbourhood floor), a round
    survives dropouts in any phase: 7 clients, t = 5, two drop."""
    import fl.engines.federation as simulation

    monkeypatch.setattr(
        simulation, "draw_dropouts", lambda cohort, *_a, **_k: {cohort[0]: phase, cohort[1]: phase}
    )
    config = _config(
        tmp_path, **{"training.rounds": 1, "training.clients": 7, "secure.identities": True}
    )
    result = run_federation(config)
    (metrics,) = result.history
    assert not metrics.failed
    expected_dropped = 0 if phase in (secagg.Phase.CONSISTENCY_CHECK, secagg.Phase.UNMASK) else 2
    assert metrics.dropped == expected_dropped


def test_too_many_dropouts_fail_the_round_but_not_the_run(tmp_path, monkeypatch):
    """Below the threshold the round is recorded as failed and the model is unchanged."""
    import fl.engines.federation as simulation

    monkeypatch.setattr(
        simulation,
        "draw_dropouts",
        lambda cohort, *_a, **_k: dict.fromkeys(cohort[:4], secagg.Phase.SHARE_KEYS),
    )
    result = run_federation(_config(tmp_path, **{"training.rounds": 1}))
    assert result.history[0].failed


def test_dropout_draws_follow_the_probability():
    """About p of the clients drop, in phases that exist for the identity setting."""
    generator = np.random.default_rng(0)
    drops = draw_dropouts(list(range(1, 10001)), 0.2, identities=False, generator=generator)
    assert 1800 < len(drops) < 2200
    assert secagg.Phase.CONSISTENCY_CHECK not in set(drops.values())


def test_model_that_does_not_fit_the_data_fails_before_round_one(tmp_path):
    """A model with the wrong input size is a ConfigError before any training."""
    with pytest.raises(ConfigError, match="model"):
        run_federation(_config(tmp_path), model=nn.Linear(10, 10))
    with pytest.raises(ConfigError, match="secure"):
        run_federation(
            _config(tmp_path, "t", **{"secure.precision_bits": 40, "secure.ring_bits": 32})
        )


def test_any_module_can_be_trained(tmp_path):
    """A user's own nn.Module trains through the same loop."""
    model = nn.Sequential(nn.Linear(64, 10))
    result = run_federation(_config(tmp_path, **{"training.rounds": 2}), model=model)
    assert result.model is model and result.history[-1].accuracy > 0.3


def test_a_torch_dataset_can_be_the_data(tmp_path):
    """run_federation accepts a torch Dataset in place of the configured data."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 64, generator=generator)
    y = (x[:, 0] > 0).long()
    result = run_federation(
        _config(tmp_path, **{"training.rounds": 2}), arrays=torch.utils.data.TensorDataset(x, y)
    )
    assert len(result.history) == 2
    assert result.model(x[:3]).shape == (3, 2)  # two classes, read from the dataset's labels


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plaintext"])
def test_diverging_clients_are_left_out_and_json_stays_valid(tmp_path, secure):
    """`learning_rate = 1e30` made the secure run abort naming no client or round, and
    `--no-secure` write NaN into metrics.jsonl and summary.json. Now each non-finite update is
    left out with a warning naming its client and round, counted in the metrics, and both
    files are strict JSON."""
    config = _config(
        tmp_path,
        **{"training.rounds": 1, "training.learning_rate": 1e30, "secure.enabled": secure},
    )
    with pytest.warns(NonFiniteUpdateWarning, match=r"round 1: client\(s\) 1, 2, 3, 4, 5, 6 sent"):
        result = run_federation(config)
    (metrics,) = result.history
    assert metrics.non_finite == (1, 2, 3, 4, 5, 6) and metrics.failed
    strict = {"parse_constant": pytest.fail}
    json.loads((result.out / "summary.json").read_text(), **strict)
    for line in (result.out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, **strict)
    assert result.summary["non_finite_updates"] == 6


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plaintext"])
def test_one_diverging_client_is_dropped_and_the_round_goes_on(tmp_path, secure, monkeypatch):
    """A single client whose update is NaN is left out of the mean; the others are averaged
    and the model stays finite."""
    import fl.engines.federation
    import fl.engines.local

    train = fl.engines.local.train_locally

    def diverging(*args, **kwargs):
        local = train(*args, **kwargs)
        if kwargs["generator"].initial_seed() == fl.engines.federation.stream_seed(0, 0, 2):
            local.update.vector[0] = np.nan
        return local

    monkeypatch.setattr(fl.engines.local, "train_locally", diverging)
    monkeypatch.setattr(fl.engines.federation, "draw_dropouts", lambda *_a, **_k: {})
    config = _config(
        tmp_path, **{"training.rounds": 1, "training.clients": 6, "secure.enabled": secure}
    )
    with pytest.warns(NonFiniteUpdateWarning, match=r"round 1: client\(s\) 2 sent"):
        result = run_federation(config)
    (metrics,) = result.history
    assert not metrics.failed and metrics.non_finite == (2,) and metrics.dropped == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_failed_round_records_the_real_dropouts(tmp_path, monkeypatch):
    """A failed round was logged as dropped = cohort, bytes up = 0: now it records the clients
    that really dropped out (4 of 6), and the bytes the protocol moved before it ended."""
    import fl.engines.federation

    monkeypatch.setattr(
        fl.engines.federation,
        "draw_dropouts",
        lambda cohort, *_a, **_k: dict.fromkeys(cohort[:4], secagg.Phase.SHARE_KEYS),
    )
    result = run_federation(_config(tmp_path, **{"training.rounds": 1}))
    (metrics,) = result.history
    assert metrics.failed and metrics.sampled == 6
    assert metrics.dropped == 4 and metrics.bytes_up > 0 and metrics.bytes_down > 0
    line = json.loads((result.out / "metrics.jsonl").read_text())
    assert line["dropped"] == 4 and line["bytes_up"] == metrics.bytes_up
