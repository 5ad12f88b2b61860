"""DistributedDataParallel with secure aggregation: no rank sees another rank's gradient.

    torchrun --standalone --nproc-per-node 4 examples/torchrun_secure_ddp.py

The same script as examples/torchrun_plain_ddp.py plus one line (and its import); the README
shows the diff. Every rank's gradients are masked before they leave it; the ranks only learn the
sum, as a plain all-reduce gives them.
"""

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fl.engines.distributed import register_secure_hook

EPOCHS, BATCH, LR = 10, 16, 0.1


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    shard = torch.tensor_split(train, world)[rank]  # this rank's examples
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    register_secure_hook(model)  # the one line: gradients are summed by secure aggregation

    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(rank)
    for epoch in range(1, EPOCHS + 1):
        batches = torch.split(shard[torch.randperm(len(shard), generator=generator)], BATCH)
        for batch in batches[: len(train) // world // BATCH]:  # the same count on every rank
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if rank == 0:
            with torch.no_grad():
                accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
            print(f"epoch {epoch:2d}: test accuracy {accuracy:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
