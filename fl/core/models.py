"""Small reference models for 8x8 images and feature vectors; any ``nn.Module`` works as well."""

from __future__ import annotations

import torch
from torch import nn

from fl.core.config import ModelConfig, ModelName
from fl.errors import ConfigError

__all__ = ["CNN", "MLP", "Logistic", "build_model", "check_model_fits"]


class MLP(nn.Module):
    """Two-layer perceptron: features -> hidden (ReLU) -> classes."""

    def __init__(self, features: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Logistic(nn.Module):
    """Multinomial logistic regression: features -> classes, one linear layer (the model Li et
    al. 2020 train on Synthetic(alpha, beta))."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(features, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Two 3x3 convolutions and a linear head, for 8x8 single-channel images (64 features)."""

    def __init__(self, classes: int, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * channels * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(len(x), -1)))


def build_model(config: ModelConfig, *, features: int, classes: int) -> nn.Module:
    """The configured reference model for ``features`` inputs and ``classes`` outputs."""
    if config.name is ModelName.MLP:
        return MLP(features, classes, config.hidden)
    if config.name is ModelName.LOGISTIC:
        return Logistic(features, classes)
    return CNN(classes, channels=max(4, config.hidden // 4))


def check_model_fits(model: nn.Module, sample: torch.Tensor, classes: int) -> None:
    """Run one forward pass to check input and output shapes before any training.

    Raises:
        ConfigError: the model rejects the data's shape or does not output one score per class.
    """
    try:
        with torch.no_grad():
            output = model(sample)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(
            "model",
            type(model).__name__,
            f"a model accepting inputs of shape {tuple(sample.shape[1:])} ({error})",
        ) from None
    if output.ndim != 2 or output.shape[1] != classes:
        raise ConfigError(
            "model",
            type(model).__name__,
            f"outputs of shape (batch, {classes}), got {tuple(output.shape)}",
        )
