"""Differential privacy in the federation: DP-SGD and distributed noise end to end, the ledger,
the budget stop, resume, sweeps, and errors before training."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.cli.sweep import (
    SweepRefusedWarning,
    parse_epsilons,
    plan_sweep,
    run_sweep,
    summarise,
    write_outputs,
)
from fl.core.config import RunConfig
from fl.engines.inprocess import run_federation
from fl.errors import ConfigError


def _config(tmp_path, name="run", **overrides):
    values = {
        "training.clients": 5,
        "training.rounds": 3,
        "training.local_epochs": 1,
        "out": str(tmp_path / name),
    }
    return RunConfig().with_overrides({**values, **overrides})


def _epsilons(result):
    return [m.epsilon for m in result.history]


def test_sample_level_dp_runs_and_meets_its_target(tmp_path):
    """DP-SGD on CPU end to end: epsilon per round rises to at most the target; privacy.json."""
    result = run_federation(
        _config(tmp_path, **{"privacy.level": "sample", "privacy.epsilon": 3.0})
    )
    epsilons = _epsilons(result)
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert epsilons[-1] <= 3.0 + 1e-6
    privacy = json.loads((result.out / "privacy.json").read_text())
    assert privacy["level"] == "sample" and len(privacy["epsilon_per_client"]) == 5
    assert result.summary["epsilon"] == epsilons[-1]


def test_client_level_dp_runs_and_meets_its_target(tmp_path):
    """Distributed Skellam noise through secure aggregation; the federation's epsilon is reported."""
    result = run_federation(
        _config(tmp_path, **{"privacy.level": "client", "privacy.epsilon": 5.0})
    )
    epsilons = _epsilons(result)
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] <= 5.0 + 1e-6
    entry = json.loads((result.out / "privacy.json").read_text())["client_entries"][0]
    assert entry["mechanism"] == "skellam" and entry["wrap_probability"] <= 1e-6


def test_discrete_gaussian_mechanism(tmp_path):
    """The distributed discrete Gaussian is available as the client-level mechanism."""
    config = _config(
        tmp_path,
        **{"privacy.level": "client", "privacy.noise_multiplier": 1.0, "privacy.mechanism": "ddg"},
    )
    result = run_federation(config)
    assert result.history[-1].epsilon > 0


def test_budget_stop_and_resume_keep_the_spent_budget(tmp_path):
    """--max-epsilon stops before a round that could pass it, with a checkpoint; resuming with a
    larger budget continues from the recorded epsilon, never from zero."""
    settings = {
        "training.rounds": 6,
        "privacy.level": "sample",
        "privacy.noise_multiplier": 1.0,
        "privacy.reproducible_noise": True,  # the same released record counts in both runs
    }
    config = _config(tmp_path, **settings)
    full = run_federation(_config(tmp_path, "full", **settings))
    budget = full.history[2].epsilon * 1.001  # room for three rounds
    stopped = run_federation(config.with_overrides({"privacy.max_epsilon": budget}))
    assert len(stopped.history) == 3 and stopped.summary["stopped_early"]
    resumed = run_federation(config.with_overrides({"privacy.max_epsilon": 1000.0}), resume=True)
    assert len(resumed.history) == 6
    assert _epsilons(resumed)[:3] == _epsilons(stopped)
    assert _epsilons(resumed)[3] > _epsilons(stopped)[-1]


def test_sample_level_delta_must_be_below_one_over_records(tmp_path):
    """delta >= 1/n (n = the smallest client's examples) is refused before training."""
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        run_federation(
            _config(
                tmp_path,
                **{"privacy.level": "sample", "privacy.epsilon": 1.0, "privacy.delta": 0.5},
            )
        )


def test_client_level_delta_must_be_below_one_over_clients(tmp_path):
    """At client level delta must be below 1/clients."""
    with pytest.raises(ConfigError, match=r"privacy\.delta"):
        run_federation(
            _config(
                tmp_path,
                **{"privacy.level": "client", "privacy.epsilon": 1.0, "privacy.delta": 0.3},
            )
        )


def test_unreachable_target_is_refused_before_training(tmp_path):
    """A target no noise level can reach (here: tiny) is a ConfigError naming privacy.epsilon."""
    with pytest.raises(ConfigError, match=r"privacy\.epsilon"):
        run_federation(_config(tmp_path, **{"privacy.level": "sample", "privacy.epsilon": 1e-4}))


def test_layers_opacus_cannot_handle_are_refused(tmp_path, monkeypatch):
    """A layer that ModuleValidator flags and cannot fix is a clear error before round 1."""
    from opacus.validators import ModuleValidator

    monkeypatch.setattr(ModuleValidator, "fix", staticmethod(lambda module, **_: module))
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="BatchNorm"):
        run_federation(
            _config(tmp_path, **{"privacy.level": "sample", "privacy.epsilon": 2.0}), model=model
        )


def test_fixable_layers_are_fixed(tmp_path):
    """BatchNorm is replaced (GroupNorm) so DP-SGD can train the model."""
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    result = run_federation(
        _config(
            tmp_path, **{"training.rounds": 1, "privacy.level": "sample", "privacy.epsilon": 8.0}
        ),
        model=model,
    )
    assert not any(isinstance(m, nn.BatchNorm1d) for m in result.model.modules())


def test_ghost_clipping_option(tmp_path):
    """Opacus' ghost clipping trains the same federation."""
    config = _config(
        tmp_path,
        **{
            "training.rounds": 1,
            "privacy.level": "sample",
            "privacy.epsilon": 4.0,
            "privacy.ghost_clipping": True,
        },
    )
    assert run_federation(config).history[-1].epsilon > 0


def test_reproducible_noise_replays_exactly(tmp_path):
    """With privacy.reproducible_noise the DP run repeats bit for bit; by default it does not."""
    settings = {
        "training.rounds": 2,
        "privacy.level": "sample",
        "privacy.noise_multiplier": 1.0,
        "privacy.reproducible_noise": True,
    }
    a = run_federation(_config(tmp_path, "a", **settings))
    b = run_federation(_config(tmp_path, "b", **settings))
    assert all(
        torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; runs where a GPU is present"
)
def test_sample_level_dp_on_the_gpu(tmp_path):
    """The same DP-SGD code path trains on CUDA."""
    result = run_federation(
        _config(tmp_path, **{"device": "cuda", "privacy.level": "sample", "privacy.epsilon": 2.0})
    )
    assert result.summary["device"].startswith("cuda")
    assert result.history[-1].epsilon <= 2.0 + 1e-6


def test_sweep_over_two_epsilons_writes_its_files(tmp_path):
    """Two epsilons plus the non-private reference: sweep.csv, sweep.json, the plot; resumable."""
    base = _config(tmp_path, **{"training.rounds": 2})
    points = plan_sweep(
        base,
        epsilons=parse_epsilons("1,8"),
        level=base.privacy.level.__class__("sample"),
        seeds=1,
        out=tmp_path / "sweep",
    )
    assert len(points) == 3
    rows = run_sweep(points, jobs=1)
    write_outputs(tmp_path / "sweep", rows, level=base.privacy.level.__class__("sample"))
    for name in ("sweep.csv", "sweep.json", "accuracy_vs_epsilon.png"):
        assert (tmp_path / "sweep" / name).is_file()
    table = summarise(rows)
    assert [t["epsilon"] for t in table][-1] == float("inf")
    cached = []
    run_sweep(points, jobs=1, on_result=lambda row, was_cached: cached.append(was_cached))
    assert cached == [True, True, True]


def test_a_refused_point_is_reported_and_the_sweep_goes_on(tmp_path):
    """A point whose run refuses its configuration before round 1 (here delta above 1 / the
    smallest client's record count) does not stop the sweep: it is a visible warning naming the
    point and the reason, the other points run, and sweep.json lists it under `refused`."""
    base = _config(tmp_path, **{"training.rounds": 1, "privacy.delta": 0.2})
    sample = base.privacy.level.__class__("sample")
    points = plan_sweep(
        base, epsilons=parse_epsilons("2,inf"), level=sample, seeds=1, out=tmp_path / "sweep"
    )
    with pytest.warns(SweepRefusedWarning, match=r"sample-level epsilon 2 seed 0 .*privacy\.delta"):
        rows = run_sweep(points, jobs=1)
    assert [(r.level, r.epsilon) for r in rows] == [("none", float("inf"))]
    refused = []
    again = run_sweep(points, jobs=1, on_refused=refused.append)  # the reference is cached
    assert again == rows
    assert [(r.level, r.epsilon) for r in refused] == [("sample", 2.0)]
    assert "below 1 / " in refused[0].reason
    write_outputs(tmp_path / "sweep", rows, level=sample, refused=refused)
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(r["level"], r["epsilon"]) for r in document["refused"]] == [("sample", 2.0)]


def test_epsilon_list_parsing():
    """The --epsilons list accepts numbers and inf, and refuses non-positive entries."""
    assert parse_epsilons("2,0.5,inf") == [0.5, 2.0, float("inf")]
    with pytest.raises(ConfigError):
        parse_epsilons("1,0")
    with pytest.raises(ConfigError):
        parse_epsilons("one")


def _default_sample_level(**overrides):
    config = RunConfig().with_overrides(
        {"privacy.level": "sample", "privacy.epsilon": 1.5, **overrides}
    )
    from fl.core.data import build_federated_data

    return config, build_federated_data(
        config.data, clients=config.training.clients, seed=config.seed
    )


def test_run_dp_sample_with_prv_accountant_calibrates_within_twice_rdp_time():
    """`privagg run --dp sample --epsilon 1.5 --accountant prv` (the default federation): the
    calibration stays small (peak traced memory below 256 MiB; it was ~11 GB) and every client's
    PRV epsilon (Gopi et al. 2021: its DP-SGD steps and its record-count release) at its
    calibrated noise meets the target, lies above Opacus' PRV estimate and within 0.01 of
    Opacus' upper bound, and needs no more noise than RDP. The time is measured in
    benchmarks/accounting.py, not here."""
    import tracemalloc
    import warnings

    from opacus.accountants import PRVAccountant

    from fl.core.privacy import COUNT_NOISE_STD, plan_sample_level

    config, data = _default_sample_level(**{"privacy.accountant": "prv"})
    released = PrivacyLedger(level=PrivacyLevel.SAMPLE, delta=1e-5, accountant="prv")
    tracemalloc.start()
    plan = plan_sample_level(config, data, ledger=released, progress=lambda done, total: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 256 * 2**20
    same_counts = PrivacyLedger(
        level=PrivacyLevel.SAMPLE, delta=1e-5, count_entries=list(released.count_entries)
    )
    rdp_plan = plan_sample_level(
        config.with_overrides({"privacy.accountant": "rdp"}),
        data,
        ledger=same_counts,
        progress=lambda done, total: None,
    )
    rounds = config.training.rounds
    for client, sigma in plan.noise.items():
        rate, steps = plan.sampling_rate[client], plan.steps_per_round[client] * rounds
        reference = PRVAccountant()
        reference.history = [(sigma, rate, steps), (COUNT_NOISE_STD, 1.0, 1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dprv = reference._get_dprv(eps_error=0.01, delta_error=1e-8)
            _, estimate, upper = dprv.compute_epsilon(1e-5, 1e-8, 0.01)
        ledger = PrivacyLedger(
            level=PrivacyLevel.SAMPLE,
            delta=1e-5,
            accountant="prv",
            count_entries=[e for e in released.count_entries if e.client == client],
        )
        ledger.record_sample(SampleLevelEntry(1, client, rate, sigma, steps, 1.0))
        ours = ledger.client_epsilon(client)
        assert estimate <= ours <= 1.5
        assert ours <= upper + 0.01
        assert sigma <= rdp_plan.noise[client]


def test_run_dp_sample_calibration_prints_progress_lines_when_stdout_is_not_a_terminal():
    """A calibration whose output goes to a file or pipe still shows plain
    'calibrating noise: step i/n' lines (every few seconds; here every call), ending at n/n."""
    import io
    import re

    from fl.core.privacy import LineProgress, plan_sample_level

    config, data = _default_sample_level()
    stream = io.StringIO()
    plan_sample_level(config, data, progress=LineProgress(stream, every=0.0))
    lines = stream.getvalue().splitlines()
    steps = [
        tuple(map(int, re.fullmatch(r"calibrating noise: step (\d+)/(\d+)", x).groups()))
        for x in lines
    ]
    assert len(steps) > 3
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)
    assert steps[-1][0] == steps[-1][1]


def test_readme_example_with_a_budget_below_one_round_is_refused_before_round_1(tmp_path):
    """`privagg run --dp sample --noise-multiplier 1.0 --max-epsilon 3 --accountant prv` used
    to stop before round 1 with nothing said: one round alone spends about 5.5 for the smallest
    client. It is now a ConfigError naming privacy.max_epsilon, the round's epsilon, the client
    and the noise multiplier that would fit."""
    config = RunConfig().with_overrides(
        {
            "privacy.level": "sample",
            "privacy.noise_multiplier": 1.0,
            "privacy.max_epsilon": 3.0,
            "privacy.accountant": "prv",
            "out": str(tmp_path / "run"),
        }
    )
    with pytest.raises(ConfigError, match=r"privacy\.max_epsilon") as error:
        run_federation(config)
    import re

    message = str(error.value)
    spent = float(re.search(r"at least (\d+\.\d+): a single round", message).group(1))
    fitting = float(re.search(r"noise multiplier of at least (\d+\.?\d*)", message).group(1))
    assert spent > 3.0 and "for client" in message and fitting > 1.0


def _client_level(tmp_path, name="run", **overrides):
    values = {
        "training.clients": 10,
        "training.fraction": 0.5,
        "training.min_clients": 2,
        "training.rounds": 3,
        "training.local_epochs": 1,
        "privacy.level": "client",
        "privacy.noise_multiplier": 1.0,
        "secure.dropout": 0.0,
        # small Poisson cohorts keep these accounting tests fast: the clients accept them
        "policy.min_clients": 2,
        "out": str(tmp_path / name),
    }
    return RunConfig().with_overrides({**values, **overrides})


def _participants(result):
    ledger = json.loads((result.out / "privacy.json").read_text())
    return [tuple(e["participants"]) for e in ledger["client_entries"]]


def test_client_level_runs_with_the_same_seed_draw_different_secret_cohorts(tmp_path):
    """`privagg run --dp client --seed 0`, twice: the cohorts are drawn from the secrets module,
    so knowing the seed does not tell who took part (3 rounds of 10 clients at q = 0.5: equal
    cohorts by chance have probability 2^-30), while the data split stays seeded."""
    import secrets

    calls = []
    original = secrets.randbelow

    def recording(bound):
        calls.append(bound)
        return original(bound)

    import fl.engines.federation

    first = run_federation(_client_level(tmp_path, "a"))
    second = run_federation(_client_level(tmp_path, "b"))
    assert _participants(first) != _participants(second)
    assert all(len(p) >= 2 for p in _participants(first))
    try:
        fl.engines.federation.secrets.randbelow = recording
        run_federation(_client_level(tmp_path, "c", **{"training.rounds": 1}))
    finally:
        fl.engines.federation.secrets.randbelow = original
    assert len(calls) >= 10  # one Bernoulli(q) per eligible client


def test_client_level_run_reports_the_epsilon_against_the_server_as_its_headline(tmp_path):
    """The most-sampled client composes its own rounds unamplified: the run's headline (metrics,
    summary, privacy.json) is that server-facing epsilon, recomputed here independently, and
    the epsilon against observers (Poisson amplification) is reported beside it."""
    from dp.accounting import ComposedEvent, PoissonSampledEvent, RdpAccountant, SkellamEvent

    result = run_federation(_client_level(tmp_path, **{"training.rounds": 4}))
    ledger = json.loads((result.out / "privacy.json").read_text())
    entries = ledger["client_entries"]

    def inner(entry):
        return SkellamEvent(entry["l1_sensitivity"], entry["l2_sensitivity"], entry["variance"])

    clients = {c for entry in entries for c in entry["participants"]}
    server = max(
        RdpAccountant()
        .compose(ComposedEvent(tuple(inner(e) for e in entries if c in e["participants"])))
        .get_epsilon(1e-5)
        for c in clients
    )
    observer = (
        RdpAccountant()
        .compose(ComposedEvent(tuple(PoissonSampledEvent(0.5, inner(e)) for e in entries)))
        .get_epsilon(1e-5)
    )
    assert ledger["epsilon_against_server"] == pytest.approx(server)
    assert ledger["epsilon_against_observers"] == pytest.approx(observer)
    assert result.history[-1].epsilon == ledger["epsilon"] == pytest.approx(max(server, observer))
    assert result.summary["epsilon"] == ledger["epsilon"]


def test_client_level_target_holds_against_the_server_with_a_participation_cap(tmp_path):
    """`--dp client --epsilon 3`: the noise is calibrated for the headline against the server,
    over the participation cap the cohort sampling enforces (and every cohort size the Poisson
    draw may give), so the run ends within the target whoever was sampled, and no client took
    part more often than the cap."""
    from fl.core.privacy import participation_cap

    config = _client_level(
        tmp_path,
        **{
            "privacy.noise_multiplier": None,
            "privacy.epsilon": 3.0,
            "training.rounds": 8,
            "training.fraction": 0.3,
        },
    )
    result = run_federation(config)
    ledger = json.loads((result.out / "privacy.json").read_text())
    assert ledger["epsilon_against_server"] <= 3.0 + 1e-9
    assert ledger["epsilon_against_observers"] <= 3.0 + 1e-9
    cap = participation_cap(10, 8, 0.3)
    assert max(ledger["participations"].values()) <= cap < 8


def test_max_epsilon_checks_the_round_s_actual_cohort(tmp_path, monkeypatch):
    """The budget check before a round prices the cohort that round actually drew (its size and
    members), not the expected one, and the round then runs with exactly that cohort."""
    import fl.engines.federation

    drawn = iter([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 3], [1, 2, 3, 4, 5, 6, 7, 8]])
    monkeypatch.setattr(fl.engines.federation, "poisson_cohort", lambda clients, rate: next(drawn))
    result = run_federation(_client_level(tmp_path, **{"privacy.max_epsilon": 1000.0}))
    assert [m.sampled for m in result.history] == [10, 2, 8]
    ledger = json.loads((result.out / "privacy.json").read_text())
    assert [len(e["participants"]) for e in ledger["client_entries"]] == [10, 2, 8]
    from fl.core.privacy import ClientLevelPlan, client_encoder

    shares = [e["noise_shares"] for e in ledger["client_entries"]]
    config = _client_level(tmp_path)
    expected = [
        client_encoder(config, ClientLevelPlan(0.5, 1.0), cohort=n, dimension=4810).noise_shares
        for n in (10, 2, 8)
    ]
    assert shares == expected


def test_max_epsilon_stops_before_the_cohort_that_would_pass_it(tmp_path, monkeypatch):
    """With a budget of exactly two rounds for any one client, the run stops at the first round
    whose drawn cohort holds a client that already took part twice, and the server-facing
    epsilon never passes the budget."""
    import fl.engines.federation

    low_rate = {"training.fraction": 0.2}  # observers' epsilon stays far below the server's
    drawn = iter([[1, 2], [1, 3], [2, 3], [1, 4]])
    monkeypatch.setattr(fl.engines.federation, "poisson_cohort", lambda clients, rate: next(drawn))
    probe = run_federation(_client_level(tmp_path, "probe", **{"training.rounds": 1, **low_rate}))
    one_round = json.loads((probe.out / "privacy.json").read_text())["client_entries"][0]
    from dp.accounting import RdpAccountant, SkellamEvent

    inner = SkellamEvent(
        one_round["l1_sensitivity"], one_round["l2_sensitivity"], one_round["variance"]
    )
    budget = RdpAccountant().compose(inner, 2).get_epsilon(1e-5) * 1.0001
    drawn = iter([[1, 2], [1, 3], [2, 3], [1, 4]])
    monkeypatch.setattr(fl.engines.federation, "poisson_cohort", lambda clients, rate: next(drawn))
    result = run_federation(
        _client_level(tmp_path, **{"training.rounds": 4, "privacy.max_epsilon": budget, **low_rate})
    )
    assert len(result.history) == 3 and result.summary["stopped_early"]
    ledger = json.loads((result.out / "privacy.json").read_text())
    assert ledger["epsilon_against_server"] <= budget


def test_client_level_released_sum_carries_the_target_variance_after_colluders(tmp_path):
    """Each client's noise share is sized for t - c honest contributors (t the threshold, c the
    colluders the client policy assumes): in the smallest sum the server can unmask (t inputs),
    the c colluders subtract their own shares and what remains still has at least the target
    variance (z C s)^2; shares sized V / t (before) would leave (t - c) / t of it. Checked on
    200,000 coordinates, false-failure rate 1e-6."""
    import math

    from scipy import stats

    import secagg
    from dp.samplers import sample_skellam
    from fl.core.privacy import ClientLevelPlan, client_encoder
    from secagg.randomness import DeterministicRandom

    config = _client_level(tmp_path)
    encoder = client_encoder(
        config, ClientLevelPlan(0.5, 1.0), cohort=10, dimension=64, policy=secagg.ClientPolicy()
    )
    t, c = encoder.threshold, encoder.corrupt
    assert c >= 1 and encoder.noise_shares == t - c
    share_variance = (encoder.local_sigma * encoder.scale) ** 2
    count = 200_000
    shares = [sample_skellam(share_variance, count, DeterministicRandom(i)) for i in range(t)]
    honest_part = (sum(shares) - sum(shares[:c])).astype(np.float64)
    target = encoder.central_variance
    z = stats.norm.isf(1e-6)
    assert honest_part.var() >= target * (1 - z * math.sqrt(2 / count))
    entry = encoder.ledger_entry(round_index=1, client_sampling_rate=0.5)
    assert (entry.threshold, entry.corrupt, entry.noise_shares) == (t, c, t - c)


def test_client_level_run_with_few_clients_warns_before_round_1(tmp_path):
    """`privagg run --dp client --epsilon 2` on the 10-client default: the noise on the mean of
    10 clipped updates is far larger than the clip (loss ~1,600, accuracy 12% before). A
    PrivacyWarning before round 1 gives the ratio and the clients per round that would bring
    the noise below the clip, z sqrt(d) + 1."""
    import math
    import re

    from dp.errors import PrivacyWarning
    from fl.core.privacy import plan_client_level

    config = RunConfig().with_overrides(
        {"privacy.level": "client", "privacy.epsilon": 2.0, "out": str(tmp_path / "run")}
    )
    with pytest.warns(PrivacyWarning, match="clients per round") as caught:
        plan = plan_client_level(config, 4810, progress=lambda done, total: None)
    needed = int(re.search(r"About (\d+) clients per round", str(caught[0].message)).group(1))
    assert needed == math.floor(plan.noise_multiplier * math.sqrt(4810)) + 1
    assert plan.noise_multiplier * math.sqrt(4810) / needed < 1.0
    quiet = config.with_overrides({"privacy.epsilon": None, "privacy.noise_multiplier": 1e-3})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        plan_client_level(quiet, 4810)


def test_sample_level_run_releases_nothing_that_depends_on_exact_record_counts(tmp_path):
    """Add/remove one record: with the same released noisy counts, the DP-SGD schedule (q,
    steps), the averaging weights and the expected batch are identical, so everything the
    server sees depends on the count only through the noisy count, which the ledger charges
    (a discrete Gaussian of sensitivity 1, once per client)."""
    from fl.core.data import FederatedData, build_federated_data
    from fl.core.privacy import COUNT_NOISE_STD, plan_sample_level

    config = RunConfig().with_overrides(
        {"training.clients": 5, "privacy.level": "sample", "privacy.noise_multiplier": 1.0}
    )
    data = build_federated_data(config.data, clients=5, seed=0)
    indices = [np.asarray(i) for i in data.client_indices]
    neighbour = FederatedData(
        **{
            **data.__dict__,
            "client_indices": [indices[0][:-1], *indices[1:]],  # one record removed
        }
    )
    ledger = PrivacyLedger(level=PrivacyLevel.SAMPLE, delta=1e-5)
    plan = plan_sample_level(config, data, ledger=ledger)
    again = PrivacyLedger(
        level=PrivacyLevel.SAMPLE, delta=1e-5, count_entries=list(ledger.count_entries)
    )
    neighbour_plan = plan_sample_level(config, neighbour, ledger=again)
    assert neighbour_plan == plan
    assert {e.noise_std for e in ledger.count_entries} == {COUNT_NOISE_STD}
    assert sorted(plan.noisy_counts) == [1, 2, 3, 4, 5]


def test_sample_level_run_decodes_the_sum_of_noisy_counts(tmp_path, monkeypatch):
    """The secure sum's decoded total weight is the sum of the contributors' released noisy
    counts, never the exact record total; privacy.json holds the count releases."""
    import fl.engines.federation

    totals = []
    original = fl.engines.federation.secure_weighted_mean

    def spy(updates, **kwargs):
        outcome = original(updates, **kwargs)
        totals.append((outcome.total_weight, {u: updates[u].weight for u in outcome.contributors}))
        return outcome

    monkeypatch.setattr(fl.engines.federation, "secure_weighted_mean", spy)
    result = run_federation(
        _config(tmp_path, **{"privacy.level": "sample", "privacy.noise_multiplier": 1.0})
    )
    ledger = json.loads((result.out / "privacy.json").read_text())
    counts = {e["client"]: e["noisy_count"] for e in ledger["count_entries"]}
    assert len(counts) == 5 and totals
    for total, weights in totals:
        assert weights == {u: counts[u] for u in weights}
        assert total == sum(weights.values())


def test_dp_sgd_noise_is_seeded_with_64_bit_secrets_from_the_os(tmp_path, monkeypatch):
    """Each DP-SGD run seeds torch's two generators (Poisson sampling, noise) with 64-bit values
    (the width torch.Generator.manual_seed takes) derived from 16 bytes of os.urandom (7 bytes,
    56 bits, before): among a run's 10 seeds some use the top byte (all below 2^56 by chance:
    probability 2^-64): two per client of the 5."""
    import os

    import dp.local
    import fl.engines.local

    requested, seeds = [], []
    real_urandom, real_seeds = os.urandom, dp.local._generator_seeds

    def urandom(n):
        requested.append(n)
        return real_urandom(n)

    def generator_seeds(secret):
        pair = real_seeds(secret)
        seeds.extend(pair)
        return pair

    monkeypatch.setattr(fl.engines.local.os, "urandom", urandom)
    monkeypatch.setattr(dp.local, "_generator_seeds", generator_seeds)
    run_federation(
        _config(
            tmp_path,
            **{"training.rounds": 1, "privacy.level": "sample", "privacy.noise_multiplier": 1.0},
        )
    )
    assert 16 in requested and len(seeds) == 10
    assert max(seeds) >= 2**56 and max(seeds) < 2**64


def test_client_level_noise_follows_the_run_s_policy(tmp_path):
    """The noise shares are sized with the [policy] of the run (here: no colluder assumed, so
    t - c = t), the same policy the clients check the session against."""
    result = run_federation(_client_level(tmp_path, **{"policy.corrupt_fraction": 0.0}))
    entries = json.loads((result.out / "privacy.json").read_text())["client_entries"]
    assert entries and all(e["corrupt"] == 0 for e in entries)
    assert all(e["noise_shares"] == e["threshold"] for e in entries)


def test_a_calibration_set_by_tiny_cohorts_warns_with_the_floor_that_fixes_it():
    """10,000 clients, 1,000 per round, epsilon 4: calibrated from cohorts of 3 up (the
    default training.min_clients) the noise multiplier is 12.1, and a run of 1,000-client rounds
    would spend about half the target: a PrivacyWarning names the spend and the floor to raise
    to. Calibrated from 800 up (noise multiplier 6.8) it spends the target and nothing warns."""
    from dataclasses import replace as replaced

    from dp.errors import PrivacyWarning
    from fl.core import privacy

    config = RunConfig().with_overrides(
        {
            "privacy.level": "client",
            "privacy.epsilon": 4.0,
            "privacy.delta": 1e-6,
            "training.clients": 10_000,
            "training.per_round": 1000,
            "training.rounds": 100,
        }
    )
    cap = privacy.participation_cap(10_000, 100, 0.1)
    plan = privacy.ClientLevelPlan(0.1, 12.09, cap, (3, 1218))
    with pytest.warns(PrivacyWarning, match=r"as few as 3 clients.*towards 820") as caught:
        privacy._warn_if_calibrated_for_small_cohorts(config, plan, 4810, None)
    spent = float(str(caught[0].message).split("spend only ")[1].split()[0])
    assert 1.5 < spent < 3.0
    # the number named is the claim of rounds of exactly the expected 1,000 clients
    typical = privacy.client_level_claim(config, replaced(plan, cohort_sizes=(1000, 1000)), 4810)
    assert spent == float(f"{typical:.3g}") and typical < 0.75 * 4.0
    calibrated = replaced(plan, noise_multiplier=6.76, cohort_sizes=(800, 1218))
    expected_only = replaced(calibrated, cohort_sizes=(1000, 1000))
    assert privacy.client_level_claim(config, expected_only, 4810) >= 0.75 * 4.0  # no warning due
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        privacy._warn_if_calibrated_for_small_cohorts(config, calibrated, 4810, None)


def test_a_killed_sweep_leaves_no_point_training(tmp_path):
    """SIGKILL on the sweep's process stops the processes training its points (they would
    otherwise go on burning the cores with nothing to report to); the same busy workers in a
    plain process pool outlive their parent, which shows the test can fail."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time
    from pathlib import Path

    script = tmp_path / "sweeper.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from concurrent.futures import ProcessPoolExecutor
            import multiprocessing

            def busy(path):
                with open(path, "w") as handle:
                    handle.write(str(os.getpid()))
                time.sleep(600)

            if __name__ == "__main__":
                if sys.argv[1] == "sweep":
                    from fl.cli.sweep import process_pool
                    pool = process_pool(1)
                else:
                    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
                pool.submit(busy, sys.argv[2])
                time.sleep(600)
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    survived = {}
    for kind in ("sweep", "plain"):
        marker = tmp_path / f"{kind}.pid"
        parent = subprocess.Popen(
            [sys.executable, str(script), kind, str(marker)],
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        try:
            deadline = time.monotonic() + 120
            while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            worker = int(marker.read_text())
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait()
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        survived[kind] = _alive(worker)
        if survived[kind]:
            os.kill(worker, signal.SIGKILL)
    assert survived == {"sweep": False, "plain": True}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
