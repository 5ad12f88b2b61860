"""The contribution contract on Flower (SECURITY.md, "One contribution contract"): a server that
shapes what one node adds to the sum - its own clip, its own staleness, its own model, its own
rounding - learns nothing from the sum.

Each test runs the adversary's full strategy through the real mod at the default sizes (no
colluding node), and the same strategy against a deliberately weakened node that takes the
server's value, where it recovers the target's update: the test shows its own power.
"""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower tests need the optional extra privagg[flower]")

from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp

import fl.engines.flower as flower
import secagg
from fl.algorithms.fedbuff import staleness_weight
from fl.engines.flower import PrivaggWorkflow
from fl.engines.flower_async import ASYNC_RECORD, AsyncPrivaggWorkflow, make_async_mod
from secagg.encoding import FixedPointEncoder
from tests.fl.flower_apps import _train, initial_arrays, make_client_app, node_update
from tests.fl.inline_grid import AsyncInlineGrid, InlineGrid, partition_configs

TINY_CLIP = 1e-12


def _recovered(report, node):
    """The adversary's estimate of ``node``'s update: the released weighted sum over its
    weight (exact when every other contribution is shrunk to nothing)."""
    _, weight = node_update(node)
    return report.mean_update * report.total_weight / weight


class PerNodeEncodingServer(PrivaggWorkflow):
    """Adversary: every node but ``target`` is told to encode with a clip of 1e-12, so the
    released "sum" is the target's update. Against the contract it has to say so in each
    node's session configuration (``in_config``); against a weakened node it says it beside
    the configuration, in the training config, as the old adapter's encoding dict did."""

    target: int = 0
    in_config: bool = True
    tiny_clip: float = TINY_CLIP

    def _exchange(self, grid, round_number, requests, arrays):
        for node, request in requests.items():
            if node == self.target or "secagg-config" not in request:
                continue
            if self.in_config:
                config = secagg.SecAggConfig.decode(request["secagg-config"])
                tiny = secagg.Contribution(
                    config.contribution.encoding,
                    {**config.contribution.terms, "clip": self.tiny_clip},
                )
                request["secagg-config"] = dataclasses.replace(config, contribution=tiny).encode()
        if not self.in_config and arrays is not None:
            replies = {}
            for node, request in requests.items():
                told = {"adversary-clip": self.tiny_clip}
                self.train_config = {} if node == self.target else told
                replies |= super()._exchange(grid, round_number, {node: request}, arrays)
            self.train_config = {}
            return replies
        return super()._exchange(grid, round_number, requests, arrays)


def _weaken_to_side_channel_clip(monkeypatch):
    """The weakened node: encodes with a clip the server sends beside the session (the old
    adapter), everything else as the real mod."""
    real = flower._encoded_update

    def encoded_update(msg, context, config, client_id, call_next):
        clip = msg.content.config_records["config"].get("adversary-clip")
        if clip is None:
            return real(msg, context, config, client_id, call_next)
        trained = call_next(msg, context)
        received, _ = flower.flatten_arrays(msg.content.array_records["arrays"])
        local, _ = flower.flatten_arrays(trained.content.array_records["arrays"])
        agreed = FixedPointEncoder.from_contribution(config.contribution)
        encoder = dataclasses.replace(agreed, clip=float(clip))
        weight = int(trained.content.metric_records["metrics"]["num-examples"])
        words = encoder.encode(local - received, weight=weight)
        return words  # within the session's input bound: a smaller clip only shrinks it

    monkeypatch.setattr(flower, "_encoded_update", encoded_update)


@pytest.mark.parametrize(
    "min_resolution_bits, tiny_clip",
    [(None, TINY_CLIP), (0, 2.0**-16)],
    ids=["default", "no-resolution-floor"],
)
def test_a_clip_for_each_node_isolates_no_update(monkeypatch, min_resolution_bits, tiny_clip):
    """Attack 1 of the contract: ten nodes, one target, each other node told to clip to 1e-12
    (or, against nodes without the resolution floor, to one fixed-point step, 2^-16). Told in
    the session, the nodes refuse (default policy: the clip resolves fewer than 2^8 steps) or,
    with that floor removed, derive other masks than the target (the contribution is in the
    digest): nothing is released. The same server against weakened nodes that take the clip
    from beside the session gets the target's update to 1e-3."""
    extra = {} if min_resolution_bits is None else {"privagg-min-resolution-bits": 0}
    grid = InlineGrid(make_client_app(), partition_configs(10, **extra))
    target = grid.get_node_ids()[4]
    server = PerNodeEncodingServer(num_rounds=1, min_nodes=10)
    server.target, server.tiny_clip = target, tiny_clip
    with pytest.raises(secagg.ThresholdNotMet):
        server.run_round(grid, initial_arrays(), 1)
    assert not server.reports
    if min_resolution_bits is None:
        assert grid.error_reasons.count("privagg error POLICY_VIOLATION") == 9
    else:
        assert "privagg error POLICY_VIOLATION" not in grid.error_reasons

    _weaken_to_side_channel_clip(monkeypatch)
    grid = InlineGrid(make_client_app(), partition_configs(10, **extra))
    server = PerNodeEncodingServer(num_rounds=1, min_nodes=10)
    server.target, server.in_config, server.tiny_clip = target, False, tiny_clip
    server.run_round(grid, initial_arrays(), 1)
    expected, _ = node_update(target)
    assert np.max(np.abs(_recovered(server.reports[-1], target) - expected)) < 1e-3


def test_a_model_for_each_node_is_refused_by_the_node_it_was_sent_to(monkeypatch):
    """The session names the model by its digest, and each node hashes the model it was sent:
    a server that sends the target another model (to shape its update) is refused by the
    target (PARAMETER_MISMATCH) and the round goes on without it. A weakened node that trusts
    the model it is sent trains on the server's crafted model."""
    crafted = ArrayRecord(
        {name: Array(np.full_like(a.numpy(), 7.0)) for name, a in initial_arrays().items()}
    )

    class CraftedModelServer(PrivaggWorkflow):
        target: int = 0

        def _exchange(self, grid, round_number, requests, arrays):
            if arrays is None or self.target not in requests:
                return super()._exchange(grid, round_number, requests, arrays)
            rest = {n: r for n, r in requests.items() if n != self.target}
            replies = super()._exchange(grid, round_number, rest, arrays)
            return replies | super()._exchange(
                grid, round_number, {self.target: requests[self.target]}, crafted
            )

    for weakened in (False, True):
        if weakened:
            monkeypatch.setattr(
                flower,
                "model_digest",
                lambda arrays, real=flower.model_digest: real(initial_arrays()),
            )
        grid = InlineGrid(make_client_app(), partition_configs(10))
        server = CraftedModelServer(num_rounds=1, min_nodes=10)
        server.target = grid.get_node_ids()[2]
        server.run_round(grid, initial_arrays(), 1)
        contributed = server.target in server.reports[-1].contributors
        assert contributed is weakened
        assert (grid.error_reasons == ["privagg error PARAMETER_MISMATCH"]) is not weakened


class StaleStoryServer(AsyncPrivaggWorkflow):
    """Adversary (FedBuff): every node but ``target`` is told at its pull that the model is
    ``story`` versions old, so s(tau) shrinks its update to nothing and the session's sum is
    the target's (with ``per_session``, the story is told in each node's session instead)."""

    target: int = 0
    story: int = 10**12
    per_session: bool = False

    def _pull_messages(self, nodes):
        messages = super()._pull_messages(nodes)
        if not self.per_session:
            for message in messages:
                if message.metadata.dst_node_id != self.target:
                    message.content[ASYNC_RECORD] = ConfigRecord({"version": -self.story})
        return messages

    def _exchange(self, grid, round_number, requests, arrays):
        if self.per_session:
            for node, request in requests.items():
                if node == self.target or "secagg-config" not in request:
                    continue
                config = secagg.SecAggConfig.decode(request["secagg-config"])
                told = secagg.Contribution(
                    config.contribution.encoding,
                    {**config.contribution.terms, "model_version": self.story},
                )
                request["secagg-config"] = dataclasses.replace(config, contribution=told).encode()
        return super()._exchange(grid, round_number, requests, arrays)


def _async_grid(**node_config):
    app = ClientApp(mods=[make_async_mod(policy=flower.without_identities)])
    app.train()(_train)
    return AsyncInlineGrid(app, partition_configs(5, **node_config), lambda node: 1)


def _stale_server(target, **kwargs):
    server = StaleStoryServer(
        num_rounds=1,
        min_nodes=5,
        buffer=5,
        concurrency=5,
        poll_interval=0.0,
        max_wait=0.5,
        max_failed_sessions=1,
    )
    server.target = target
    for name, value in kwargs.items():
        setattr(server, name, value)
    return server


@pytest.mark.parametrize("per_session", [False, True], ids=["told-at-pull", "told-in-session"])
def test_a_staleness_for_each_node_isolates_no_update(per_session):
    """Attack 2 of the contract: five FedBuff nodes (the floor), the other four told a
    staleness of 10^12 (weight 1e-6) - at their pull, or in their session. The nodes bound
    their staleness themselves (max_staleness 63) and the session's version is in the digest,
    so nothing is released. Weakened nodes without the bound (max_staleness 10^13) give the
    server the target's update to 1e-3 when told at the pull."""
    grid = _async_grid()
    target = grid.get_node_ids()[0]
    server = _stale_server(target, per_session=per_session)
    with pytest.raises(secagg.ThresholdNotMet):
        server.run(grid, initial_arrays())
    assert all(not report.contributors for report in server.reports)
    if not per_session:
        assert "privagg error POLICY_VIOLATION" in grid.error_reasons

    grid = _async_grid(**{"privagg-max-staleness": 10**13})
    server = _stale_server(target, per_session=per_session)
    if per_session:  # the version is bound: even without the bound nothing unmasks
        with pytest.raises(secagg.ThresholdNotMet):
            server.run(grid, initial_arrays())
        return
    server.run(grid, initial_arrays())
    report = server.reports[-1]
    assert len(report.contributors) == 5
    assert staleness_weight(10**12) < 1e-5
    expected, _ = node_update(target)
    assert np.max(np.abs(_recovered(report, target) - expected)) < 1e-3


def test_a_pull_that_goes_back_in_versions_is_refused():
    """A node remembers the newest version it pulled: a pull naming an older version, or the
    same version for another model, is refused (INCONSISTENT_REQUEST), so a server cannot
    make a node's later update look older than it is."""
    from flwr.app import Context, RecordDict

    from fl.engines.flower_async import _record_pull

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    _record_pull(context, 5, b"a" * 32)
    _record_pull(context, 5, b"a" * 32)
    _record_pull(context, 6, b"b" * 32)
    with pytest.raises(secagg.InconsistentRequest, match="older"):
        _record_pull(context, 5, b"a" * 32)
    with pytest.raises(secagg.InconsistentRequest, match="another model"):
        _record_pull(context, 6, b"c" * 32)


def test_a_default_node_requires_identities_and_takes_no_rounding_seed(monkeypatch):
    """Secure by default across a network: a node with its default policy refuses a session
    without identities (POLICY_VIOLATION), and opting out is the node's own choice
    (without_identities). Rounding randomness is the node's own: a server that sends the old
    "rounding-seed" key does not fix a node's rounding (two rounds with the same seed encode
    differently); a node's own privagg-rounding-seed does (replays)."""
    grid = InlineGrid(make_client_app(policy=flower.policy_from_node_config), partition_configs(5))
    with pytest.raises(secagg.ThresholdNotMet):
        PrivaggWorkflow(num_rounds=1, min_nodes=5).run_round(grid, initial_arrays(), 1)
    assert set(grid.error_reasons) == {"privagg error POLICY_VIOLATION"}

    class SeedingServer(PrivaggWorkflow):
        def _exchange(self, grid, round_number, requests, arrays):
            for request in requests.values():
                request["rounding-seed"] = "server-chosen"
            return super()._exchange(grid, round_number, requests, arrays)

    encoded: list[dict[int, np.ndarray]] = []
    real = flower._encoded_update

    def spy(msg, context, config, client_id, call_next):
        words = real(msg, context, config, client_id, call_next)
        encoded[-1][context.node_id] = words
        return words

    monkeypatch.setattr(flower, "_encoded_update", spy)
    for node_seed in (None, None, "mine", "mine"):
        encoded.append({})
        extra = {} if node_seed is None else {"privagg-rounding-seed": node_seed}
        grid = InlineGrid(make_client_app(), partition_configs(5, **extra))
        SeedingServer(num_rounds=1, min_nodes=5).run_round(grid, initial_arrays(), 1)
    node = sorted(encoded[0])[0]
    assert not np.array_equal(encoded[0][node], encoded[1][node])
    assert np.array_equal(encoded[2][node], encoded[3][node])
