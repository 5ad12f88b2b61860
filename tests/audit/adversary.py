"""A malicious server with full control of the transport, driving honest clients through bytes.

The adversary cannot forge client signatures or break the primitives; everything else is its
choice: which keys each client sees in its roster, which ciphertexts it delivers, which set U3
it shows to whom, which signatures it forwards, which shares it asks for. It then tries to
unmask one target's individual input from what honest clients revealed.

The attack tests run every strategy twice: against the real :class:`secagg.Client`, which must
refuse, and against a deliberately weakened client, against which the same strategy must
recover the target's input exactly. That second run is what proves the test has power.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from secagg import Client, ClientPolicy, SecAggConfig, SecAggError, keys, messages
from secagg.errors import InconsistentRequest
from secagg.graph import neighbourhoods
from secagg.hazmat import shamir, signing
from secagg.hazmat.agreement import AgreementKey
from secagg.hazmat.exceptions import InvalidAuthentication
from secagg.hazmat.prg import MaskTerm, accumulate
from secagg.hazmat.signing import SigningKey
from secagg.instance import InstanceTree
from secagg.randomness import DeterministicRandom

LIMIT = 1 << 26


def payload(data: bytes) -> messages.Payload:
    """Decode a client's reply as the server does."""
    return messages.decode(data, max_bytes=LIMIT).payload


def frame(config: SecAggConfig, body: messages.Payload) -> bytes:
    """A server message of ``config``'s session carrying ``body``."""
    return messages.encode(
        body, session_id=config.session_id, round_index=config.round_index, sender=0
    )


class GlobalQuorumClient(Client):
    """WEAKENED for tests: the consistency check of the first version - any t valid signatures
    from members of U3, wherever they sit in the graph (no per-neighbourhood certification)."""

    def _check_one_story(self, signatures: tuple[tuple[int, bytes], ...]) -> None:
        transcript = keys.consistency_transcript(
            self.config.digest, self._instance_root, self._survivors
        )
        for signer, signature in signatures:
            if signer not in self._survivors:
                raise InconsistentRequest(f"signature from {signer} outside U3", sender=0)
            signing.verify(self.config.identities[signer], signature, transcript)
        self._require(len(signatures), "valid consistency signatures")


class PolicyFreeClient(Client):
    """WEAKENED for tests: accepts whatever parameters the server proposes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.policy = _NoFloors()


class _NoFloors(ClientPolicy):
    def __init__(self) -> None:
        super().__init__(**ClientPolicy.permissive().to_dict())

    def check_session(self, config: SecAggConfig) -> None:
        return None


@dataclass
class Population:
    """n honest clients with identities and random inputs, on one session configuration."""

    config: SecAggConfig
    clients: dict[int, Client]
    inputs: dict[int, np.ndarray]
    signing_keys: dict[int, SigningKey]

    @classmethod
    def create(
        cls,
        n: int,
        *,
        length: int = 4,
        seed: int = 0,
        client_class: type[Client] = Client,
        policy: ClientPolicy | None = None,
        identities: bool = True,
        **config_args: object,
    ) -> Population:
        rng = DeterministicRandom(seed)
        signing_keys = {u: SigningKey.generate(rng) for u in range(1, n + 1)} if identities else {}
        config = SecAggConfig.create(
            range(1, n + 1),
            length,
            identities={u: k.public_bytes for u, k in signing_keys.items()} or None,
            random_bytes=rng,
            **config_args,
        )
        data = np.random.default_rng(seed)  # test inputs only, not protocol randomness
        inputs = {u: data.integers(0, 1 << 16, length, dtype=np.int64) for u in config.client_ids}
        clients = {}
        for u in config.client_ids:
            clients[u] = client_class(
                config,
                u,
                signing_key=signing_keys.get(u),
                policy=policy,
                random_bytes=rng.fork(str(u)),
            )
            clients[u].set_input(inputs[u])
        return cls(config, clients, inputs, signing_keys)

    def rerun(self, *, seed: int) -> Population:
        """The same session (configuration, identities, inputs) with fresh client objects of
        the same class, as after a restart that lost every client's state."""
        rng = DeterministicRandom(seed)
        clients = {}
        for u, old in self.clients.items():
            clients[u] = type(old)(
                self.config,
                u,
                signing_key=self.signing_keys.get(u),
                policy=old.policy,
                random_bytes=rng.fork(str(u)),
            )
            clients[u].set_input(self.inputs[u])
        return Population(self.config, clients, self.inputs, self.signing_keys)


@dataclass
class Transcript:
    """What the adversary has seen and been given."""

    adverts: dict[int, messages.AdvertiseKeys] = field(default_factory=dict)
    rosters: dict[int, frozenset[int]] = field(default_factory=dict)
    share_keys: dict[int, messages.ShareKeys] = field(default_factory=dict)
    peers: dict[int, frozenset[int]] = field(default_factory=dict)
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    stories: dict[int, frozenset[int]] = field(default_factory=dict)
    signatures: dict[int, bytes] = field(default_factory=dict)
    self_mask_shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    key_shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    refusals: dict[int, SecAggError] = field(default_factory=dict)


class ActiveServer:
    """Runs the protocol's phases with adversarial choices supplied by the strategy."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.config = population.config
        self.graph = neighbourhoods(self.config)
        self.seen = Transcript()

    def _ask(self, u: int, body: messages.Payload) -> messages.Payload | None:
        try:
            return payload(self.population.clients[u].receive(frame(self.config, body)))
        except SecAggError as error:
            self.seen.refusals[u] = error
            return None

    def advertise(self, skip: Iterable[int] = ()) -> None:
        for u, client in self.population.clients.items():
            if u in skip:
                continue
            try:
                self.seen.adverts[u] = payload(client.advertise_keys())
            except SecAggError as error:
                self.seen.refusals[u] = error

    def share_keys(self, roster_of: Callable[[int], Iterable[int]]) -> None:
        """Phase 1: each client's roster is ``roster_of(u)`` (a subset of its neighbours)."""
        adverts = self.seen.adverts
        tree = InstanceTree.build(
            self.config, {u: (a.channel_key, a.mask_key) for u, a in adverts.items()}
        )
        for u in sorted(adverts):
            peers = frozenset(roster_of(u)) & frozenset(adverts)
            self.seen.rosters[u] = peers
            entries = tuple(
                messages.RosterEntry(
                    v, adverts[v].channel_key, adverts[v].mask_key, adverts[v].key_signature
                )
                for v in sorted(peers)
            )
            reply = self._ask(u, messages.KeyRoster(entries, tree.root, tree.path(u)))
            if reply is not None:
                self.seen.share_keys[u] = reply

    def masked_inputs(
        self, senders_of: Callable[[int], Iterable[int] | None] = lambda u: None
    ) -> None:
        """Phase 2: deliver the ciphertexts both ends agreed on (only those from
        ``senders_of(u)`` when it is not None); collect masked inputs."""
        shared = self.seen.share_keys
        addressed = {u: dict(s.ciphertexts) for u, s in shared.items()}
        for u in sorted(shared):
            allowed = senders_of(u)
            senders = sorted(
                v
                for v in shared
                if u in addressed[v]
                and v in self.seen.rosters[u]
                and (allowed is None or v in allowed)
            )
            bundle = messages.ShareBundle(tuple((v, addressed[v][u]) for v in senders))
            reply = self._ask(u, bundle)
            if reply is not None:
                self.seen.peers[u] = frozenset(senders)
                self.seen.masked[u] = reply.vector()

    def consistency(self, story_of: Callable[[int], frozenset[int]]) -> None:
        """Phase 3: show each client the set U3 of its story; collect its signature."""
        for u in sorted(self.seen.masked):
            story = story_of(u)
            reply = self._ask(u, messages.ConsistencyRequest(tuple(sorted(story))))
            if reply is not None:
                self.seen.stories[u] = story
                self.seen.signatures[u] = reply.signature

    def signatures_on(self, story: frozenset[int]) -> tuple[tuple[int, bytes], ...]:
        """Every signature collected on ``story``: the most the adversary can forward."""
        return tuple(
            (v, s) for v, s in sorted(self.seen.signatures.items()) if self.seen.stories[v] == story
        )

    def unmask(self, ask: Iterable[int] | None = None) -> None:
        """Phase 4: ask each client, per its own story, for the shares it would reveal."""
        for u in sorted(self.seen.stories if ask is None else ask):
            story = self.seen.stories[u]
            peers = self.seen.peers[u]
            request = messages.UnmaskRequest(
                alive=tuple(sorted((peers & story) | {u})),
                dropped=tuple(sorted(peers - story)),
                signatures=self.signatures_on(story),
            )
            reply = self._ask(u, request)
            if reply is None:
                continue
            for owner, share in reply.self_mask_shares:
                self.seen.self_mask_shares.setdefault(owner, {})[u] = share
            for owner, share in reply.key_shares:
                self.seen.key_shares.setdefault(owner, {})[u] = share

    def _mask_key(self, owner: int) -> AgreementKey | None:
        """``owner``'s mask private key, if t of its key shares were revealed."""
        shares = self.seen.key_shares.get(owner, {})
        if len(shares) < self.config.threshold:
            return None
        try:
            private = AgreementKey(shamir.reconstruct(shares, threshold=self.config.threshold))
        except ValueError:
            return None
        return private if private.public_bytes == self.seen.adverts[owner].mask_key else None

    def try_unmask(self, target: int) -> np.ndarray | None:
        """The target's input, if the revealed shares give its self mask and every pairwise
        mask in its masked vector; None otherwise."""
        digest, t = self.config.digest, self.config.threshold
        b_shares = self.seen.self_mask_shares.get(target, {})
        if target not in self.seen.masked or len(b_shares) < t:
            return None
        try:
            secret = shamir.reconstruct(b_shares, threshold=t)
        except ValueError:
            return None
        vector = self.seen.masked[target].copy()
        terms = [MaskTerm(keys.self_mask_seed(secret, digest, target), subtract=True)]
        own_key = self._mask_key(target)
        for v in sorted(self.seen.peers[target]):
            if own_key is not None:  # the target's own mask key gives every pairwise seed
                shared = own_key.exchange(self.seen.adverts[v].mask_key)
            else:
                key = self._mask_key(v)
                if key is None:
                    return None
                shared = key.exchange(self.seen.adverts[target].mask_key)
            seed = keys.pairwise_seed(shared, digest, target, v)
            terms.append(MaskTerm(seed, subtract=target < v))
        accumulate(vector, terms)
        return vector.astype(np.int64)


def verifies(config: SecAggConfig, signer: int, signature: bytes, transcript: bytes) -> bool:
    """Whether ``signature`` is ``signer``'s valid signature on ``transcript``."""
    try:
        signing.verify(config.identities[signer], signature, transcript)
    except InvalidAuthentication:
        return False
    return True


def ring_position(config: SecAggConfig) -> Mapping[int, int]:
    """Each client's position on the Harary ring behind the sparse graph (for the strategies)."""
    from secagg.graph import random_permutation

    n, k = config.num_clients, config.neighbours
    perm = random_permutation(n, config.session_id + n.to_bytes(4, "big") + k.to_bytes(4, "big"))
    return {config.client_ids[p]: pos for pos, p in enumerate(perm)}


class NoStoryCheckClient(Client):
    """WEAKENED for tests: the consistency check removed - the client acts on the set U3 it
    signed whatever signatures come with the unmask request."""

    def _check_one_story(self, signatures: tuple[tuple[int, bytes], ...]) -> None:
        return None


@dataclass(frozen=True)
class IsolationPlan:
    """Who the target masks with, and which peers' key shares each holder is told to reveal.

    Attributes:
        target: the client whose input the adversary wants.
        partners: the neighbours whose ciphertexts reach the target (its pairwise masks).
        drops: for each other client, the partners its story calls dropped (it then reveals
            their mask-key shares), at most ``k + 1 - t`` of its neighbours so that it still
            sees t live holders of its own self mask.
    """

    target: int
    partners: frozenset[int]
    drops: Mapping[int, frozenset[int]]


def isolation_plan(config: SecAggConfig, target: int, partners: int) -> IsolationPlan:
    """Plan the isolation route: every partner v of the target is called dropped by t of its
    holders (who reveal v's mask key, so s_{target,v} is known) while the target stays alive
    for all of them (they reveal its self-mask seed b). A max-flow assigns the drops: holder x
    can call at most k + 1 - t neighbours dropped, and each partner needs t callers.

    Raises:
        AssertionError: no such assignment exists for this graph (the strategy cannot apply).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    graph = neighbourhoods(config)
    k, t = config.neighbours, config.threshold
    near = graph[target]
    chosen = sorted(near, key=lambda v: (len(graph[v] & near), v))[:partners]
    holders = [x for x in config.client_ids if x != target]
    node = {x: i + 1 for i, x in enumerate(holders)}
    node.update({("p", v): len(holders) + 1 + j for j, v in enumerate(chosen)})
    size, sink = len(holders) + len(chosen) + 2, len(holders) + len(chosen) + 1
    rows, cols, caps = [], [], []
    for x in holders:
        rows.append(0), cols.append(node[x]), caps.append(k + 1 - t)
    for v in chosen:
        for x in sorted(graph[v] - {target}):
            rows.append(node[x]), cols.append(node["p", v]), caps.append(1)
        rows.append(node["p", v]), cols.append(sink), caps.append(t)
    capacity = csr_matrix((np.array(caps, dtype=np.int32), (rows, cols)), shape=(size, size))
    flow = maximum_flow(capacity, 0, sink)
    assert flow.flow_value == t * len(chosen), "no isolation plan for this graph"
    used = flow.flow.tocoo()
    partner_of = {node["p", v]: v for v in chosen}
    holder_of = {node[x]: x for x in holders}
    drops: dict[int, set[int]] = {x: set() for x in holders}
    for row, col, value in zip(used.row, used.col, used.data, strict=True):
        if value > 0 and row in holder_of and col in partner_of:
            drops[holder_of[row]].add(partner_of[col])
    return IsolationPlan(target, frozenset(chosen), {x: frozenset(d) for x, d in drops.items()})


def run_isolation(server: ActiveServer, plan: IsolationPlan) -> None:
    """The isolation route, phases 0-3: full rosters, the target hears only its partners, and
    each client is shown a set U3 that drops exactly its planned partners (the target's set
    drops the neighbours it never heard from, so it sees no stranger)."""
    config, target = server.config, plan.target
    everyone = frozenset(config.client_ids)
    server.advertise()
    server.share_keys(lambda u: server.graph[u])
    server.masked_inputs(senders_of=lambda u: plan.partners if u == target else None)
    silent = server.graph[target] - plan.partners
    server.consistency(
        lambda u: everyone - silent if u == target else everyone - plan.drops.get(u, frozenset())
    )
