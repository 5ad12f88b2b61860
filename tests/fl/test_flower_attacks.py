"""A dishonest ServerApp against nodes running privagg_mod: each route is refused by the node.

The workflow and the mod run unchanged through an in-process Grid (tests/fl/inline_grid.py);
each test runs the adversary's strategy against the real mod, which refuses, and against a
deliberately weakened node, which gives the adversary what it wants.
"""

import dataclasses
import re

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower tests need the optional extra privagg[flower]")

import fl.engines.flower as flower
import secagg
from fl.engines.flower import PrivaggWorkflow, flatten_arrays
from tests.fl.flower_apps import initial_arrays, make_client_app, node_update
from tests.fl.inline_grid import InlineGrid, partition_configs


class ReplayWorkflow(PrivaggWorkflow):
    """Adversary: reruns the first round's session (or a new session for the same round)."""

    same_session: bool = True
    _first: tuple | None = None

    def _session(self, node_of, dimension, identities, round_number):
        if self._first is None:
            self._first = super()._session(node_of, dimension, identities, round_number)
            return self._first
        if self.same_session:
            return self._first
        return super()._session(node_of, dimension, identities, round_number - 1)


def _sum_and_weight(report):
    return report.mean_update * report.total_weight, report.total_weight


@pytest.mark.parametrize("same_session", [True, False])
def test_rerunning_a_session_without_one_node_is_refused_by_the_nodes(same_session):
    """No second run (SECURITY.md): the server runs a round with every node, then the same
    session again (or a new session of the same round) with node u silent, and subtracts the
    two sums. Each node keeps the sessions it joined in its state and refuses
    (REPLAYED_SESSION), so the second round fails. Nodes that lose that state (weakened:
    restarted) give the server u's weight exactly and u's update."""
    for forgetful in (False, True):
        grid = InlineGrid(
            make_client_app(), partition_configs(10, **{"privagg-rounding-seed": "attack"})
        )
        nodes = grid.get_node_ids()
        u = nodes[3]
        workflow = ReplayWorkflow(num_rounds=1, min_nodes=10)
        workflow.same_session = same_session
        arrays = initial_arrays()
        workflow.run_round(grid, arrays, 1)
        if forgetful:
            for context in grid.contexts.values():
                context.state.config_records.pop("privagg-sessions", None)
        workflow.dropouts = {u: "advertise-keys"}
        if not forgetful:
            with pytest.raises(secagg.ThresholdNotMet):
                workflow.run_round(grid, arrays, 2)
            continue
        workflow.run_round(grid, arrays, 2)
        (total1, weight1), (total2, weight2) = map(_sum_and_weight, workflow.reports)
        delta, weight = node_update(u)
        assert weight1 - weight2 == weight
        assert np.allclose((total1 - total2) / weight, delta, atol=1e-3)


def test_node_errors_reach_the_server_as_codes_without_the_example_count(monkeypatch):
    """Fixed error codes (secagg.ErrorCode): a server that sets max_weight = 1 makes every
    node's encoding fail. Only the code INVALID_INPUT reaches it. With the first version's
    reply, which carried the error's text (weakened here), every node's example count leaks."""
    from flwr.app import Error, Message

    weights = {node_update(node)[1] for node in partition_configs(10)}
    leaked = {}
    for weakened in (False, True):
        if weakened:
            monkeypatch.setattr(
                flower,
                "_error_reply",
                lambda msg, error: Message(Error(code=0, reason=f"privagg: {error}"), reply_to=msg),
            )
        grid = InlineGrid(make_client_app(), partition_configs(10))
        workflow = PrivaggWorkflow(num_rounds=1, min_nodes=10, max_weight=1)
        with pytest.raises(secagg.ThresholdNotMet):
            workflow.run_round(grid, initial_arrays(), 1)
        reasons = grid.error_reasons
        assert len(reasons) == 10
        if not weakened:
            assert set(reasons) == {"privagg error INVALID_INPUT"}
        numbers = {int(n) for reason in reasons for n in re.findall(r"\d+", reason)}
        leaked[weakened] = weights & numbers
    assert not leaked[False]
    assert leaked[True] == weights


def test_a_node_refuses_dp_noise_below_its_policy():
    """The node, not the server, decides the noise: a node whose config sets
    privagg-min-noise-multiplier = 1.0 refuses a client-level DP round at z = 0.5
    (POLICY_VIOLATION), and any node refuses noise shares sized for more honest inputs than
    t - c. A node without the floor (weakened: default policy) takes part."""
    for floor, refused in ((1.0, True), (0.0, False)):
        grid = InlineGrid(
            make_client_app(), partition_configs(10, **{"privagg-min-noise-multiplier": floor})
        )
        workflow = PrivaggWorkflow(
            num_rounds=1, min_nodes=10, dp_noise_multiplier=0.5, dp_clip=10.0
        )
        if refused:
            with pytest.raises(secagg.ThresholdNotMet):
                workflow.run_round(grid, initial_arrays(), 1)
        else:
            workflow.run_round(grid, initial_arrays(), 1)
            assert workflow.reports[-1].epsilon > 0


def test_a_node_refuses_noise_shares_beyond_the_honest_floor():
    """Each client adds 1/noise_shares of the variance; a server asking for shares sized for t
    honest inputs (ignoring c colluders) is refused by every node."""

    class GreedyWorkflow(PrivaggWorkflow):
        def _session(self, node_of, dimension, identities, round_number):
            config, decode = super()._session(node_of, dimension, identities, round_number)
            greedy = secagg.Contribution(
                config.contribution.encoding,
                {**config.contribution.terms, "noise_shares": config.threshold},
            )
            return dataclasses.replace(config, contribution=greedy), decode

    grid = InlineGrid(make_client_app(), partition_configs(10))
    workflow = GreedyWorkflow(num_rounds=1, min_nodes=10, dp_noise_multiplier=0.5, dp_clip=10.0)
    with pytest.raises(secagg.ThresholdNotMet):
        workflow.run_round(grid, initial_arrays(), 1)


def test_policy_from_node_config_reads_every_floor():
    """Each privagg-* node config key sets one floor; a wrong value is a ConfigurationError."""
    from flwr.app import Context, RecordDict

    def context(**config):
        return Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})

    policy = flower.policy_from_node_config(
        context(
            **{
                "privagg-min-clients": 8,
                "privagg-corrupt-fraction": 0.1,
                "privagg-ring-bits": "64",
                "privagg-require-identities": True,
                "privagg-min-noise-multiplier": 1,
            }
        )
    )
    assert dataclasses.replace(policy) == secagg.ClientPolicy(
        min_clients=8,
        corrupt_fraction=0.1,
        allowed_ring_bits=frozenset({64}),
        require_identities=True,
        min_noise_multiplier=1.0,
    )
    # across a network identities are required unless the node's own config says otherwise
    assert flower.policy_from_node_config(context()) == secagg.ClientPolicy(require_identities=True)
    assert flower.policy_from_node_config(
        context(**{"privagg-require-identities": False})
    ) == secagg.ClientPolicy(require_identities=False)
    pinned = flower.policy_from_node_config(
        context(
            **{
                "privagg-pin-clip": 4.0,
                "privagg-pin-precision-bits": 16,
                "privagg-range-noise-multiplier": "0.5,2",
                "privagg-max-staleness": 7,
            }
        )
    )
    assert pinned.pinned_terms == {"clip": 4.0, "precision_bits": 16}
    assert pinned.term_ranges == {"noise_multiplier": (0.5, 2.0)}
    assert pinned.max_staleness == 7
    with pytest.raises(secagg.ConfigurationError, match="low,high"):
        flower.policy_from_node_config(context(**{"privagg-range-clip": "1"}))
    with pytest.raises(secagg.ConfigurationError, match="ring sizes"):
        flower.policy_from_node_config(context(**{"privagg-ring-bits": "x"}))
    with pytest.raises(secagg.ConfigurationError, match="corrupt_fraction"):
        flower.policy_from_node_config(context(**{"privagg-corrupt-fraction": "high"}))


def test_the_inline_grid_runs_the_workflow_like_the_simulation_engine():
    """Sanity of the harness: ten honest nodes, one round, the mean of the ten updates."""
    grid = InlineGrid(make_client_app(), partition_configs(10))
    workflow = PrivaggWorkflow(num_rounds=1, min_nodes=10)
    final, _ = flatten_arrays(workflow.run(grid, initial_arrays()))
    updates = [node_update(n) for n in grid.get_node_ids()]
    weights = np.array([w for _, w in updates], dtype=float)
    expected = sum(w * d for d, w in updates) / weights.sum()
    assert np.allclose(final, expected, atol=1e-4)
