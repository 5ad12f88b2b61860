"""What each rank runs in tests/fl/test_distributed.py (importable by spawned processes)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = 3.0


def _gradients(rank: int, step: int, shapes=((17,), (5, 7), (300,))) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    scale = 0.5 + torch.rand((), generator=generator).item()
    return [scale * torch.randn(shape, generator=generator) for shape in shapes]


def sum_over_steps(rank: int, world: int, *, steps: int) -> dict:
    """The secure sum against gloo's float32 all-reduce and the exact float64 sum, each step."""
    from fl.engines.distributed import SecureAllReduce, secure_all_reduce

    # the second group also unmasks by slices (the default group of 4 unmasks whole sums)
    rekeyed = SecureAllReduce(timeout=10.0, rekey_every=20, name="rekeyed", shared_unmask_ranks=2)
    worst, worst_plain, worst_rekeyed, generations = 0.0, 0.0, 0.0, []
    for step in range(steps):
        # the last tensor takes the sum past the size at which members may unmask one slice each
        tensors = _gradients(rank, step, shapes=((17,), (5, 7), (300,), (70_000,)))
        plain = [t.clone() for t in tensors]
        exact = [t.double() for t in tensors]
        for t in plain:
            dist.all_reduce(t)
        for t in exact:
            dist.all_reduce(t)
        again = [t.clone() for t in tensors]
        report = secure_all_reduce(tensors, timeout=10.0)
        assert report.contributors == tuple(range(world)), report
        generations.append(rekeyed(again).generation)
        bound = world * 2.0**-report.precision_bits
        for secure, p, e, r in zip(tensors, plain, exact, again, strict=True):
            # the decoded float32 is also rounded once: half an ulp of its magnitude
            rounding = e.abs().max().item() * 2.0**-24
            worst = max(worst, ((secure.double() - e).abs().max().item()) / (bound + rounding))
            worst_rekeyed = max(
                worst_rekeyed, ((r.double() - e).abs().max().item()) / (bound + rounding)
            )
            worst_plain = max(worst_plain, (secure - p).abs().max().item())
    return {
        "worst_ratio": worst,
        "worst_vs_plain": worst_plain,
        "bound": bound,
        "worst_rekeyed": worst_rekeyed,
        "generations": generations,
    }


def _ring_all_reduce(group, ring: torch.Tensor, received: list[tuple[int, np.ndarray]]) -> None:
    """The ring all-reduce gloo runs (reduce-scatter, then all-gather), written with
    point-to-point messages so that every chunk this rank receives is recorded."""
    size, me = group.size(), group.rank()
    chunks = list(torch.tensor_split(ring, size))
    offsets = np.cumsum([0] + [c.numel() for c in chunks])
    right, left = (me + 1) % size, (me - 1) % size
    for phase in ("reduce-scatter", "all-gather"):
        for i in range(size - 1):
            if phase == "reduce-scatter":
                send, receive = (me - i) % size, (me - i - 1) % size
            else:
                send, receive = (me - i + 1) % size, (me - i) % size
            buffer = torch.empty_like(chunks[receive])
            works = [group.send([chunks[send]], right, 0), group.recv([buffer], left, 0)]
            for work in works:
                work.wait()
            received.append((int(offsets[receive]), buffer.numpy().copy()))
            if phase == "reduce-scatter":
                chunks[receive] += buffer
            else:
                chunks[receive].copy_(buffer)


def wire(rank: int, world: int, *, steps: int, weakened: bool) -> dict:
    """Record every byte this rank receives (ring chunks and store values) and look in it for
    each other rank's gradient, as float32 bytes and as its fixed-point words."""
    from fl.engines.distributed import SecureAllReduce

    if weakened:  # the check removed: no masks added (and none to remove)
        import secagg.multistep.member as member

        unmasked = member.accumulate  # encoding and decoding still run, with no mask terms
        member.accumulate = lambda out, terms, **kwargs: unmasked(out, [], **kwargs)
    reducer = SecureAllReduce(timeout=10.0, name=f"wire-{weakened}")
    received: list[tuple[int, np.ndarray]] = []
    store_reads: list[bytes] = []
    reducer._transport = lambda session, ring: (
        _ring_all_reduce(session.group(), ring, received) or True
    )
    for method in ("wait_all", "propose"):
        original = getattr(reducer.channel, method)

        def recording(*args, _original=original):
            result = _original(*args)
            store_reads.extend(result.values() if isinstance(result, dict) else [result])
            return result

        setattr(reducer.channel, method, recording)
    found_words, found_bytes = 0.0, False
    for step in range(steps):
        start = len(received), len(store_reads)
        mine = _gradients(rank, step)
        report = reducer(mine)
        scale = 2.0**report.precision_bits
        for other in range(world):
            if other == rank:
                continue
            theirs = torch.cat([t.reshape(-1) for t in _gradients(other, step)])
            expected = np.round(theirs.double().numpy() * scale).astype(np.int64)
            raw = theirs.numpy().tobytes()
            windows = [raw[i : i + 32] for i in range(0, len(raw) - 32, 256)]
            for offset, chunk in received[start[0] :]:
                words = chunk.astype(np.int64)
                near = np.abs(words - expected[offset : offset + words.size]) <= 1
                found_words = max(found_words, float(near.mean()))
                found_bytes |= any(w in chunk.tobytes() for w in windows)
            for value in store_reads[start[1] :]:
                found_bytes |= any(w in value for w in windows)
    return {"found_words": found_words, "found_bytes": found_bytes, "chunks": len(received)}


def killed(
    rank: int, world: int, *, victims: list[int], at_step: int, point: str, steps: int
) -> list[dict]:
    """Steps of constant inputs (rank + 1); the victims kill themselves at ``at_step``, at
    ``point``: before the step, before the all-reduce, before revealing their seed, or after it
    (before the all-gather of the unmasked slices)."""
    from fl.engines.distributed import SecureAllReduce

    reducer = SecureAllReduce(timeout=TIMEOUT, shared_unmask_ranks=2)
    reducer._shared_unmask_words = 0  # every member unmasks one slice, then they all-gather

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if rank in victims and point == "transport":
        transport = reducer._transport
        reducer._transport = lambda s, r: die() if reducer.step == at_step + 1 else transport(s, r)
    if rank in victims and point == "gather":
        unmask = reducer._unmask
        reducer._unmask = lambda *args: die() if reducer.step == at_step + 1 else unmask(*args)
    if rank in victims and point == "seed":
        post = reducer.channel.post
        reducer.channel.post = lambda key, value: (
            die() if reducer.step == at_step + 1 and "/seed/" in key else post(key, value)
        )
    log = []
    for step in range(steps):
        if rank in victims and point == "before" and step == at_step:
            die()
        value = torch.full((40,), float(rank + 1))
        started = time.monotonic()
        try:
            report = reducer(value)
        except Exception as error:
            log.append(
                {
                    "step": step,
                    "error": type(error).__name__,
                    "missing": list(getattr(error, "missing", ())),
                    "message": str(error),
                    "seconds": time.monotonic() - started,
                    "input_after": value.tolist(),
                }
            )
            continue  # the training loop goes on: the next step must not hang either
        log.append(
            {
                "step": step,
                "value": value[0].item(),
                "contributors": list(report.contributors),
                "generation": report.generation,
                "session": reducer._session.config.session_id.hex(),
                "retried": report.retried,
                "recovered": list(report.recovered),
                "seconds": time.monotonic() - started,
            }
        )
    return log


def asynchronous(rank: int, world: int, *, buffers: int, slow: int) -> dict:
    """Rank 0 serves ``buffers`` buffers of 3; workers push gradient = rank everywhere; the
    ``slow`` worker takes six times longer per gradient."""
    from fl.engines.distributed import AsyncWorker, ParameterServer

    model = nn.Linear(4, 3)
    for parameter in model.parameters():
        nn.init.zeros_(parameter)
    if rank == 0:
        server = ParameterServer(model, buffer=3, lr=0.5, timeout=10.0)
        reports = server.serve(buffers)
        return {
            "buffers": [
                {
                    "buffer": r.buffer,
                    "contributors": list(r.contributors),
                    "staleness": {str(k): v for k, v in r.staleness.items()},
                    "mean": r.mean.tolist(),
                }
                for r in reports
            ],
            "precision_bits": server.encoding.precision_bits(3),
        }
    worker = AsyncWorker(model, timeout=10.0)
    pushes = []
    while worker.pull() is not None:
        time.sleep(0.3 if rank == slow else 0.05)
        report = worker.push([torch.full_like(p, float(rank)) for p in model.parameters()])
        if report is None:
            break
        pushes.append(
            {"buffer": report.buffer, "staleness": report.staleness, "weight": report.weight}
        )
    return {"pushes": pushes}


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x, y, order[:400], order[400:]


def ddp(rank: int, world: int, *, epochs: int) -> dict:
    """One epoch of DDP on digits with the default hook and with the secure hook, from the same
    start and batches; then three DistributedEngine steps."""
    from torch.nn.parallel import DistributedDataParallel

    from fl.engines.distributed import DistributedEngine, SecureAllReduce, register_secure_hook

    x, y, test, train = _digits()
    shard = torch.tensor_split(train[:768], world)[rank]  # an epoch of 12 steps of 16 per rank
    finals, reports = {}, []
    for secure in (False, True):
        torch.manual_seed(0)
        model = DistributedDataParallel(
            nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        )
        state = register_secure_hook(model, timeout=10.0) if secure else None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(epochs):
            for batch in torch.split(shard, 16):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
                if state is not None:
                    reports.append(len(state.last_report.contributors))
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
        finals[secure] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), accuracy)
    engine_model = nn.Sequential(nn.Linear(64, 10))
    engine = DistributedEngine(
        engine_model,
        torch.optim.SGD(engine_model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        lambda step: (x[shard[step * 16 : step * 16 + 16]], y[shard[step * 16 : step * 16 + 16]]),
        reducer=SecureAllReduce(timeout=10.0, name="engine"),
    )
    records = [engine.step(step) for step in range(3)]
    return {
        "difference": (finals[False][0] - finals[True][0]).abs().max().item(),
        "accuracy": [finals[False][1], finals[True][1]],
        "contributors": sorted(set(reports)),
        "steps": len(reports),
        "engine": [
            {"released": r.released, "cohort": list(r.cohort), "failure": repr(r.failure)}
            for r in records
        ],
        "engine_parameters": torch.cat(
            [p.detach().reshape(-1) for p in engine_model.parameters()]
        ).tolist()[:5],
    }


class _RecordingReducer:
    """A secure all-reduce that also records the plain sum of the same inputs, for comparison."""

    def __init__(self, **options) -> None:
        from fl.engines.distributed import SecureAllReduce

        self.secure = SecureAllReduce(**options)
        self.plain: list[torch.Tensor] = []
        self.secure_sums: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.secure, name)

    def __call__(self, tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        plain = flat.clone()
        dist.all_reduce(plain)
        self.plain.append(plain)
        report = self.secure(tensors)
        self.secure_sums.append(torch.cat([t.detach().reshape(-1) for t in tensors]))
        return report


def private_dpsgd(rank: int, world: int, *, epochs: int, uneven: bool = False) -> dict:
    """Per-rank DP-SGD with the secure sum: one step under heavy noise (what the sum carries),
    then ``epochs`` of training on digits (accuracy, identical models, the ledger's epsilon)."""
    from opacus.accountants import RDPAccountant
    from torch.utils.data import DataLoader, TensorDataset

    from fl.engines.distributed import make_private_rank

    x, y, test, train = _digits()
    shard = torch.tensor_split(train[:1376], world)[rank]  # 344 examples per rank
    if uneven and rank == world - 1:
        shard = shard[:200]
    batch = 32
    loader = DataLoader(TensorDataset(x[shard], y[shard]), batch_size=batch)

    # 1. one step with noise multiplier 50 and learning rate 1: the update is minus the mean
    # of the ranks' noisy gradients, whose noise is the sum of every rank's own draw
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10))
    start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    recorder = _RecordingReducer(clip=1024.0, timeout=20.0, name="noise")
    heavy = make_private_rank(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loader,
        noise_multiplier=50.0,
        max_grad_norm=1.0,
        delta=1e-5,
        reducer=recorder,
        seed=rank,
    )
    features, labels = next(iter(heavy.data_loader))
    heavy.optimizer.zero_grad()
    nn.functional.cross_entropy(heavy.module(features), labels).backward()
    heavy.optimizer.step()
    moved = start - torch.cat([p.detach().reshape(-1) for p in heavy.module.parameters()])
    expected_batch = heavy.optimizer.private.expected_batch_size

    # 2. training with noise multiplier 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    private = make_private_rank(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        timeout=20.0,
        name="train",
    )
    for _ in range(epochs):
        for features, labels in private.data_loader:
            private.optimizer.zero_grad()
            nn.functional.cross_entropy(private.module(features), labels).backward()
            private.optimizer.step()
    with torch.no_grad():
        accuracy = (private.module(x[test]).argmax(1) == y[test]).float().mean().item()
    opacus = RDPAccountant()
    opacus.history = [(1.0, private.sampling_rate, private.optimizer.steps)]
    return {
        "heavy_sum_std": (world * moved).std().item(),
        "heavy_expected_std": 50.0 / expected_batch,
        "secure_minus_plain": (recorder.secure_sums[0] - recorder.plain[0]).abs().max().item(),
        "precision_bits": recorder.secure.last_report.precision_bits,
        "sum_moved": (world * moved - recorder.secure_sums[0]).abs().max().item(),
        "accuracy": accuracy,
        "steps": private.optimizer.steps,
        "sampling_rate": private.sampling_rate,
        "epsilon": private.epsilon(),
        "opacus_epsilon": opacus.get_epsilon(1e-5),
        "ledger_entries": len(private.ledger().sample_entries),
        "parameters": torch.cat(
            [p.detach().reshape(-1) for p in private.module.parameters()]
        ).tolist()[:8],
    }
