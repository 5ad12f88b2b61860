"""Data-parallel DP-SGD: every rank privatises its own examples, the ranks sum securely.

    torchrun --standalone --nproc-per-node 4 examples/torchrun_private_ddp.py

Each rank runs Opacus' DP-SGD on its shard of digits (Poisson sampling, per-example clipping,
its own Gaussian noise), and the noisy gradients are summed by secure aggregation, so no rank
sees another's gradient, noisy or not. Each rank's epsilon holds whatever the others do; rank 0
prints it after every epoch with the test accuracy (``private.ledger()`` is the rank's privacy
ledger; ``.write(folder)`` saves it as privacy.json).
"""

import warnings

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl.engines.distributed import make_private_rank

EPOCHS, BATCH, LR = 10, 32, 1.0
NOISE_MULTIPLIER, MAX_GRAD_NORM, DELTA = 1.0, 1.0, 1e-5


def main():
    warnings.filterwarnings("ignore", message="Full backward hook")  # Opacus' hooks, harmless
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:400], order[400:]
    per_rank = len(train) // world  # as many examples, so as many batches, on every rank
    shard = train[rank * per_rank : (rank + 1) * per_rank]
    torch.manual_seed(0)  # the same starting model on every rank
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    private = make_private_rank(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        DataLoader(TensorDataset(x[shard], y[shard]), batch_size=BATCH),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        delta=DELTA,
    )
    for epoch in range(1, EPOCHS + 1):
        for features, labels in private.data_loader:
            private.optimizer.zero_grad()
            nn.functional.cross_entropy(private.module(features), labels).backward()
            private.optimizer.step()
        if rank == 0:
            with torch.no_grad():
                accuracy = (private.module(x[test]).argmax(1) == y[test]).float().mean().item()
            print(
                f"epoch {epoch:2d}: test accuracy {accuracy:.3f}, epsilon {private.epsilon():.2f} "
                f"(delta {DELTA:g}) per rank",
                flush=True,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
