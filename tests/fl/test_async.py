"""Buffered asynchronous secure aggregation (FedBuff, Nguyen et al. 2022; secure version So et
al. 2021) in the in-process engine: the schedule, client-side staleness weights, exact buffered
secure sums, dropouts, and the clients' policy floor."""

import math

import numpy as np
import pytest
import torch

import secagg
from fl.algorithms.fedbuff import staleness_weight, weigh_update
from fl.core.aggregation import ClientUpdate, plain_weighted_mean
from fl.core.config import RunConfig
from fl.engines.asynchronous import AsyncFederation
from fl.engines.federation import Federation
from fl.engines.inprocess import run_federation
from fl.errors import ConfigError, FLError
from secagg.encoding import FixedPointEncoder
from secagg.ring import to_signed


def _config(tmp_path, name="async", **overrides):
    values = {
        "training.clients": 12,
        "training.rounds": 4,
        "training.local_epochs": 1,
        "model.hidden": 8,
        "schedule.mode": "async",
        "schedule.buffer": 5,
        "schedule.concurrency": 8,
        "secure.dropout": 0.0,
        "out": str(tmp_path / name),
        **overrides,
    }
    return RunConfig().with_overrides(values)


def test_staleness_weight_is_one_over_root_one_plus_tau():
    """s(tau) = 1 / sqrt(1 + tau) (Nguyen et al. 2022); the update is scaled, its weight not."""
    assert [staleness_weight(t) for t in (0, 1, 3, 8)] == [1.0, 1 / math.sqrt(2), 0.5, 1 / 3]
    update = ClientUpdate(np.array([2.0, -4.0], dtype=np.float32), weight=7)
    weighed = weigh_update(update, 3)
    assert weighed.weight == 7 and np.allclose(weighed.vector, [1.0, -2.0])
    with pytest.raises(ValueError):
        staleness_weight(-1)


class _Recorder:
    """Spies on the engine: each buffer's tasks, the version at its session, the clients' raw
    updates, and what each client handed to secure aggregation."""

    def __init__(self, monkeypatch):
        self.sessions, self.raw, self.encoded = [], {}, []
        original_train, original_local = AsyncFederation.train, Federation._train_all
        real_aggregate = secagg.aggregate
        recorder = self

        def train(engine, round_index, cohort):
            recorder.sessions.append((engine.version, list(engine._session), engine.clock))
            return original_train(engine, round_index, cohort)

        def local(engine, round_index, tasks, starts=None):
            trained = original_local(engine, round_index, tasks, starts)
            for client, result in trained.items():
                recorder.raw[(len(recorder.sessions), client)] = result.update
            return trained

        def aggregate(inputs, **kwargs):
            recorder.encoded.append(dict(inputs))
            return real_aggregate(inputs, **kwargs)

        monkeypatch.setattr(AsyncFederation, "train", train)
        monkeypatch.setattr(Federation, "_train_all", local)
        monkeypatch.setattr(secagg, "aggregate", aggregate)


def test_clients_weigh_their_own_updates_before_masking(tmp_path, monkeypatch):
    """Every vector a client hands to secure aggregation decodes (alone) to s(tau) times its
    raw update, tau = the server's version at the session less the version the client pulled:
    the weighing is the client's, before masking; the server only decodes the sum. Later
    buffers hold stale updates (tau > 0), so the weights matter."""
    recorder = _Recorder(monkeypatch)
    config = _config(tmp_path, **{"training.rounds": 5})
    run_federation(config)
    encoder = FixedPointEncoder(
        num_clients=5, max_weight=10_000, clip=4.0, precision_bits=16, ring_bits=64
    )
    stale = 0
    for index, ((version, tasks, _), encoded) in enumerate(
        zip(recorder.sessions, recorder.encoded, strict=True), start=1
    ):
        assert sorted(encoded) == sorted(t.client for t in tasks)
        for task in tasks:
            tau = version - task.version
            stale += tau > 0
            raw = recorder.raw[(index, task.client)]
            signed = to_signed(np.asarray(encoded[task.client]), 64)
            assert signed[0] == raw.weight
            alone = encoder.decode(encoded[task.client])
            expected = np.clip(staleness_weight(tau) * raw.vector.astype(np.float64), -4, 4)
            assert np.max(np.abs(alone - expected)) <= 2.0**-16 * (1 + 1e-9)
    assert stale > 0


def test_the_schedule_keeps_concurrency_and_pulls_the_current_model(tmp_path, monkeypatch):
    """Each buffer is K distinct clients, in arrival order on the simulated clock; no client is
    ever busy twice; each task pulled a version no later than the session's; the clock never
    runs backwards; at most C tasks run at once."""
    recorder = _Recorder(monkeypatch)
    run_federation(_config(tmp_path, **{"training.rounds": 6}))
    last_clock = 0.0
    for version, tasks, clock in recorder.sessions:
        assert len(tasks) == 5 and len({t.client for t in tasks}) == 5
        assert [t.finishes for t in tasks] == sorted(t.finishes for t in tasks)
        assert clock == tasks[-1].finishes >= last_clock
        assert all(t.version <= version and t.started <= t.finishes for t in tasks)
        last_clock = clock
    every = [t for _, tasks, _ in recorder.sessions for t in tasks]
    for moment in sorted({t.started for t in every}):
        running = [t for t in every if t.started <= moment < t.finishes]
        assert len(running) <= 8
        assert len({t.client for t in running}) == len(running)


def test_buffered_secure_sums_equal_the_plain_weighted_sums(tmp_path, monkeypatch):
    """Each session's secure mean is the plain weighted mean of the K weighed updates within
    the encoding's 2^-16, and the secure and plaintext async runs from one seed end at nearly
    the same model (everything but keys and masks is seeded)."""
    checked = []
    original = Federation._aggregate

    def compare(engine, updates, dropouts, round_index):
        outcome = original(engine, updates, dropouts, round_index)
        plain = plain_weighted_mean(updates)
        checked.append(np.max(np.abs(outcome.mean - plain.mean)))
        return outcome

    monkeypatch.setattr(Federation, "_aggregate", compare)
    secure = run_federation(_config(tmp_path, "secure"))
    assert len(checked) == 4 and max(checked) <= 2.0**-16
    plain = run_federation(_config(tmp_path, "plain", **{"secure.enabled": False}))
    assert [m.simulated_time for m in secure.history] == [m.simulated_time for m in plain.history]
    for a, b in zip(secure.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-3)


def test_sessions_survive_dropouts_and_a_failed_session_loses_only_its_buffer(
    tmp_path, monkeypatch
):
    """With 30% of each session's clients dropping out in random phases, sessions with t
    survivors release the sum of the survivors (dropped clients are not in it); a session
    below t releases nothing, the model does not move, and the next buffers go on."""
    result = run_federation(
        _config(tmp_path, **{"training.rounds": 8, "secure.dropout": 0.3, "seed": 4})
    )
    history = result.history
    assert len(history) == 8
    assert any(m.dropped > 0 and not m.failed for m in history)
    assert all(m.sampled == 5 for m in history)
    assert [m.simulated_time for m in history] == sorted(m.simulated_time for m in history)
    forced = run_federation(
        _config(tmp_path, "forced", **{"training.rounds": 3, "secure.dropout": 0.95})
    )
    assert all(m.failed for m in forced.history)
    assert len({m.accuracy for m in forced.history}) == 1  # the model never moved


def test_a_buffer_below_the_clients_policy_floor_is_refused():
    """K = 4 is below the clients' floor of 5 per session: refused, naming --buffer and the
    policy; lowering policy.min_clients explicitly (or no secure aggregation) allows it."""
    with pytest.raises(ConfigError) as error:
        RunConfig().with_overrides({"schedule.mode": "async", "schedule.buffer": 4})
    assert error.value.key == "schedule.buffer"
    assert "policy.min_clients = 5" in str(error.value) and "--buffer" in str(error.value)
    RunConfig().with_overrides(
        {"schedule.mode": "async", "schedule.buffer": 4, "policy.min_clients": 4}
    )
    RunConfig().with_overrides(
        {"schedule.mode": "async", "schedule.buffer": 2, "secure.enabled": False}
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"schedule.buffer": 9, "schedule.concurrency": 8}, "schedule.buffer"),
        ({"schedule.concurrency": 11}, "schedule.concurrency"),
        ({"privacy.level": "client", "privacy.epsilon": 2.0}, "schedule.mode"),
        ({"algorithm.stragglers": 0.5}, "algorithm.stragglers"),
        ({"schedule.mode": "sync"}, "schedule.buffer"),
    ],
)
def test_invalid_async_settings_are_refused(overrides, key):
    """Buffers larger than the clients training at once, more concurrency than clients, DP
    (whose accounting composes sampled rounds), stragglers, or a buffer in sync mode."""
    values = {"schedule.mode": "async", "schedule.buffer": 5, **overrides}
    with pytest.raises(ConfigError) as error:
        RunConfig().with_overrides(values)
    assert error.value.key == key


def test_an_async_run_replays_and_is_not_resumed(tmp_path):
    """Same seed, same schedule and model (keys and masks cancel); resuming is refused with
    the reason (clients in flight are not checkpointed)."""
    first = run_federation(_config(tmp_path, "a", **{"training.rounds": 2}))
    second = run_federation(_config(tmp_path, "b", **{"training.rounds": 2}))
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert first.summary["mode"] == "async" and first.history[-1].staleness is not None
    with pytest.raises(FLError, match="cannot be resumed"):
        run_federation(_config(tmp_path, "a", **{"training.rounds": 3}), resume=True)


def test_async_clients_train_fedprox_local_objective(tmp_path, monkeypatch):
    """README: asynchronous runs call the same algorithm object as synchronous ones. With
    FedProx every buffered client's local training receives the proximal weight mu (and none
    under FedAvg); the schedule does not depend on the algorithm."""
    from fl.engines import local as local_module

    seen = []
    real = local_module.train_locally

    def spy(*args, **kwargs):
        seen.append(kwargs.get("proximal_mu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(local_module, "train_locally", spy)
    fedprox = run_federation(
        _config(
            tmp_path,
            "prox",
            **{"training.rounds": 2, "algorithm.name": "fedprox", "algorithm.mu": 0.5},
        )
    )
    assert len(seen) == 10 and set(seen) == {0.5}
    seen.clear()
    fedavg = run_federation(_config(tmp_path, "avg", **{"training.rounds": 2}))
    assert len(seen) == 10 and set(seen) == {None}
    assert [m.simulated_time for m in fedprox.history] == [m.simulated_time for m in fedavg.history]


def test_a_distributed_worker_bounds_its_own_staleness():
    """Attack 2 of the contribution contract on torch.distributed: a store that names buffer
    2^32 - 1 to every worker but the target shrinks their gradients by s(tau) to 1.5e-5, so
    the sum is the target's gradient. The worker's policy refuses a staleness above 63
    (PolicyViolation); a weakened worker without the bound weighs its gradient by 1.5e-5."""
    import dataclasses

    import secagg
    from fl.engines.distributed import DISTRIBUTED_POLICY
    from fl.engines.distributed.asynchronous import bounded_weight

    assert bounded_weight(DISTRIBUTED_POLICY, buffer=70, pulled=7) == pytest.approx(1 / 8)
    with pytest.raises(secagg.PolicyViolation, match="max_staleness"):
        bounded_weight(DISTRIBUTED_POLICY, buffer=2**32 - 1, pulled=0)
    with pytest.raises(secagg.PolicyViolation):
        bounded_weight(DISTRIBUTED_POLICY, buffer=3, pulled=4)
    weakened = dataclasses.replace(DISTRIBUTED_POLICY, max_staleness=2**40)
    assert bounded_weight(weakened, buffer=2**32 - 1, pulled=0) < 2e-5
