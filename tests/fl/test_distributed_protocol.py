"""The torch.distributed engine's pieces in one process: encoding, session set-up, the checks
a rank makes before revealing a seed. (tests/fl/test_distributed.py runs them on 4 processes.)"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

import secagg
from fl.engines.distributed import DISTRIBUTED_POLICY, GradientEncoding, RanksLost
from fl.engines.distributed.allreduce import SecureAllReduce
from fl.engines.distributed.session import establish
from fl.engines.distributed.transport import StoreChannel
from fl.errors import ClippedValuesWarning, InputError
from secagg.multistep import SessionMember, Status, StatusCode, StepContext, encode


def _establish_all(ranks: int, policy: secagg.ClientPolicy, store=None):
    """Every rank's establish() on one in-memory store, each in its own thread."""
    store = dist.HashStore() if store is None else store
    encoding = GradientEncoding()

    def one(rank: int):
        channel = StoreChannel(store, "test/")
        try:
            return establish(
                channel,
                generation=1,
                candidates=list(range(ranks)),
                rank=rank,
                step=0,
                timeout=5.0,
                make_member=lambda session_id, member: SessionMember(
                    session_id, member, parameters=encoding.parameters, policy=policy
                ),
                random_bytes=os.urandom,
            )
        except Exception as error:  # returned, to be asserted on
            return error

    with ThreadPoolExecutor(ranks) as pool:
        return list(pool.map(one, range(ranks))), store


def test_two_ranks_are_refused_by_default_and_accepted_with_an_explicit_policy():
    """SECURITY.md, tiny cohorts: with 2 ranks the sum minus a rank's own gradient is the other
    rank's gradient, so the default policy (3 ranks) refuses the session with RanksLost naming
    the policy; ranks that pass ClientPolicy(min_clients=2) accept it knowingly."""
    assert DISTRIBUTED_POLICY.min_clients == 3
    refused, _ = _establish_all(2, DISTRIBUTED_POLICY)
    for error in refused:
        assert isinstance(error, RanksLost) and "policy" in str(error), error
    accepted, _ = _establish_all(2, secagg.ClientPolicy(min_clients=2))
    assert [session.ranks for session in accepted] == [(0, 1), (0, 1)]
    three, _ = _establish_all(3, DISTRIBUTED_POLICY)
    assert all(session.ranks == (0, 1, 2) for session in three)
    assert len({session.config.session_id for session in three}) == 1


@pytest.fixture
def one_rank_group():
    """torch.distributed initialised with one gloo rank (SecureAllReduce needs a group)."""
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=10)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_no_seed_is_revealed_for_an_all_reduce_that_did_not_complete(one_rank_group):
    """A REVEAL decision arriving through the store is checked against the statuses: if this
    rank's own all-reduce failed, or a member reported FAILED, the rank raises
    InconsistentRequest instead of revealing its self-mask seed (which would unmask its partial
    sums of an abandoned attempt). Every status COMPLETE passes the same check."""
    sessions, store = _establish_all(3, DISTRIBUTED_POLICY)
    session = sessions[0]
    reducer = SecureAllReduce(store=store, name="check")
    reducer.channel = session.channel
    context = StepContext.every_member(session.config, step=0, length=8)
    base = "g1/s0"

    def status(rank: int, code: StatusCode) -> None:
        frame = encode(
            Status(0, code), session_id=session.config.session_id, step=0, sender=rank + 1
        )
        session.channel.post(f"{base}/status/{rank}", frame)

    status(1, StatusCode.COMPLETE)
    status(2, StatusCode.FAILED)
    known = {0: StatusCode.COMPLETE, 1: StatusCode.COMPLETE}
    with pytest.raises(secagg.InconsistentRequest, match=r"ranks \[2\]"):
        reducer._check_reveal(session, context, base, True, dict(known))
    status(2, StatusCode.COMPLETE)
    with pytest.raises(secagg.InconsistentRequest, match="this rank's all-reduce failed"):
        reducer._check_reveal(session, context, base, False, dict(known))
    reducer._check_reveal(session, context, base, True, dict(known))  # every member COMPLETE


def test_a_status_under_another_ranks_key_or_of_another_step_is_refused(one_rank_group):
    """Control messages are bound to their session, step and sender: a status read under rank
    1's key that claims rank 2, or one framed for another step, is refused."""
    sessions, store = _establish_all(3, DISTRIBUTED_POLICY)
    session = sessions[0]
    reducer = SecureAllReduce(store=store, name="binding")
    context = StepContext.every_member(session.config, step=0, length=8)
    sid = session.config.session_id
    forged = encode(Status(0, StatusCode.COMPLETE), session_id=sid, step=0, sender=3)
    with pytest.raises(secagg.InconsistentRequest):
        reducer._status(session, context, forged, 1)
    stale = encode(Status(0, StatusCode.COMPLETE), session_id=sid, step=1, sender=2)
    with pytest.raises(secagg.WrongSession):
        reducer._status(session, context, stale, 1)
    assert (
        reducer._status(
            session,
            context,
            encode(Status(0, StatusCode.COMPLETE), session_id=sid, step=0, sender=2),
            1,
        )
        is StatusCode.COMPLETE
    )


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("ranks", [2, 4, 32])
def test_the_decoded_sum_is_within_n_2_to_the_minus_p(ring_bits, ranks):
    """The encoding's error bound (encoding.py): the decoded sum of n encoded vectors is within
    n 2^-p of the exact sum of the clipped values, and n maximal values do not wrap the ring."""
    encoding = GradientEncoding(clip=4.0, ring_bits=ring_bits)
    generator = torch.Generator().manual_seed(ranks)
    vectors = [4.0 * (2 * torch.rand(1000, generator=generator, dtype=torch.float64) - 1)]
    vectors += [
        4.0 * (2 * torch.rand(1000, generator=generator, dtype=torch.float64) - 1)
        for _ in range(ranks - 1)
    ]
    vectors[0][:2] = torch.tensor([4.0, -4.0], dtype=torch.float64)  # the extremes
    total = sum(encoding.encode(v, contributors=ranks) for v in vectors)
    decoded = encoding.decode(total, contributors=ranks, dtype=torch.float64)
    p = encoding.precision_bits(ranks)
    exact = sum(vectors)
    assert (decoded - exact).abs().max().item() <= ranks * 2.0**-p
    assert ranks * math.ceil(4.0 * 2.0**p) <= 2 ** (ring_bits - 1) - 1
    maxed = sum(encoding.encode(torch.full((3,), 4.0), contributors=ranks) for _ in range(ranks))
    assert encoding.decode(maxed, contributors=ranks).tolist() == [4.0 * ranks] * 3


def test_stochastic_rounding_is_unbiased():
    """Stochastic rounding: a value halfway between two ring points rounds up about half the
    time, so the mean of many encodings is the value (a deterministic rounding would be off by
    half a step every time)."""
    encoding = GradientEncoding(clip=1.0)
    p = encoding.precision_bits(4)
    value = 0.5 * 2.0**-p  # exactly half a step
    words = encoding.encode(torch.full((200_000,), value, dtype=torch.float64), contributors=4)
    assert 0.49 < words.double().mean().item() < 0.51


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encoding_one_chunk_at_a_time_inside_the_masking_pass_equals_encoding_whole(
    ring_bits, dtype
):
    """The fused path of a step (encoder() as accumulate's fill, decoder() as its drain) gives
    the words of encode() and the floats of decode() bit for bit, for lengths that end inside a
    chunk of either pass, and the masks it adds on the way cancel exactly."""
    from secagg.hazmat.prg import MaskTerm, accumulate

    encoding = GradientEncoding(clip=2.0, ring_bits=ring_bits)
    word = np.uint32 if ring_bits == 32 else np.uint64
    seed = os.urandom(32)
    for size in (1, 999, 32_768, 70_001):
        values = 3 * torch.randn(size, dtype=dtype)
        values[0] = 5.0  # beyond the clip
        with pytest.warns(ClippedValuesWarning):
            whole = encoding.encode(values, contributors=4, random_bytes=_repeat(seed))
        fused = torch.zeros(size, dtype=encoding.dtype)
        key = os.urandom(32)
        with pytest.warns(ClippedValuesWarning):
            fill = encoding.encoder(values, contributors=4, random_bytes=_repeat(seed))
        accumulate(fused.numpy().view(word), [MaskTerm(key)], chunk_bytes=4096, fill=fill)
        assert not torch.equal(fused, whole)  # masked
        decoded = torch.empty(size, dtype=dtype)
        drain = encoding.decoder(decoded, contributors=4)
        words = fused.numpy().view(word)
        accumulate(words, [MaskTerm(key, subtract=True)], chunk_bytes=1024, drain=drain)
        assert torch.equal(fused, whole)
        assert torch.equal(decoded, encoding.decode(whole, contributors=4, dtype=dtype))


def _repeat(seed: bytes):
    """A random_bytes that always answers ``seed`` (two encodings draw the same rounding bits)."""
    return lambda count: seed[:count]


def test_clipping_warns_with_the_count_and_non_finite_values_are_refused():
    """Nothing silent: values beyond the clip are clipped with a warning naming how many; a NaN
    or infinite gradient is an InputError naming the count and the fix."""
    encoding = GradientEncoding(clip=1.0)
    with pytest.warns(ClippedValuesWarning, match="3 of 5 values"):
        encoding.encode(torch.tensor([0.0, 2.0, -3.0, 5.0, 0.5]), contributors=3)
    with pytest.raises(InputError, match="2 NaN or infinite"):
        encoding.encode(torch.tensor([float("nan"), float("inf"), 0.0]), contributors=3)
    with pytest.raises(InputError, match="ring_bits=64"):
        GradientEncoding(clip=2.0**40, ring_bits=32).precision_bits(32)
