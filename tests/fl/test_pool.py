"""The in-process engine's worker pool (fl.engines.pool): the same results bit for bit as one
process, a worker's failure as a typed error that names the round and the client, and no
worker process left behind, whether the pool is closed, a worker dies, or the parent is killed.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import secagg
from dp.distributed import DistributedNoiseEncoder, Mechanism
from fl.cli import main
from fl.core.aggregation import ClientUpdate, secure_noisy_mean, secure_weighted_mean
from fl.core.config import RunConfig
from fl.engines import inprocess
from fl.engines.federation import NoiseStreams, RoundingStreams
from fl.engines.local import GLOBAL_START, ClientTask, LocalTrainer
from fl.engines.pool import PooledProtocol, WorkerPool, balance, processes, train_cohort
from fl.engines.pool.processes import worker_count
from fl.errors import ConfigError, WorkerError

MARKER = 1234.5
"""An example value that makes the failing models below fail on the client that holds it."""


class RaiseOnMarker(nn.Module):
    """A model whose forward pass raises on the marked client's examples."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == MARKER).any()):
            raise ArithmeticError("the marked example")
        return self.linear(x)


class ExitOnMarker(RaiseOnMarker):
    """A model whose forward pass ends its process on the marked client's examples (as the
    kernel's out-of-memory killer would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == MARKER).any()):
            os._exit(3)
        return self.linear(x)


def _tasks(marked: int | None = None, clients: int = 6) -> list[ClientTask]:
    generator = np.random.default_rng(0)
    tasks = []
    for u in range(1, clients + 1):
        x = generator.normal(size=(8 + u, 4)).astype(np.float32)
        if u == marked:
            x[0, 0] = MARKER
        tasks.append(ClientTask(u, x, generator.integers(0, 3, size=8 + u)))
    return tasks


def _trainer(model: nn.Module) -> LocalTrainer:
    return LocalTrainer(RunConfig(), model, torch.device("cpu"))


def _gone(pid: int) -> bool:
    """Whether no process ``pid`` runs (absent, or a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(2, trainer=_trainer(RaiseOnMarker())) as workers:
        yield workers


def test_pooled_training_is_bit_identical_to_one_process(pool):
    """Training in two workers gives every client the update one process gives it, bit for bit
    (same seed stream per (seed, round, client), one intra-op thread everywhere)."""
    tasks = _tasks()
    model = RaiseOnMarker()
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    sequential = _trainer(model)
    expected = {t.client: sequential.train(2, t, start).update for t in tasks}
    pooled = train_cohort(pool, 2, {GLOBAL_START: start}, tasks)
    assert sorted(pooled) == sorted(expected)
    for u, update in expected.items():
        assert np.array_equal(pooled[u].update.vector, update.vector), u
        assert pooled[u].update.weight == update.weight


@pytest.mark.parametrize("mode", ["weighted", "noisy"])
def test_pooled_secure_aggregation_is_bit_identical_to_one_process(pool, mode):
    """A secure round with the clients' side in the pool (encoding, DP noise shares, the
    protocol) releases the same mean, contributors and traffic as secagg.aggregate in one
    process, with dropouts in two phases (seeded rounding and reproducible noise)."""
    generator = np.random.default_rng(1)
    updates = {
        u: ClientUpdate(vector=generator.normal(0, 0.1, 10).astype(np.float32), weight=5 + u)
        for u in range(1, 9)
    }
    dropouts = {3: secagg.Phase.SHARE_KEYS, 6: secagg.Phase.UNMASK}

    def run(runner):
        if mode == "weighted":
            return secure_weighted_mean(
                updates,
                max_weight=64,
                clip=1.0,
                precision_bits=16,
                ring_bits=32,
                dropouts=dropouts,
                round_index=4,
                rounding_random=RoundingStreams(7, 4),
                runner=runner,
            )
        encoder = DistributedNoiseEncoder(
            Mechanism.SKELLAM, 10, l2_clip=1.0, noise_multiplier=0.5, cohort=8, noise_shares=4
        )
        return secure_noisy_mean(
            updates,
            encoder=encoder,
            rotation_seed=bytes(32),
            dropouts=dropouts,
            round_index=4,
            noise_random=NoiseStreams(7, 4, reproducible=True),
            runner=runner,
        )

    here, pooled = run(None), run(PooledProtocol(pool))
    assert np.array_equal(here.mean, pooled.mean)
    assert here.contributors == pooled.contributors == frozenset(updates) - {3}
    assert (here.bytes_up, here.bytes_down) == (pooled.bytes_up, pooled.bytes_down)
    assert here.total_weight == pooled.total_weight


def test_pooled_central_dp_round_is_bit_identical_to_one_process(pool):
    """Central DP's secure sum (clients clip and encode with weight 1, the server adds the
    noise once: fl.core.central) with the clients in the pool releases the in-process mean,
    contributors and traffic bit for bit (seeded rounding and server noise), with dropouts."""
    from fl.core.central import CentralPlan, central_noisy_mean, central_sensitivity
    from secagg.randomness import DeterministicRandom

    generator = np.random.default_rng(3)
    updates = {
        u: ClientUpdate(vector=generator.normal(0, 0.5, 40), weight=100 + u) for u in range(1, 11)
    }
    plan = CentralPlan(
        sampling_rate=0.25,
        noise_multiplier=0.5,
        sensitivity=central_sensitivity(clip=1.0, precision_bits=16, dimension=40),
        clients=40,
        precision_bits=16,
    )

    def run(runner):
        return central_noisy_mean(
            updates,
            plan=plan,
            clip=1.0,
            secure=True,
            rounding_random=RoundingStreams(5, 1),
            noise_random=DeterministicRandom(b"server noise"),
            dropouts={4: secagg.Phase.MASKED_INPUT, 7: secagg.Phase.UNMASK},
            round_index=1,
            runner=runner,
        )

    here, pooled = run(None), run(PooledProtocol(pool))
    assert np.array_equal(here.mean, pooled.mean)
    assert here.contributors == pooled.contributors == frozenset(updates) - {4}
    assert (here.bytes_up, here.bytes_down, here.total_weight) == (
        pooled.bytes_up,
        pooled.bytes_down,
        pooled.total_weight,
    )


def _exact_noise_round(runner, dropouts):
    """One client-level round with exact noise (Skellam, identities, complete graph of 12,
    t = 7), reproducible noise so that two runs draw the same shares and ladder seeds."""
    clients = 12
    generator = np.random.default_rng(2)
    updates = {
        u: ClientUpdate(vector=generator.normal(0, 0.1, 24).astype(np.float32), weight=1)
        for u in range(1, clients + 1)
    }
    encoder = DistributedNoiseEncoder(
        Mechanism.SKELLAM,
        24,
        l2_clip=1.0,
        noise_multiplier=1.0,
        cohort=clients,
        noise_shares=7,
        threshold=7,
        corrupt=0,
    )
    return secure_noisy_mean(
        updates,
        encoder=encoder,
        rotation_seed=bytes(32),
        threshold=7,
        neighbours=clients - 1,
        identities=True,
        dropouts=dropouts,
        round_index=3,
        policy=secagg.ClientPolicy(corrupt_fraction=0.0, min_clients=5),
        noise_random=NoiseStreams(11, 3, reproducible=True),
        exact_noise=True,
        runner=runner,
    )


@pytest.mark.parametrize(
    "dropouts",
    [{}, {2: secagg.Phase.MASKED_INPUT, 9: secagg.Phase.SHARE_KEYS}],
    ids=["no-dropout", "two-dropouts"],
)
def test_pooled_exact_noise_is_bit_identical_to_one_process(pool, dropouts):
    """Exact distributed noise (Dordis, EuroSys 2024) with the clients in the pool: each worker
    keeps its clients' ladder seeds and answers the server's noise-removal request after the
    consistency check; the released mean, the variance left, the contributors and the traffic
    (noise-removal messages included) are those of the in-process round bit for bit. The noise
    was really removed: the variance left is below the no-removal share of the survivors."""
    here, pooled = (
        _exact_noise_round(None, dropouts),
        _exact_noise_round(PooledProtocol(pool), dropouts),
    )
    assert np.array_equal(here.mean, pooled.mean)
    assert here.contributors == pooled.contributors == frozenset(range(1, 13)) - set(dropouts)
    assert here.noise_variance_left == pooled.noise_variance_left
    ladder = pooled.noise_ladder
    assert pooled.noise_variance_left < 0.9 * len(pooled.contributors) * ladder.share_variance
    assert (here.bytes_up, here.bytes_down) == (pooled.bytes_up, pooled.bytes_down)


def test_noise_removal_in_the_pool_moves_only_the_revealed_seeds(pool, monkeypatch):
    """A worker keeps its clients' ladder seeds (SECURITY.md: secrets never leave the process
    that holds the client): of everything the workers send the parent in an exact-noise round,
    each seed appears exactly when its client reveals it in its noise-removal answer. The scan
    finds every revealed seed, so a kept seed that crossed would be found too; a client that
    dropped out before answering reveals nothing."""
    from dp.removable import NoiseSeeds

    dropouts = {2: secagg.Phase.MASKED_INPUT, 4: secagg.Phase.SHARE_KEYS, 9: secagg.Phase.UNMASK}
    crossed: list[bytes] = []
    real_call = WorkerPool.call

    def spy(self, command, args, *, on_item=None, **kwargs):
        def record(client, item):
            crossed.append(pickle.dumps(item))
            if on_item is not None:
                on_item(client, item)

        return real_call(self, command, args, on_item=record, **kwargs)

    monkeypatch.setattr(WorkerPool, "call", spy)
    outcome = _exact_noise_round(PooledProtocol(pool), dropouts)
    ladder = outcome.noise_ladder
    streams = NoiseStreams(11, 3, reproducible=True)
    seeds = {u: NoiseSeeds.generate(ladder, streams(u)).seeds for u in range(1, 13)}
    # every survivor signed U3 (complete graph, c = 0): each answering client's floor is |U3|
    answered = outcome.contributors - {9}  # 9 dropped before its unmask answer
    revealed = {u: ladder.removal(len(outcome.contributors)) for u in answered}
    assert all(0 < len(r) < ladder.size for r in revealed.values())  # some go, some stay
    blob = b"".join(crossed)
    for u, own in seeds.items():
        for index, seed in enumerate(own):
            assert (seed in blob) == (index in revealed.get(u, ())), (u, index)


def test_a_client_error_in_a_worker_names_round_and_client(pool):
    """A client whose training raises in a worker surfaces as a WorkerError naming the round,
    the client and the original exception; the worker stays usable for the next round."""
    with pytest.raises(WorkerError, match=r"round 3, client 5: ArithmeticError") as caught:
        train_cohort(pool, 2, {GLOBAL_START: torch.zeros(15)}, _tasks(marked=5))
    assert (caught.value.round_index, caught.value.client) == (2, 5)
    assert caught.value.remote_type == "builtins.ArithmeticError"
    assert "the marked example" in caught.value.remote_traceback
    assert pool.healthy
    assert len(train_cohort(pool, 3, {GLOBAL_START: torch.zeros(15)}, _tasks())) == 6


def test_a_worker_that_dies_is_named_and_no_process_is_left(tmp_path):
    """A worker process that exits mid-round (out of memory, killed) surfaces as a WorkerError
    naming the round, the client it was training and how it ended; the pool stops every worker
    and refuses further work."""
    with WorkerPool(2, trainer=_trainer(ExitOnMarker())) as pool:
        pids = pool.pids
        with pytest.raises(WorkerError, match=r"round 1, client 4: worker process \d") as caught:
            train_cohort(pool, 0, {GLOBAL_START: torch.zeros(15)}, _tasks(marked=4))
        assert "exited with status 3" in str(caught.value)
        assert caught.value.client == 4 and caught.value.round_index == 0
        assert not pool.healthy
        with pytest.raises(WorkerError, match="stopped earlier"):
            train_cohort(pool, 1, {GLOBAL_START: torch.zeros(15)}, _tasks())
    assert all(_gone(pid) for pid in pids)


def test_closing_the_pool_stops_every_worker():
    """Leaving the pool's block stops its processes (none outlives the run)."""
    with WorkerPool(2) as pool:
        pids = pool.pids
        assert not any(_gone(pid) for pid in pids)
    assert all(_gone(pid) for pid in pids)


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """SIGKILL on the engine's process (no cleanup runs) still leaves no worker behind: each
    worker sees its pipe close (and, on Linux, gets SIGTERM from the kernel)."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from fl.engines.pool import WorkerPool

            if __name__ == "__main__":
                pool = WorkerPool(2)
                print(*pool.pids, flush=True)
                time.sleep(600)
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


def test_worker_counts_are_validated_and_sized_to_the_cohort():
    """--workers must be an integer >= 1; a cohort too small to share uses fewer workers."""
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="workers"):
            worker_count(bad, 1000)
    assert worker_count(2, 1000) == 2
    assert worker_count(8, 3 * processes.MIN_CLIENTS_PER_WORKER) == 3
    assert worker_count(2, processes.MIN_CLIENTS_PER_WORKER) == 1


def test_training_is_balanced_by_examples():
    """The LPT split gives each worker about the same number of examples (within the largest
    client), and every client exactly once."""
    tasks = _tasks(clients=40)
    shares = balance(tasks, 3)
    assert sorted(t.client for share in shares for t in share) == list(range(1, 41))
    loads = [sum(t.examples for t in share) for share in shares]
    assert max(loads) - min(loads) <= max(t.examples for t in tasks)


_RUNS = {
    "fedavg": {},
    "fedavg-stragglers": {"algorithm.stragglers": 0.4},
    "fedprox-stragglers": {
        "algorithm.name": "fedprox",
        "algorithm.mu": 0.5,
        "algorithm.stragglers": 0.4,
        "training.local_epochs": 3,
    },
    "async": {
        "schedule.mode": "async",
        "schedule.buffer": 6,
        "schedule.concurrency": 9,
        "training.rounds": 3,
        "secure.dropout": 0.0,
    },
    "async-fedprox": {
        "schedule.mode": "async",
        "schedule.buffer": 6,
        "schedule.concurrency": 9,
        "training.rounds": 3,
        "secure.dropout": 0.0,
        "algorithm.name": "fedprox",
        "algorithm.mu": 1.0,
    },
}


@pytest.mark.parametrize("name", list(_RUNS))
def test_pooled_run_gives_the_same_model_as_one_process(tmp_path, monkeypatch, name):
    """privagg run with --workers 2 and --workers 1, same seed, secure aggregation with
    dropouts: the same model bit for bit and the same per-round metrics, for FedAvg, FedAvg
    dropping stragglers, FedProx (mu > 0, stragglers doing partial work: Li et al. 2020) and
    the asynchronous FedBuff mode (clients training from the model version each pulled, the
    simulated clock), with FedAvg and FedProx."""
    monkeypatch.setattr(processes, "MIN_CLIENTS_PER_WORKER", 1)  # share a small cohort
    settings = {
        "training.clients": 10,
        "training.per_round": 8,
        "training.rounds": 2,
        "model.hidden": 16,
        "secure.dropout": 0.1,
        **_RUNS[name],
    }
    runs = {}
    for workers in (1, 2):
        config = RunConfig().with_overrides({**settings, "out": str(tmp_path / f"w{workers}")})
        runs[workers] = inprocess.run_federation(config, workers=workers)
    assert runs[2].summary["workers"] == 2 and runs[1].summary["workers"] == 1
    for a, b in zip(runs[1].model.parameters(), runs[2].model.parameters(), strict=True):
        assert torch.equal(a, b)
    keys = ("accuracy", "dropped", "bytes_up", "bytes_down", "failed", "stragglers")
    keys += ("simulated_time", "staleness")
    assert len(runs[1].history) == len(runs[2].history) == settings["training.rounds"]
    for one, two in zip(runs[1].history, runs[2].history, strict=True):
        assert all(getattr(one, k) == getattr(two, k) for k in keys)
    if "stragglers" in name:
        assert all(m.stragglers > 0 for m in runs[2].history)


def test_pooled_client_level_run_with_exact_noise_matches_one_process(tmp_path, monkeypatch):
    """privagg run --dp client with exact noise (identities, Skellam, reproducible noise) and
    dropouts, in two workers and in one: the same model bit for bit and the same ledger, whose
    entries record the variance left after the clients' noise removal. (The cohorts are fixed
    here: a real run draws them from `secrets`, which no two runs share.)"""
    from fl.engines import federation as federation_module

    monkeypatch.setattr(processes, "MIN_CLIENTS_PER_WORKER", 1)
    monkeypatch.setattr(
        federation_module, "poisson_cohort", lambda clients, rate: [u for u in clients if u % 5]
    )
    settings = {
        "training.clients": 40,
        "training.per_round": 32,
        "training.rounds": 2,
        "model.hidden": 16,
        "secure.identities": True,
        "secure.dropout": 0.1,
        "privacy.level": "client",
        "privacy.noise_multiplier": 1.0,
        "privacy.reproducible_noise": True,
    }
    runs, entries = {}, {}
    for workers in (1, 2):
        config = RunConfig().with_overrides({**settings, "out": str(tmp_path / f"w{workers}")})
        runs[workers] = inprocess.run_federation(config, workers=workers)
        privacy = json.loads((runs[workers].out / "privacy.json").read_text())
        entries[workers] = privacy["client_entries"]
    assert runs[2].summary["workers"] == 2
    for a, b in zip(runs[1].model.parameters(), runs[2].model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert entries[1] == entries[2] and len(entries[2]) == 2
    assert all(entry["variance_left"] is not None for entry in entries[2])
    assert [m.dropped for m in runs[1].history] == [m.dropped for m in runs[2].history]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_cli_refuses_a_bad_worker_count(value, tmp_path, capsys):
    """`privagg run --workers 0` (or a non-integer) stops at the parser with exit status 2,
    naming the flag, and writes nothing."""
    with pytest.raises(SystemExit) as caught:
        main(["run", "--workers", value, "--out", str(tmp_path / "run")])
    assert caught.value.code == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_says_when_it_uses_fewer_workers_than_asked(tmp_path, capsys):
    """`privagg run --workers 3` on a 6-client cohort runs in one process and says why (no
    worker is started for a cohort too small to share)."""
    assert (
        main(
            [
                "run",
                "--clients",
                "6",
                "--rounds",
                "1",
                "--workers",
                "3",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "--workers 3: using 1 (6 clients per round is too few to share further)" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["workers"] == 1


@pytest.mark.slow
def test_a_1000_client_round_in_two_workers_matches_one_process(tmp_path):
    """One round of 1,000 clients (the MLP, secure aggregation with 5% dropouts) in two worker
    processes gives the model of the same round in one process, bit for bit (the fast
    counterpart: test_pooled_run_gives_the_same_model_as_one_process)."""
    settings = {
        "training.clients": 1000,
        "training.per_round": 1000,
        "training.rounds": 1,
        "secure.dropout": 0.05,
        "data.dataset": "synthetic",
        "data.partition": "iid",
        "data.synthetic_samples": 10_667,
    }
    runs = {}
    for workers in (1, 2):
        config = RunConfig().with_overrides({**settings, "out": str(tmp_path / f"w{workers}")})
        runs[workers] = inprocess.run_federation(config, workers=workers)
    assert runs[2].summary["workers"] == 2
    assert not runs[1].history[0].failed and runs[1].history[0].sampled == 1000
    for a, b in zip(runs[1].model.parameters(), runs[2].model.parameters(), strict=True):
        assert torch.equal(a, b)
    # (the traffic is not compared: the SecAgg+ graph is drawn from os.urandom in every round,
    # so with dropouts the bytes differ from run to run, in one process as in two)
    assert runs[1].history[0].dropped == runs[2].history[0].dropped
