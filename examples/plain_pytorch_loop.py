"""An ordinary FedAvg loop in plain PyTorch: 10 clients, handwritten digits, 10 rounds.

    python examples/plain_pytorch_loop.py

examples/secure_pytorch_loop.py is the same loop with secure aggregation (see the README).
"""

import copy

import torch
from sklearn.datasets import load_digits
from torch import nn

ROUNDS, CLIENTS, EPOCHS, BATCH, LR = 10, 10, 2, 16, 0.1


def local_training(model, x, y, generator):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(EPOCHS):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def main():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=generator)
    test, train = order[:400], order[400:]
    shards = torch.tensor_split(train, CLIENTS)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    for round_number in range(1, ROUNDS + 1):
        global_state = copy.deepcopy(model.state_dict())
        updates, weights = [], []
        for shard in shards:
            local = copy.deepcopy(model)
            local_training(local, x[shard], y[shard], generator)
            updates.append({k: v - global_state[k] for k, v in local.state_dict().items()})
            weights.append(len(shard))
        total = sum(weights)
        mean = {
            k: sum(w * u[k] for u, w in zip(updates, weights, strict=True)) / total
            for k in global_state
        }
        model.load_state_dict({k: global_state[k] + mean[k] for k in global_state})
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
        print(f"round {round_number:2d}: test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
