"""Buffered asynchronous secure aggregation on Flower's engines (FedBuff, Nguyen et al. AISTATS
2022; secure version: So et al. 2021), built on :mod:`fl.engines.flower`'s protocol carriers.

* :func:`make_async_mod` - a ClientApp mod, placed where :func:`~fl.engines.flower.privagg_mod`
  would be. A **pull** message (a ``train`` message with a ``"privagg-async"`` config record and
  the global model) makes the node train at once, on the model version it names; the node keeps
  its update in its own state and replies with an acknowledgement only. When the node is later
  asked for its masked input in a secure-aggregation session, the session's contribution
  (bound into its digest, so every node of the session was told the same) names the server's
  current version and the staleness rule; the node computes its staleness tau itself from the
  version it recorded at its pull, refuses a tau beyond its policy's ``max_staleness`` (63 by
  default: no honest weight below 1/8), scales its kept update by s(tau) = 1 / sqrt(1 + tau)
  (:func:`fl.algorithms.fedbuff.staleness_weight`), and hands that to the protocol, which
  encodes and masks it. The update never leaves the node unmasked. A node also refuses a pull
  that names an older version than one it pulled before, or the same version for another
  model.
* :class:`AsyncPrivaggWorkflow` - a ServerApp workflow. It keeps ``concurrency`` nodes training
  (pull messages through ``grid.push_messages``, replies collected with ``grid.pull_messages``
  as they come), and every ``buffer`` arrivals runs one session of this project's protocol among
  those nodes (:class:`~fl.engines.flower.PrivaggWorkflow`'s session), applies the decoded
  mean and moves to the next model version; each freed node, and each node that finished
  before it, is replaced by an idle one on the current model.

Use it like the synchronous pair::

    app = ClientApp(mods=[make_async_mod()])          # instead of mods=[privagg_mod]
    workflow = AsyncPrivaggWorkflow(num_rounds=20, buffer=5, concurrency=10)
    final = workflow.run(grid, initial_arrays)         # num_rounds = server updates

The buffer is one secure-aggregation session, so it must meet the nodes' policy floor
(``privagg-min-clients``, 5 by default): a smaller buffer is refused before any message is
sent. Client-level DP is not offered asynchronously (its accounting composes sampled rounds).
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

import secagg
from fl.algorithms.fedbuff import staleness_weight
from fl.engines.flower import (
    AGREED_RECORD,
    FLOWER_RECORD,
    IdentityProvider,
    PolicyProvider,
    PrivaggWorkflow,
    RoundReport,
    _RoundState,
    flatten_arrays,
    identity_from_node_config,
    make_privagg_mod,
    model_digest,
    policy_from_node_config,
    unflatten_arrays,
)
from secagg.contribution import StalenessRule, Term

__all__ = ["ASYNC_RECORD", "AsyncPrivaggWorkflow", "make_async_mod"]

ASYNC_RECORD = "privagg-async"
"""The config record of a pull message: the model version the node trains on."""
_KEPT = "privagg-async-update"
_PULLED = "privagg-async-pulled"


# -- client side ----------------------------------------------------------------------------------


def _record_pull(context: Context, version: int, digest: bytes) -> None:
    """Remember the newest version pulled; refuse a pull that goes back, or that names the
    same version for another model (a server telling this node a story about versions)."""
    last = context.state.config_records.get(_PULLED)
    if last is not None:
        if version < int(last["version"]):
            raise secagg.InconsistentRequest(
                f"a pull names model version {version}, older than the {last['version']} "
                "this node pulled before",
                sender=0,
            )
        if version == int(last["version"]) and not hmac.compare_digest(
            bytes(last["digest"]), digest
        ):
            raise secagg.InconsistentRequest(
                f"a pull names model version {version} for another model than before", sender=0
            )
    context.state.config_records[_PULLED] = ConfigRecord({"version": version, "digest": digest})


def _pull(msg: Message, context: Context, call_next: Callable) -> Message:
    """Train on the pulled model now; keep the update on the node; acknowledge."""
    version = int(msg.content.config_records[ASYNC_RECORD]["version"])
    try:
        _record_pull(context, version, model_digest(msg.content.array_records["arrays"]))
    except secagg.InconsistentRequest as error:
        return Message(
            Error(code=int(error.code), reason=f"privagg error {error.code.name}"), reply_to=msg
        )
    trained = call_next(msg, context)
    if trained.has_error():
        return Message(trained.error, reply_to=msg)
    pulled, layout = flatten_arrays(msg.content.array_records["arrays"])
    local, _ = flatten_arrays(trained.content.array_records["arrays"])
    weight = int(trained.content.metric_records["metrics"]["num-examples"])
    context.state.config_records[_KEPT] = ConfigRecord(
        {
            "update": (local - pulled).astype(np.float64).tobytes(),
            "layout": json.dumps(layout),
            "weight": weight,
            "version": version,
        }
    )
    return Message(RecordDict({ASYNC_RECORD: ConfigRecord({"trained": version})}), reply_to=msg)


def _kept_update(msg: Message, context: Context, policy: secagg.ClientPolicy) -> Message:
    """The node's kept update, weighed by its own staleness, as the wrapped ClientApp's reply
    (the session's reference model was zeroed, so local - reference is exactly the weighed
    update)."""
    kept = context.state.config_records.get(_KEPT)
    if kept is None:
        raise ValueError("asked for a masked input, but this node holds no trained update")
    agreed = secagg.Contribution.decode(msg.content.config_records[AGREED_RECORD]["contribution"])
    if agreed.staleness is not StalenessRule.INVERSE_SQRT:
        raise secagg.PolicyViolation(
            f"an asynchronous session must weigh staleness by {StalenessRule.INVERSE_SQRT.value}, "
            f"this one says {agreed.staleness.value}",
            sender=0,
        )
    staleness = agreed.integer("model_version") - int(kept["version"])
    policy.check_staleness(staleness)
    update = np.frombuffer(kept["update"], dtype=np.float64) * staleness_weight(staleness)
    layout = [(name, tuple(shape)) for name, shape in json.loads(kept["layout"])]
    del context.state.config_records[_KEPT]  # one update, one session
    return Message(
        RecordDict(
            {
                "arrays": unflatten_arrays(update, layout),
                "metrics": MetricRecord({"num-examples": int(kept["weight"])}),
            }
        ),
        reply_to=msg,
    )


def _zero_reference(msg: Message) -> None:
    """Replace the model a session message carries by zeros of its shapes (the node's kept
    update is relative to the version it pulled, not to this one)."""
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        return
    msg.content["arrays"] = ArrayRecord(
        {name: Array(np.zeros_like(array.numpy())) for name, array in arrays.items()}
    )


def make_async_mod(
    identity: IdentityProvider = identity_from_node_config,
    policy: PolicyProvider = policy_from_node_config,
) -> Callable:
    """A client mod for asynchronous secure aggregation: the protocol side of
    :func:`~fl.engines.flower.make_privagg_mod` with the same ``identity`` and ``policy``
    providers (the policy also bounds the node's staleness: ``privagg-max-staleness``)."""
    inner = make_privagg_mod(identity, policy)

    def mod(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        records = msg.content.config_records
        if ASYNC_RECORD in records:
            return _pull(msg, context, call_next)
        if FLOWER_RECORD in records:
            _zero_reference(msg)
            node_policy = policy(context)
            return inner(msg, context, lambda m, c: _kept_update(m, c, node_policy))
        return call_next(msg, context)

    return mod


# -- server side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arrival:
    node: int
    version: int


@dataclass
class AsyncPrivaggWorkflow(PrivaggWorkflow):
    """ServerApp workflow: buffered asynchronous FedAvg whose every buffer is one session of this
    project's protocol.

    Args:
        num_rounds: server updates (released sessions) to run.
        buffer: K, arrivals per session.
        concurrency: C, nodes training at once.
        poll_interval: seconds between polls for arrivals when none came.
        max_wait: seconds without any arrival before giving up (None: wait forever).
        max_failed_sessions: consecutive sessions that release nothing before giving up (the
            nodes keep refusing, or keep dropping below the threshold).
        (the other arguments as :class:`~fl.engines.flower.PrivaggWorkflow`; the ``train_config``
        travels with every pull message.)

    Attributes:
        version: the current model version (server updates applied).
        reports: one :class:`~fl.engines.flower.RoundReport` per session, ``round`` the
            session's number; failed sessions (too few nodes left) are reported too, with no
            contributors.
        staleness: per session, each contributing node's staleness.
    """

    buffer: int = 5
    concurrency: int = 10
    poll_interval: float = 0.1
    max_wait: float | None = 600.0
    max_failed_sessions: int = 3
    version: int = 0
    staleness: list[dict[int, int]] = field(default_factory=list)
    _session_nodes: list[_Arrival] = field(default_factory=list, repr=False)

    def _check(self, nodes: Sequence[int]) -> None:
        floor = self._policy.min_clients
        if self.max_failed_sessions < 1:
            raise secagg.ConfigurationError(
                f"max_failed_sessions must be at least 1, got {self.max_failed_sessions}"
            )
        if self.dp_noise_multiplier is not None:
            raise secagg.ConfigurationError(
                "client-level DP is not offered asynchronously: its accounting composes "
                "sampled rounds; use PrivaggWorkflow"
            )
        if not floor <= self.buffer <= self.concurrency <= len(nodes):
            raise secagg.ConfigurationError(
                f"need policy floor {floor} <= buffer {self.buffer} <= concurrency "
                f"{self.concurrency} <= connected nodes {len(nodes)}: every buffer is one "
                "secure-aggregation session, which the nodes refuse below their floor "
                "(privagg-min-clients)"
            )

    def _pull_messages(self, nodes: Sequence[int]) -> list[Message]:
        content = {ASYNC_RECORD: ConfigRecord({"version": self.version})}
        config = dict(self.train_config)
        return [
            Message(
                content=RecordDict(
                    {
                        **content,
                        "arrays": self._arrays,
                        "config": ConfigRecord(config),
                    }
                ),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
                group_id=f"pull-{self.version}",
            )
            for node in nodes
        ]

    # -- the engine's four steps, for one buffer (fl.engines.base.Engine) -------------------------

    def sample_cohort(self, round_index: int) -> list[int]:
        """The buffered nodes (and, with an allowlist, those whose identity checks out)."""
        cohort = [arrival.node for arrival in self._session_nodes]
        if self.allowlist is not None:
            cohort, self._round.identities = self._identities(
                self._grid, round_index, cohort, self._round.failures
            )
        return cohort

    def ready(self, round_index: int, cohort: Sequence[int]) -> bool:
        return len(cohort) >= self._policy.min_clients

    def _contribution_rules(self) -> dict[str, Term]:
        """The session's rules: the server's current version and the FedBuff staleness rule,
        from which each node computes and bounds its own staleness (the nodes trained on the
        versions they pulled, so no model digest: the session's model is only a reference)."""
        return {"staleness": StalenessRule.INVERSE_SQRT.value, "model_version": self.version}

    def apply(self, round_index: int, outcome: object) -> None:
        super().apply(round_index, outcome)
        self.version += 1

    # -- the loop --------------------------------------------------------------------------------

    def _run_buffer(self, grid: Grid, number: int, arrivals: list[_Arrival]) -> bool:
        """One secure-aggregation session among the buffered nodes, reported; whether it
        released."""
        started = time.perf_counter()
        self._round, self._session_nodes = _RoundState(), arrivals
        before = self.version
        record = self.step(number)
        released = record.released
        outcome = record.outcome
        contributors = outcome.contributors if released else ()
        pulled = {a.node: a.version for a in arrivals}
        self.staleness.append({node: before - pulled[node] for node in contributors})
        failures = list(self._round.failures)
        if record.failure is not None:
            failures.append(f"session failed: {record.failure}")
        self.reports.append(
            RoundReport(
                round=number,
                nodes=record.cohort,
                contributors=tuple(contributors),
                mean_update=outcome.mean if released else np.zeros(0),
                total_weight=outcome.weight if released else 0,
                seconds=time.perf_counter() - started,
                failures=tuple(failures),
            )
        )
        return released

    def run(self, grid: Grid, arrays: ArrayRecord) -> ArrayRecord:
        """Train until ``num_rounds`` sessions have released an update; the final model.

        Raises:
            secagg.ConfigurationError: a buffer below the nodes' policy floor, or larger than
                the concurrency, or more concurrency than nodes.
            secagg.ThresholdNotMet: no node arrived for ``max_wait`` seconds, or
                ``max_failed_sessions`` sessions in a row released nothing.
        """
        self._grid, self._arrays = grid, arrays
        nodes = self.wait_for_nodes(grid)
        self._check(nodes)
        chooser = secrets.SystemRandom()
        idle, in_flight = set(nodes), {}
        buffered: list[_Arrival] = []
        owed, sessions, last_arrival = self.concurrency, 0, time.monotonic()
        failed_in_a_row = 0

        def launch() -> None:
            nonlocal owed
            chosen = chooser.sample(sorted(idle), min(owed, len(idle)))
            if not chosen:
                return
            ids = grid.push_messages(self._pull_messages(chosen))
            for message_id, node in zip(ids, chosen, strict=True):
                in_flight[message_id] = _Arrival(node, self.version)
                idle.discard(node)
            owed -= len(chosen)

        launch()
        while self.version < self.num_rounds:
            replies = list(grid.pull_messages(list(in_flight))) if in_flight else []
            for reply in replies:
                arrival = in_flight.pop(reply.metadata.reply_to_message_id)
                owed += 1
                if reply.has_error():
                    idle.add(arrival.node)
                    continue
                buffered.append(arrival)
                if len(buffered) < self.buffer:
                    launch()
            if len(buffered) >= self.buffer:
                session, buffered = buffered[: self.buffer], buffered[self.buffer :]
                sessions += 1
                released = self._run_buffer(grid, sessions, session)
                failed_in_a_row = 0 if released else failed_in_a_row + 1
                if failed_in_a_row >= self.max_failed_sessions:
                    raise secagg.ThresholdNotMet(
                        f"{failed_in_a_row} sessions in a row released nothing (last: "
                        f"{'; '.join(self.reports[-1].failures) or 'no reason given'})"
                    )
                idle.update(arrival.node for arrival in session)
                launch()  # on the updated model
                last_arrival = time.monotonic()
            elif replies:
                last_arrival = time.monotonic()
                launch()
            else:
                if self.max_wait is not None and time.monotonic() - last_arrival > self.max_wait:
                    raise secagg.ThresholdNotMet(
                        f"no node arrived for {self.max_wait} s ({len(buffered)} buffered, "
                        f"{len(in_flight)} training)"
                    )
                time.sleep(self.poll_interval)
        return self._arrays
