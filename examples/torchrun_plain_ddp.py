"""Data-parallel training with DistributedDataParallel: handwritten digits on 4 processes.

    torchrun --standalone --nproc-per-node 4 examples/torchrun_plain_ddp.py

examples/torchrun_secure_ddp.py is the same script with secure aggregation (one line more).
"""

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
