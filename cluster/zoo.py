"""The model zoo the config names (`job.model`), plus user models by import path.

`seed_cnn` and `seed_lstm` are the two programs dptrain's users brought; `mlp`
is the small model for quick runs, `mlp_bn` adds BatchNorm and Dropout (what the
data-parallel equivalence tests exercise).  All take Fashion-MNIST shaped input:
(N, 1, 28, 28) images; the LSTM reads each image as 28 steps of 28 features.
"""
from __future__ import annotations

import importlib

from engine import nn

ZOO = ("seed_cnn", "seed_lstm", "mlp", "mlp_bn")


def seed_cnn(num_classes=10, channels=32, hidden=128):
    """Conv2D(32, 3x3) relu -> MaxPool 2x2 -> Flatten -> Dense 128 relu -> Dense 10 (logits).

    A plain Sequential (state_dict keys `0.weight`, `4.weight`, `6.weight` as PyTorch's
    Sequential has them), which also lets the engine run conv + relu + pool as one fused op.
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(channels * 13 * 13, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class SeedLSTM(nn.Module):
    """The users' LSTMModel: LSTM(batch_first) then Linear on the last time step."""

    def __init__(self, input_size=28, hidden_size=128, num_layers=1, output_size=10):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        if x.ndim == 4:                    # (N, 1, 28, 28) images -> 28 steps of 28 features
            x = x.reshape(x.shape[0], x.shape[2], x.shape[3])
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def mlp(hidden=128, num_classes=10, batchnorm=False, dropout=0.0):
    # No bias before BatchNorm: BN subtracts it again, so its true gradient is 0 and Adam
    # would turn the rounding noise in that gradient into full-size steps of a useless parameter.
    layers = [nn.Flatten(), nn.Linear(784, hidden, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def build_model(name: str, **kwargs) -> nn.Module:
    """A zoo model by name, or `package.module:factory` for a user's own model."""
    if name == "seed_cnn":
        return seed_cnn(**kwargs)
    if name == "seed_lstm":
        return SeedLSTM(**kwargs)
    if name == "mlp":
        return mlp(**kwargs)
    if name == "mlp_bn":
        kwargs.setdefault("batchnorm", True)
        kwargs.setdefault("dropout", 0.2)
        return mlp(**kwargs)
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"job.model: cannot import {name!r} ({e}); give 'package.module:factory' "
                             "importable from the working directory") from None
        return factory(**kwargs)
    raise ValueError(f"job.model: unknown model {name!r}; choose one of {', '.join(ZOO)} "
                     "or 'package.module:factory'")
