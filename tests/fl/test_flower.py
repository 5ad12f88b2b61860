"""This project's protocol on Flower's simulation engine (Ray backend), against the in-process run."""

import numpy as np
import pytest

flwr = pytest.importorskip(
    "flwr", reason="the Flower tests need the optional extra privagg[flower]"
)

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

import secagg  # noqa: E402
from fl.core.aggregation import ClientUpdate, secure_weighted_mean  # noqa: E402
from fl.engines.flower import PrivaggWorkflow, flatten_arrays  # noqa: E402
from secagg.randomness import DeterministicRandom  # noqa: E402
from tests.fl.flower_apps import (  # noqa: E402
    initial_arrays,
    make_client_app,
    node_update,
    partitions,
)


def test_flower_simulation_matches_the_in_process_protocol():
    """Ten Flower nodes on the Ray backend at the default threshold (t = 6): two drop out
    (share keys, masked input), one lacks the mod, one runs other parameters. The round
    completes without the two misfits and the two dropouts, and its mean equals, bit for bit,
    the in-process secure weighted mean of the same updates with the same dropouts and
    rounding. Dropouts reach the server as an error code, never as text."""
    outcome = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        workflow = PrivaggWorkflow(num_rounds=1, min_nodes=10)
        nodes = workflow.wait_for_nodes(grid)
        partition_of = partitions(grid, nodes)
        # the misfits are partitions 8 and 9; the two that drop out are well configured
        first, second = sorted(nodes, key=lambda node: partition_of[node])[:2]
        workflow.dropouts = {first: "share-keys", second: "masked-input"}
        outcome["nodes"], outcome["dropouts"] = nodes, (first, second)
        outcome["final"] = workflow.run(grid, initial_arrays())
        outcome["report"] = workflow.reports[-1]

    app = make_client_app(
        without_mod=frozenset({8}), other_parameters=frozenset({9}), rounding_seed="test"
    )
    run_simulation(
        server_app, app, num_supernodes=10, backend_config={"client_resources": {"num_cpus": 1}}
    )
    report, nodes, dropouts = outcome["report"], outcome["nodes"], outcome["dropouts"]
    client_of = {node: i for i, node in enumerate(nodes, start=1)}
    reasons = {int(f.split(":")[0].split()[1]): f for f in report.failures}
    assert all(reasons[node].endswith("privagg error DROPPED_OUT") for node in dropouts)
    misfits = {node for node, reason in reasons.items() if "DROPPED_OUT" not in reason}
    assert len(misfits) == 2  # no mod, and other parameters: both refused at the first message
    assert any("different parameters" in reasons[node] for node in misfits)
    assert set(report.contributors) == set(nodes) - misfits - set(dropouts)
    updates = {client_of[n]: ClientUpdate(*node_update(n)) for n in nodes}
    # the mean depends only on who contributed: every other client counts as dropped from the
    # start (a harsher neighbourhood loss than the Flower round had, so the floor is relaxed)
    dropped = {
        client_of[n]: secagg.Phase.ADVERTISE_KEYS for n in set(nodes) - set(report.contributors)
    }
    expected = secure_weighted_mean(
        updates,
        max_weight=10_000,
        clip=4.0,
        precision_bits=16,
        dropouts=dropped,
        round_index=1,
        policy=secagg.ClientPolicy(max_neighbour_loss=1.0),
        rounding_random=lambda u: DeterministicRandom(f"test/1/{u}".encode()),
    )
    assert np.array_equal(report.mean_update, expected.mean)
    assert report.total_weight == expected.total_weight
    final, _ = flatten_arrays(outcome["final"])
    assert np.allclose(final, expected.mean.astype(np.float32))


def test_flower_with_identities_runs_the_consistency_check_and_refuses_impostors():
    """With an allowlist every node signs with its identity and the consistency check runs; a
    node whose key is not on the allowlist is left out and the round completes without it."""
    from tests.fl.flower_apps import identity_keys, make_identity_client_app

    outcome = {}
    server_app = ServerApp()
    allowlist = frozenset(key.public_bytes for key in identity_keys(10))

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        workflow = PrivaggWorkflow(num_rounds=1, min_nodes=10, allowlist=allowlist)
        nodes = workflow.wait_for_nodes(grid)
        partition_of = partitions(grid, nodes)
        honest = min(nodes, key=lambda node: partition_of[node])  # partition 9 is the impostor
        workflow.dropouts = {honest: "consistency-check"}
        workflow.run(grid, initial_arrays())
        outcome["report"], outcome["nodes"] = workflow.reports[-1], nodes

    run_simulation(
        server_app,
        make_identity_client_app(10, impostor=9),
        num_supernodes=10,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    report = outcome["report"]
    assert any("allowlist" in failure for failure in report.failures)
    assert any("DROPPED_OUT" in failure for failure in report.failures)
    assert len(report.contributors) == 9  # the impostor is out; the consistency dropout counts


def test_flower_with_client_level_dp_reports_epsilon():
    """Client-level DP on Flower: clients add distributed Skellam noise before masking; the
    workflow's ledger reports epsilon, and the noisy mean stays near the true mean."""
    outcome = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        workflow = PrivaggWorkflow(
            num_rounds=1, min_nodes=10, dp_noise_multiplier=0.5, dp_clip=10.0
        )
        nodes = workflow.wait_for_nodes(grid)
        workflow.run(grid, initial_arrays())
        outcome["report"], outcome["nodes"] = workflow.reports[-1], nodes

    run_simulation(
        server_app,
        make_client_app(),
        num_supernodes=10,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    report = outcome["report"]
    assert report.epsilon is not None and report.epsilon > 0
    contributors = report.contributors
    exact = np.mean([node_update(n)[0] for n in contributors], axis=0)
    # noise std on the mean: z C sqrt(n / (t - c)) / n = 0.5 * 10 * sqrt(10 / 5) / 10 ~ 0.71
    assert np.abs(report.mean_update - exact).std() < 1.5
    assert report.total_weight == len(contributors)
