"""This project's secure aggregation on Flower's engines (optional extra ``privagg[flower]``).

Two pieces, mirroring Flower's own SecAgg+ pair, but carrying :mod:`secagg`'s protocol:

* :func:`privagg_mod` - a ClientApp mod. It intercepts ``train`` messages that carry a
  ``"privagg"`` config record, runs the client side of the protocol (its state lives in the
  node's ``context.state``, since Flower keeps no objects between messages), calls the wrapped
  ClientApp to train when the masked input is due, and replies with protocol bytes only: the
  model update never leaves the node unmasked.
* :class:`PrivaggWorkflow` - a ServerApp workflow. Each round it samples nodes, runs one
  secure-aggregation session with them over ``grid.send_and_receive``, decodes the weighted
  mean update from the unmasked sum alone and applies it (FedAvg).

A node that does not answer, answers with an error (for instance because it lacks the mod), or
sends bytes the server rejects (another session, other parameters, another protocol version)
is treated as dropped: the round completes without it while the threshold holds, and fails
with :class:`secagg.ThresholdNotMet` otherwise.

The node decides what is safe for it: it holds a :class:`secagg.ClientPolicy` read from its node
config (:func:`policy_from_node_config`), refuses a session or a round it has joined before (a
:class:`secagg.sessions.SessionLog` kept in the node's state), and reports an error to the
server only as a fixed :class:`secagg.ErrorCode`; the error's text, which can hold values
derived from the node's data, stays in the node's log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import secrets
import struct
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
    RecordDict,
)
from flwr.serverapp import Grid

import secagg
from dp.distributed import DistributedNoiseEncoder, Mechanism
from dp.ledger import PrivacyLedger, PrivacyLevel
from fl.engines.base import Engine
from secagg.contribution import Encoding, Term, WeightRule
from secagg.encoding import FixedPointEncoder
from secagg.hazmat.signing import SigningKey
from secagg.randomness import DeterministicRandom, RandomSource, system_random
from secagg.sessions import SessionLog

__all__ = [
    "AGREED_RECORD",
    "FLOWER_RECORD",
    "PrivaggWorkflow",
    "RoundReport",
    "flatten_arrays",
    "model_digest",
    "policy_from_node_config",
    "privagg_mod",
    "unflatten_arrays",
    "without_identities",
]

FLOWER_RECORD = "privagg"
AGREED_RECORD = "privagg-agreed"
"""The config record the mod hands the wrapped ClientApp with a masked-input request: the
contribution the node agreed to in the session (never the server's own copy of it)."""
_STATE = "privagg-state"
_SESSIONS = "privagg-sessions"
_HELLO = "hello"
_LOG = logging.getLogger("privagg.flower")


def flatten_arrays(arrays: ArrayRecord) -> tuple[np.ndarray, list[tuple[str, tuple[int, ...]]]]:
    """An ArrayRecord as one float64 vector, and the (name, shape) layout to rebuild it."""
    layout, parts = [], []
    for name, array in arrays.items():
        values = array.numpy()
        layout.append((name, tuple(values.shape)))
        parts.append(values.astype(np.float64).ravel())
    return (np.concatenate(parts) if parts else np.zeros(0)), layout


def model_digest(arrays: ArrayRecord) -> bytes:
    """SHA-256 of a model (names, shapes and float64 values): a node hashes the model it
    received itself, and contributes only when it is the one the session names."""
    hasher = hashlib.sha256(b"privagg/flower/model\x00")
    for name, array in arrays.items():
        values = np.ascontiguousarray(array.numpy(), dtype="<f8")
        label = name.encode()
        hasher.update(struct.pack(">I", len(label)) + label)
        hasher.update(
            struct.pack(">I", values.ndim) + struct.pack(f">{values.ndim}Q", *values.shape)
        )
        hasher.update(values.tobytes())
    return hasher.digest()


def unflatten_arrays(
    vector: np.ndarray, layout: Sequence[tuple[str, tuple[int, ...]]]
) -> ArrayRecord:
    """The inverse of :func:`flatten_arrays` (float32 arrays)."""
    arrays, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        arrays[name] = vector[offset : offset + size].reshape(shape).astype(np.float32)
        offset += size
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


# -- client side ----------------------------------------------------------------------------------


def _error_code(error: BaseException) -> secagg.ErrorCode:
    return error.code if isinstance(error, _NodeError) else secagg.error_code(error)


def _error_reply(msg: Message, error: BaseException) -> Message:
    """An error for the server: the fixed code and its name, never the error's text (which can
    hold values derived from the node's data, such as its example count)."""
    code = _error_code(error)
    return Message(Error(code=int(code), reason=f"privagg error {code.name}"), reply_to=msg)


class _NodeError(Exception):
    """A failure of the node's own side (training, dropping out) with the code to report."""

    def __init__(self, message: str, code: secagg.ErrorCode) -> None:
        super().__init__(message)
        self.code = code


_POLICY_KEYS = {
    "privagg-min-clients": ("min_clients", int),
    "privagg-corrupt-fraction": ("corrupt_fraction", float),
    "privagg-security-bits": ("security_bits", int),
    "privagg-max-neighbour-loss": ("max_neighbour_loss", float),
    "privagg-ring-bits": ("allowed_ring_bits", str),
    "privagg-min-noise-multiplier": ("min_noise_multiplier", float),
    "privagg-require-identities": ("require_identities", bool),
    "privagg-max-staleness": ("max_staleness", int),
    "privagg-min-resolution-bits": ("min_resolution_bits", int),
}
_PIN, _RANGE = "privagg-pin-", "privagg-range-"


def policy_from_node_config(context: Context) -> secagg.ClientPolicy:
    """The node's :class:`secagg.ClientPolicy`: the secure defaults, with any of these node
    config keys overriding one floor: ``privagg-min-clients``, ``privagg-corrupt-fraction``,
    ``privagg-security-bits``, ``privagg-max-neighbour-loss``, ``privagg-ring-bits`` (e.g.
    ``"32,64"``), ``privagg-min-noise-multiplier``, ``privagg-require-identities``,
    ``privagg-max-staleness``, ``privagg-min-resolution-bits``; ``privagg-pin-TERM = value``
    pins a contribution term (``privagg-pin-clip = 4.0``: the node refuses any other clip) and
    ``privagg-range-TERM = "low,high"`` bounds one (dashes in TERM stand for underscores).

    Across a network identities are the default: a node requires them unless its own config
    says ``privagg-require-identities = false`` (then only the semi-honest guarantee holds:
    SECURITY.md).

    Raises:
        secagg.ConfigurationError: a value of the wrong type or range.
    """
    values: dict[str, object] = {"require_identities": True}
    config = context.node_config
    values["pinned_terms"] = {
        key[len(_PIN) :].replace("-", "_"): value
        for key, value in config.items()
        if key.startswith(_PIN)
    }
    ranges = {}
    for key, raw in config.items():
        if key.startswith(_RANGE):
            try:
                low, high = (float(part) for part in str(raw).split(","))
            except ValueError:
                raise secagg.ConfigurationError(
                    f'node config {key} must be "low,high", got {raw!r}'
                ) from None
            ranges[key[len(_RANGE) :].replace("-", "_")] = (low, high)
    values["term_ranges"] = ranges
    for key, (name, kind) in _POLICY_KEYS.items():
        if key not in context.node_config:
            continue
        raw = context.node_config[key]
        if kind is str:
            try:
                values[name] = [int(bits) for bits in str(raw).split(",") if bits.strip()]
            except ValueError:
                raise secagg.ConfigurationError(
                    f'node config {key} must list ring sizes like "32,64", got {raw!r}'
                ) from None
        elif kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            values[name] = float(raw)
        else:
            values[name] = raw
    return secagg.ClientPolicy.from_mapping(values)


@dataclass(frozen=True)
class NodeIdentity:
    """A node's long-term Ed25519 key and the federation's allowlist of identity public keys."""

    signing_key: SigningKey
    allowlist: frozenset[bytes]


IdentityProvider = Callable[[Context], "NodeIdentity | None"]


def identity_from_node_config(context: Context) -> NodeIdentity | None:
    """The default provider: files named by the node config, or None without them.

    ``privagg-key``: a file holding the node's 32-byte Ed25519 private key in hex;
    ``privagg-allowlist``: a file of the federation's identity public keys, hex, one per line.
    """
    key_path = context.node_config.get("privagg-key")
    list_path = context.node_config.get("privagg-allowlist")
    if not key_path or not list_path:
        return None
    with open(str(key_path)) as handle:
        key = SigningKey(bytes.fromhex(handle.read().strip()))
    with open(str(list_path)) as handle:
        allowed = frozenset(bytes.fromhex(line.strip()) for line in handle if line.strip())
    return NodeIdentity(key, allowed)


PolicyProvider = Callable[[Context], secagg.ClientPolicy]


def without_identities(context: Context) -> secagg.ClientPolicy:
    """A node policy that does not require identities (:func:`policy_from_node_config`
    otherwise). Only for nodes that trust the server to follow the protocol - a simulation in
    one program, say: without identities an active server can substitute keys and recover an
    input exactly (SECURITY.md, "Threat model of each engine")."""
    return dataclasses.replace(policy_from_node_config(context), require_identities=False)


def make_privagg_mod(
    identity: IdentityProvider = identity_from_node_config,
    policy: PolicyProvider = policy_from_node_config,
) -> Callable:
    """A client mod; ``identity`` supplies the node's identity key and allowlist (or None),
    ``policy`` the node's :class:`secagg.ClientPolicy` (its node config by default, which
    requires identities; :func:`without_identities` opts out)."""

    def mod(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if (
            msg.metadata.message_type != MessageType.TRAIN
            or FLOWER_RECORD not in msg.content.config_records
        ):
            return call_next(msg, context)
        request = msg.content.config_records[FLOWER_RECORD]
        try:
            reply = _handle(msg, context, request, call_next, identity(context), policy(context))
        except (secagg.SecAggError, _NodeError, ValueError, OSError, KeyError) as error:
            context.state.config_records.pop(_STATE, None)
            _LOG.warning(
                "privagg: this node stops the session (%s): %s", _error_code(error).name, error
            )
            return _error_reply(msg, error)
        return Message(RecordDict({FLOWER_RECORD: ConfigRecord(reply)}), reply_to=msg)

    return mod


privagg_mod = make_privagg_mod()
privagg_mod.__doc__ = """Client mod: run this node's side of the secure-aggregation protocol.

The wrapped ClientApp trains as usual: it receives the global model as an ArrayRecord named
``"arrays"`` and replies with the local model under ``"arrays"`` and a MetricRecord
``"metrics"`` holding ``"num-examples"`` (the FedAvg weight). With ``privagg-key`` and
``privagg-allowlist`` in the node config, the node signs with its identity and only accepts
sessions whose identities are all on the allowlist. The node's policy comes from its node
config (:func:`policy_from_node_config`); errors reach the server as codes only.
"""


def _checked_identity(
    config: secagg.SecAggConfig, client_id: int, identity: NodeIdentity | None
) -> SigningKey | None:
    if config.identities is None:
        return None
    if identity is None:
        raise ValueError("the session requires identities, but this node has none configured")
    strangers = set(config.identities.values()) - identity.allowlist
    if strangers:
        raise ValueError(
            f"the session names {len(strangers)} identities outside this node's allowlist"
        )
    if config.identities[client_id] != identity.signing_key.public_bytes:
        raise ValueError("the session assigns this node's client id to another identity")
    return identity.signing_key


def _session_log(context: Context) -> SessionLog:
    """The sessions this node has joined in this run (kept in the node's state)."""
    saved = context.state.config_records.get(_SESSIONS)
    return SessionLog() if saved is None else SessionLog.from_bytes(saved["log"])


def _handle(
    msg: Message,
    context: Context,
    request: ConfigRecord,
    call_next: Callable,
    identity: NodeIdentity | None,
    policy: secagg.ClientPolicy,
) -> dict:
    if request.get("drop-in") == request["phase"]:  # injected dropout (tests, experiments)
        raise _NodeError(
            f"dropping out in {request['phase']} as configured", secagg.ErrorCode.DROPPED_OUT
        )
    if request["phase"] == _HELLO:
        if identity is None:
            raise ValueError("identities were requested, but this node has none configured")
        return {"identity": identity.signing_key.public_bytes}
    if request["phase"] == secagg.Phase.ADVERTISE_KEYS.value:
        config = secagg.SecAggConfig.decode(request["secagg-config"])
        client_id = int(request["client-id"])
        policy.check_contribution(config)  # before any key is drawn
        sessions = _session_log(context)
        client = secagg.Client(
            config,
            client_id,
            signing_key=_checked_identity(config, client_id, identity),
            policy=policy,
            sessions=sessions,
        )
        try:
            payload = client.advertise_keys()
        finally:  # a refused session is remembered too: it is never joined later
            context.state.config_records[_SESSIONS] = ConfigRecord({"log": sessions.to_bytes()})
        saved = {"secagg-config": request["secagg-config"], "client-id": client_id}
    else:
        saved = dict(context.state.config_records[_STATE])
        config = secagg.SecAggConfig.decode(saved["secagg-config"])
        key = _checked_identity(config, int(saved["client-id"]), identity)
        client = secagg.Client.from_state(
            config,
            saved["client-state"],
            signing_key=key,
            policy=policy,
        )
        if client.needs_input:
            client.set_input(_encoded_update(msg, context, config, client.client_id, call_next))
        payload = client.receive(request["message"])
    saved["client-state"] = client.to_state()
    context.state.config_records[_STATE] = ConfigRecord(saved)
    return {"message": payload}


def _encoded_update(
    msg: Message,
    context: Context,
    config: secagg.SecAggConfig,
    client_id: int,
    call_next: Callable,
) -> np.ndarray:
    """Train, then encode ``local - global`` exactly as the session's contribution says.

    The node hashes the model it was sent and refuses it unless it is the one the session
    names; the wrapped ClientApp is handed the agreed contribution (:data:`AGREED_RECORD`),
    whatever the server put there; the weight is the node's own example count; rounding and
    noise come from the node's own randomness."""
    contribution = config.contribution
    expected = contribution.optional("model_digest")
    received = msg.content.array_records["arrays"]
    if expected is not None and model_digest(received) != expected:
        raise _NodeError(
            "the model sent with the masked-input request is not the one the session names",
            secagg.ErrorCode.PARAMETER_MISMATCH,
        )
    msg.content[AGREED_RECORD] = ConfigRecord({"contribution": contribution.encode()})
    trained = call_next(msg, context)
    if trained.has_error():
        raise _NodeError(
            f"local training failed: {trained.error.reason}", secagg.ErrorCode.TRAINING_FAILED
        )
    global_vector, _ = flatten_arrays(received)
    local_vector, _ = flatten_arrays(trained.content.array_records["arrays"])
    update = local_vector - global_vector
    random_bytes = _rounding_random(context, config, client_id)
    if contribution.encoding is Encoding.DISTRIBUTED_DP:  # clip, rotate, round, noise; weight 1
        noisy, rotation = DistributedNoiseEncoder.from_contribution(contribution)
        return noisy.encode(update, rotation_seed=rotation, random_bytes=random_bytes)
    encoder = FixedPointEncoder.from_contribution(contribution)
    if encoder.ring_bits != config.ring_bits or encoder.entry_bound != config.input_bound:
        raise _NodeError(
            "the session's ring or input bound does not match its contribution",
            secagg.ErrorCode.PARAMETER_MISMATCH,
        )
    weight = 1
    if contribution.weights is WeightRule.EXAMPLES:
        weight = int(trained.content.metric_records["metrics"]["num-examples"])
    return encoder.encode(update, weight=weight, random_bytes=random_bytes)


def _rounding_random(context: Context, config: secagg.SecAggConfig, client_id: int) -> RandomSource:
    """The node's own randomness: ``os.urandom``, or, for replays in tests and experiments, a
    seed from the node's own config (``privagg-rounding-seed``; never from the server)."""
    seed = context.node_config.get("privagg-rounding-seed")
    if not seed:
        return system_random
    return DeterministicRandom(f"{seed}/{config.round_index}/{client_id}".encode())


# -- server side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundReport:
    """What one round on Flower did."""

    round: int
    nodes: tuple[int, ...]
    contributors: tuple[int, ...]
    mean_update: np.ndarray = field(repr=False)
    total_weight: int
    seconds: float
    failures: tuple[str, ...]
    epsilon: float | None = None


@dataclass
class _RoundState:
    """What one round of the workflow gathers as it goes."""

    identities: dict[int, bytes] | None = None
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class _FlowerSession:
    """The protocol session of one round and how to decode its sum."""

    node_of: dict[int, int]
    config: secagg.SecAggConfig
    decode: Callable[[secagg.ServerResult], tuple[np.ndarray, int]]
    vector: np.ndarray
    layout: list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True, eq=False)
class _FlowerOutcome:
    """A released round: the mean update, the total weight, who contributed, the epsilon."""

    mean: np.ndarray
    weight: int
    contributors: tuple[int, ...]
    epsilon: float | None


@dataclass
class PrivaggWorkflow(Engine[_FlowerSession]):
    """ServerApp workflow: FedAvg whose every round is one session of this project's protocol.

    Args:
        num_rounds: training rounds.
        min_nodes: wait for at least this many nodes, and never run with fewer.
        fraction: fraction of connected nodes sampled per round.
        threshold, neighbours: protocol parameters (defaults: the recommended ones).
        max_weight, clip, precision_bits, ring_bits: the fixed-point encoding of updates.
        timeout: seconds to wait for replies in each phase (None: wait for all).
        dropouts: node id -> phase name, injected dropouts (tests and experiments).
        train_config: extra values sent to the ClientApp with the model (e.g. learning rate).
        allowlist: the federation's Ed25519 identity public keys. When set, each sampled node
            names its identity first; nodes off the list (or claiming a taken identity) are left
            out, every message is signed and the consistency check runs (SECURITY.md).
        dp_noise_multiplier: turn on client-level DP: clients are Poisson-sampled with rate
            ``fraction``, clip their update to ``dp_clip`` and add ``dp_mechanism`` noise
            (skellam or ddg) before masking, in a ``dp_ring_bits`` ring; ``ledger`` then holds
            the epsilon spent (at ``dp_delta``), also reported per round.
        client_policy: the policy the nodes are expected to hold (default: the secure
            defaults). Sessions are checked against it before they start, and the noise shares
            are sized for its honest floor t - c; nodes with stricter policies refuse.

    Example:
        >>> from flwr.serverapp import ServerApp
        >>> app = ServerApp()
        >>> @app.main()
        ... def main(grid, context):
        ...     workflow = PrivaggWorkflow(num_rounds=3, min_nodes=10)
        ...     final_arrays = workflow.run(grid, initial_arrays)  # doctest: +SKIP
    """

    num_rounds: int = 1
    min_nodes: int = 2
    fraction: float = 1.0
    threshold: int | None = None
    neighbours: int | None = None
    max_weight: int = 10_000
    clip: float = 4.0
    precision_bits: int = 16
    ring_bits: int | None = None
    timeout: float | None = None
    dropouts: dict[int, str] = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    allowlist: frozenset[bytes] | None = None
    dp_noise_multiplier: float | None = None
    dp_clip: float = 1.0
    dp_mechanism: str = "skellam"
    dp_ring_bits: int = 32
    dp_delta: float = 1e-5
    client_policy: secagg.ClientPolicy | None = None
    reports: list[RoundReport] = field(default_factory=list)
    ledger: PrivacyLedger | None = None
    _pending: DistributedNoiseEncoder | None = field(default=None, repr=False)
    _grid: Grid | None = field(default=None, repr=False)
    _arrays: ArrayRecord | None = field(default=None, repr=False)
    _round: _RoundState = field(default_factory=_RoundState, repr=False)

    @property
    def _policy(self) -> secagg.ClientPolicy:
        return self.client_policy or secagg.ClientPolicy()

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """The connected node ids, once at least ``min_nodes`` are there (or raise at timeout)."""
        deadline = time.monotonic() + (self.timeout or 600)
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.min_nodes:
                return nodes
            if time.monotonic() > deadline:
                raise secagg.ThresholdNotMet(
                    f"only {len(nodes)} Flower nodes connected; need {self.min_nodes}"
                )
            time.sleep(1.0)

    def _exchange(
        self, grid: Grid, round_number: int, requests: dict[int, dict], arrays: ArrayRecord | None
    ) -> dict[int, Message]:
        messages = []
        for node, config in requests.items():
            content = RecordDict({FLOWER_RECORD: ConfigRecord(config)})
            if arrays is not None:
                content["arrays"] = arrays
                content["config"] = ConfigRecord(dict(self.train_config))
            messages.append(
                Message(
                    content=content,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(round_number),
                )
            )
        return {
            reply.metadata.src_node_id: reply
            for reply in grid.send_and_receive(messages, timeout=self.timeout)
        }

    def _sample(self, nodes: list[int]) -> list[int]:
        """The round's cohort: a uniform sample of ``fraction`` of the nodes (at least
        ``min_nodes``), or a Poisson sample with rate ``fraction`` under client-level DP, which
        its accounting assumes. Drawn from the operating system's CSPRNG."""
        chooser = secrets.SystemRandom()
        if self.dp_noise_multiplier is not None:
            return sorted(n for n in nodes if chooser.random() < self.fraction)
        size = min(len(nodes), max(self.min_nodes, round(self.fraction * len(nodes))))
        return sorted(chooser.sample(nodes, size))

    def _session(
        self,
        node_of: dict[int, int],
        dimension: int,
        identities: dict[int, bytes] | None,
        round_number: int,
    ) -> tuple[secagg.SecAggConfig, Callable[[secagg.ServerResult], tuple[np.ndarray, int]]]:
        """The protocol configuration, its contribution (what every node encodes) inside it,
        and the decoder."""
        cohort = len(node_of)
        identity_map = (
            None if identities is None else {c: identities[n] for c, n in node_of.items()}
        )
        common = dict(
            threshold=self.threshold,
            neighbours=self.neighbours,
            round_index=round_number,
            identities=identity_map,
        )
        rules = self._contribution_rules()
        if self.dp_noise_multiplier is None:
            needed = FixedPointEncoder.required_ring_bits(
                cohort, self.max_weight, self.clip, self.precision_bits
            )
            encoder = FixedPointEncoder(
                num_clients=cohort,
                max_weight=self.max_weight,
                clip=self.clip,
                precision_bits=self.precision_bits,
                ring_bits=self.ring_bits or (32 if needed <= 32 else 64),
            )
            config = secagg.SecAggConfig.create(
                node_of,
                dimension + 1,
                ring_bits=encoder.ring_bits,
                input_bound=encoder.entry_bound,
                contribution=encoder.contribution(**rules),
                **common,
            )
            return config, lambda r: (encoder.decode(r.total), encoder.decode_weight(r.total))
        shape = secagg.SecAggConfig.create(
            node_of,
            1 << max(0, math.ceil(math.log2(dimension))),
            ring_bits=self.dp_ring_bits,
            **common,
        )
        noisy = DistributedNoiseEncoder(
            mechanism=Mechanism(self.dp_mechanism),
            dimension=dimension,
            l2_clip=self.dp_clip,
            noise_multiplier=self.dp_noise_multiplier,
            cohort=cohort,
            noise_shares=self._policy.honest_floor(shape),
            ring_bits=self.dp_ring_bits,
            threshold=shape.threshold,
            corrupt=self._policy.corrupt_neighbours(shape),
        )
        rotation = os.urandom(32)
        contribution = noisy.contribution(rotation_seed=rotation)
        config = dataclasses.replace(
            shape,
            contribution=secagg.Contribution(
                contribution.encoding, {**contribution.terms, **rules}
            ),
        )
        if self.ledger is None:
            self.ledger = PrivacyLedger(level=PrivacyLevel.CLIENT, delta=self.dp_delta)
        self._pending = noisy

        def decode(result: secagg.ServerResult) -> tuple[np.ndarray, int]:
            contributors = len(result.contributors)
            return noisy.decode(
                result.total, contributors=contributors, rotation_seed=rotation
            ), contributors

        return config, decode

    def _contribution_rules(self) -> dict[str, Term]:
        """The rules beside the encoding every node of this round follows: the model they
        train on, by its digest (each node checks the model it receives against it)."""
        return {"model_digest": model_digest(self._arrays)}

    # -- the engine's four steps (fl.engines.base.Engine); run_round drives them ----------------

    def sample_cohort(self, round_index: int) -> list[int]:
        """The round's nodes (and, with an allowlist, those whose identity checks out)."""
        grid, state = self._grid, self._round
        cohort = self._sample(self.wait_for_nodes(grid))
        if self.allowlist is not None:
            cohort, state.identities = self._identities(grid, round_index, cohort, state.failures)
        return cohort

    def ready(self, round_index: int, cohort: Sequence[int]) -> bool:
        return len(cohort) >= 2

    def train(self, round_index: int, cohort: Sequence[int]) -> _FlowerSession:
        """The session the nodes will train for: they train when the protocol asks for their
        masked input (the model travels with that request), so the update never leaves a node
        unmasked."""
        node_of = dict(enumerate(cohort, start=1))
        vector, layout = flatten_arrays(self._arrays)
        config, decode = self._session(node_of, vector.size, self._round.identities, round_index)
        self._policy.check_session(config)  # the nodes would refuse it: fail here, with the reason
        return _FlowerSession(node_of, config, decode, vector, layout)

    def secure_sum(self, round_index: int, session: _FlowerSession) -> _FlowerOutcome:
        """One session of the protocol over the grid; the weighted (or noisy) mean it decodes."""
        grid, failures = self._grid, self._round.failures
        config, node_of = session.config, session.node_of
        server = secagg.Server(config)
        outgoing: dict[int, bytes] | None = None
        for phase in secagg.Phase:
            if phase is secagg.Phase.CONSISTENCY_CHECK and config.identities is None:
                continue
            requests = {}
            for client_id, node in node_of.items():
                if outgoing is not None and client_id not in outgoing:
                    continue
                request = {"phase": phase.value}
                if node in self.dropouts:
                    request["drop-in"] = self.dropouts[node]
                if outgoing is None:
                    request |= {"secagg-config": config.encode(), "client-id": client_id}
                else:
                    request["message"] = outgoing[client_id]
                requests[node] = request
            model = self._arrays if phase is secagg.Phase.MASKED_INPUT else None
            replies = self._exchange(grid, round_index, requests, model)
            for node, reply in replies.items():
                if reply.has_error():
                    failures.append(f"node {node}: {reply.error.reason}")
                    continue
                try:
                    server.receive(reply.content.config_records[FLOWER_RECORD]["message"])
                except (secagg.RemoteProtocolError, KeyError) as error:
                    failures.append(f"node {node}: {error}")
            outgoing = server.close_phase()
        result = server.result
        mean, weight = session.decode(result)
        contributors = tuple(node_of[c] for c in sorted(result.contributors))
        epsilon = None
        if self.ledger is not None and self._pending is not None:
            self.ledger.record_client(
                self._pending.ledger_entry(
                    round_index=round_index,
                    client_sampling_rate=self.fraction,
                    participants=contributors,
                )
            )
            epsilon = self.ledger.close_round()
        return _FlowerOutcome(mean, weight, contributors, epsilon)

    def apply(self, round_index: int, outcome: _FlowerOutcome) -> None:
        vector, layout = flatten_arrays(self._arrays)
        self._arrays = unflatten_arrays(vector + outcome.mean, layout)

    def run_round(self, grid: Grid, arrays: ArrayRecord, round_number: int) -> ArrayRecord:
        """One round: sample nodes, run the protocol, apply the securely averaged update.

        Raises:
            secagg.ThresholdNotMet: too few nodes took part; nothing was released.
            secagg.PolicyViolation: the session would be below the nodes' policy.
        """
        started = time.perf_counter()
        self._grid, self._arrays, self._round = grid, arrays, _RoundState()
        record = self.step(round_number)
        failures = self._round.failures
        if not record.released:
            if record.failure is not None:
                raise record.failure
            raise secagg.ThresholdNotMet(
                f"only {len(record.cohort)} nodes can take part in round {round_number}: {failures}"
            )
        outcome: _FlowerOutcome = record.outcome
        self.reports.append(
            RoundReport(
                round=round_number,
                nodes=record.cohort,
                contributors=outcome.contributors,
                mean_update=outcome.mean,
                total_weight=outcome.weight,
                seconds=time.perf_counter() - started,
                failures=tuple(failures),
                epsilon=outcome.epsilon,
            )
        )
        for failure in failures:
            _LOG.warning("privagg round %d: %s", round_number, failure)
        return self._arrays

    def _identities(
        self, grid: Grid, round_number: int, cohort: list[int], failures: list[str]
    ) -> tuple[list[int], dict[int, bytes]]:
        """Ask each node for its identity; keep those on the allowlist, each identity once."""
        replies = self._exchange(
            grid, round_number, {node: {"phase": _HELLO} for node in cohort}, None
        )
        identities: dict[int, bytes] = {}
        for node in cohort:
            reply = replies.get(node)
            if reply is None or reply.has_error():
                reason = reply.error.reason if reply is not None else "no reply"
                failures.append(f"node {node}: no identity ({reason})")
                continue
            claimed = bytes(reply.content.config_records[FLOWER_RECORD]["identity"])
            if claimed not in self.allowlist or claimed in identities.values():
                failures.append(f"node {node}: identity not on the allowlist, or already taken")
                continue
            identities[node] = claimed
        return [node for node in cohort if node in identities], identities

    def run(self, grid: Grid, arrays: ArrayRecord) -> ArrayRecord:
        """All rounds; returns the final global model."""
        for round_number in range(1, self.num_rounds + 1):
            arrays = self.run_round(grid, arrays, round_number)
        return arrays
