"""Buffered asynchronous secure aggregation on Flower's message API (push, pull): nodes train as
soon as they pull, keep their update, weigh it by their own staleness and mask it in the
session of their buffer."""

import numpy as np
import pytest

flwr = pytest.importorskip(
    "flwr", reason="the Flower tests need the optional extra privagg[flower]"
)

from flwr.clientapp import ClientApp  # noqa: E402

import secagg  # noqa: E402
from fl.algorithms.fedbuff import staleness_weight  # noqa: E402
from fl.engines import flower as flower_module  # noqa: E402
from fl.engines.flower import flatten_arrays, without_identities  # noqa: E402
from fl.engines.flower_async import (  # noqa: E402
    ASYNC_RECORD,
    AsyncPrivaggWorkflow,
    make_async_mod,
)
from secagg.encoding import FixedPointEncoder  # noqa: E402
from tests.fl.flower_apps import _train, initial_arrays, node_update  # noqa: E402
from tests.fl.inline_grid import AsyncInlineGrid, partition_configs  # noqa: E402


def _grid(count=10, delay=lambda node: 1 + 3 * (node % 4)):
    app = ClientApp(mods=[make_async_mod(policy=without_identities)])
    app.train()(_train)
    return AsyncInlineGrid(
        app, partition_configs(count, **{"privagg-rounding-seed": "async"}), delay
    )


class _Spy:
    """What each node handed to the protocol (by session), and what pull replies carried."""

    def __init__(self, monkeypatch, grid):
        self.encoded: list[dict[int, np.ndarray]] = [{}]
        self.pull_replies = []
        real = flower_module._encoded_update
        spy = self

        def encoded_update(msg, context, saved, client_id, call_next):
            vector = real(msg, context, saved, client_id, call_next)
            spy.encoded[-1][context.node_id] = vector
            return vector

        monkeypatch.setattr(flower_module, "_encoded_update", encoded_update)
        app = grid.app

        def answering(message, context):
            reply = app(message, context)
            if ASYNC_RECORD in message.content.config_records:
                spy.pull_replies.append(reply)
            return reply

        grid.app = answering


def _workflow(**kwargs):
    defaults = dict(
        num_rounds=3,
        min_nodes=10,
        buffer=5,
        concurrency=8,
        poll_interval=0.0,
    )
    return AsyncPrivaggWorkflow(**{**defaults, **kwargs})


def test_nodes_weigh_their_kept_update_by_their_own_staleness(monkeypatch):
    """Every vector a node hands to the protocol decodes (alone) to s(tau) times its update,
    tau being the server's version at the session less the version the node pulled; each
    session's mean is the plain weighted mean of those weighed updates within 2^-16, and the
    final model is the sum of the released means. Some sessions hold stale updates."""
    grid = _grid()
    spy = _Spy(monkeypatch, grid)
    workflow = _workflow()
    original = workflow._run_buffer

    def session(grid_, number, arrivals):
        spy.encoded.append({})
        return original(grid_, number, arrivals)

    workflow._run_buffer = session
    final = workflow.run(grid, initial_arrays())
    encoder = FixedPointEncoder(
        num_clients=5, max_weight=10_000, clip=4.0, precision_bits=16, ring_bits=64
    )
    released = [r for r in workflow.reports if r.contributors]
    assert len(released) == 3 and workflow.version == 3
    stale = 0
    total = np.zeros_like(released[0].mean_update)
    for report, staleness, encoded in zip(
        workflow.reports, workflow.staleness, spy.encoded[1:], strict=True
    ):
        if not report.contributors:
            continue
        weighed, weights = [], []
        for node in report.contributors:
            delta, weight = node_update(node)
            expected = np.clip(staleness_weight(staleness[node]) * delta, -4, 4)
            assert np.max(np.abs(encoder.decode(encoded[node]) - expected)) <= 2.0**-16
            weighed.append(expected)
            weights.append(weight)
            stale += staleness[node] > 0
        plain = np.average(weighed, axis=0, weights=weights)
        assert np.max(np.abs(report.mean_update - plain)) <= 2.0**-16
        assert report.total_weight == sum(weights)
        total += report.mean_update
    assert stale > 0
    vector, _ = flatten_arrays(final)
    assert np.allclose(vector, total, atol=1e-6)


def test_a_pull_reply_carries_an_acknowledgement_only(monkeypatch):
    """After training, a node answers the pull with the version it trained on and nothing
    else: no arrays, no metrics (not even its example count)."""
    grid = _grid()
    spy = _Spy(monkeypatch, grid)
    _workflow(num_rounds=1).run(grid, initial_arrays())
    assert spy.pull_replies
    for reply in spy.pull_replies:
        assert not reply.has_error()
        assert list(reply.content.array_records) == []
        assert list(reply.content.metric_records) == []
        assert dict(reply.content.config_records[ASYNC_RECORD]) == {
            "trained": reply.content.config_records[ASYNC_RECORD]["trained"]
        }


def test_sessions_complete_without_a_node_that_drops_out():
    """A node that drops out in share-keys is left out of its session's sum, which still
    releases; every session stays within its buffer."""
    grid = _grid()
    workflow = _workflow(num_rounds=3)
    dropping = 101
    workflow.dropouts = {dropping: secagg.Phase.SHARE_KEYS.value}
    workflow.run(grid, initial_arrays())
    joined = [r for r in workflow.reports if dropping in r.nodes]
    assert joined and all(dropping not in r.contributors for r in joined)
    assert any(r.contributors for r in joined)
    assert all(len(r.nodes) == 5 for r in workflow.reports)


def test_a_buffer_below_the_nodes_floor_is_refused_before_any_message():
    """A buffer of 4 is below the nodes' policy floor (5): ConfigurationError naming the floor,
    before any pull is pushed."""
    grid = _grid()
    with pytest.raises(secagg.ConfigurationError, match="policy floor 5"):
        _workflow(buffer=4).run(grid, initial_arrays())
    assert grid.pushed == []


@pytest.mark.slow
def test_async_workflow_on_flowers_simulation_engine():
    """The same workflow and mod on Flower's simulation engine (Ray backend, ten SuperNodes):
    three sessions of five nodes release, each node's staleness is its own, and later buffers
    hold stale updates (the fast tests above check the arithmetic on an in-process grid)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    outcome = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        workflow = _workflow(poll_interval=0.1)
        outcome["final"] = workflow.run(grid, initial_arrays())
        outcome["workflow"] = workflow

    app = ClientApp(mods=[make_async_mod(policy=without_identities)])
    app.train()(_train)
    run_simulation(
        server_app, app, num_supernodes=10, backend_config={"client_resources": {"num_cpus": 1}}
    )
    workflow = outcome["workflow"]
    assert workflow.version == 3
    assert [len(r.contributors) for r in workflow.reports] == [5, 5, 5]
    assert all(value >= 0 for staleness in workflow.staleness for value in staleness.values())
    assert any(value > 0 for staleness in workflow.staleness for value in staleness.values())
    vector, _ = flatten_arrays(outcome["final"])
    assert np.allclose(vector, sum(r.mean_update for r in workflow.reports), atol=1e-6)


class _CarelessServer(AsyncPrivaggWorkflow):
    """A server that skips its own checks and forms sessions of two nodes."""

    def _check(self, nodes):
        pass

    def ready(self, round_index, cohort):
        return True


@pytest.mark.parametrize("floor", [None, 2], ids=["default-nodes", "weakened-nodes"])
def test_a_server_forming_tiny_buffers_learns_nothing_from_nodes_that_hold_their_floor(floor):
    """A malicious server forms buffers of two nodes, one of them its own (it knows that
    node's update), to read the other's update off the sum. Nodes holding the default policy
    (sessions of at least 5) refuse at the first message and nothing is released; nodes whose
    floor was lowered to 2 take part, and the server recovers the target's weighed update from
    the released sum (the attack works where the condition K >= policy floor is broken)."""
    extra = {} if floor is None else {"privagg-min-clients": floor}
    app = ClientApp(mods=[make_async_mod(policy=without_identities)])
    app.train()(_train)
    grid = AsyncInlineGrid(app, partition_configs(4, **extra), lambda node: 1)
    server = _CarelessServer(
        num_rounds=1,
        min_nodes=4,
        buffer=2,
        concurrency=2,
        poll_interval=0.0,
        max_wait=0.5,
        client_policy=secagg.ClientPolicy.permissive(),
    )
    if floor is None:
        with pytest.raises(secagg.ThresholdNotMet):
            server.run(grid, initial_arrays())
        assert server.reports and all(not r.contributors for r in server.reports)
        assert all("POLICY_VIOLATION" in " ".join(r.failures) for r in server.reports)
        return
    server.run(grid, initial_arrays())
    report = server.reports[0]
    target, colluder = report.contributors
    known, known_weight = node_update(colluder)
    _, target_weight = node_update(target)
    recovered = (report.mean_update * report.total_weight - known * known_weight) / target_weight
    expected, _ = node_update(target)
    assert np.allclose(recovered, expected, atol=1e-3)  # staleness 0: weight 1
