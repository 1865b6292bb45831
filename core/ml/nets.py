"""The five architectures. Each has `features(x)` (penultimate activations) and a final
`nn.Linear` named `head` whose weight rows are the class templates; forward = head(features(x)).

How `model.hidden` is read:
- linear: ignores hidden; features(x) is the flat input itself.
- mlp: one Linear + ReLU + Dropout per entry of hidden (its width); penultimate = last width
  (no hidden layers = logistic regression).
- cnn: one 3x3 conv (padding 1) + ReLU per entry of hidden (its channel count) on the
  (1, H, W) image, then global average pooling (+ dropout); penultimate = hidden[-1] channels.
- gru: a GRU over the image rows as time steps, hidden size hidden[0], len(hidden) layers
  (dropout between layers); the last step's top-layer state is the penultimate vector.
- transformer: rows projected to d_model = hidden[0] (must be divisible by 4 heads),
  len(hidden) pre-norm encoder layers (feed-forward 2*d_model), a learned positional
  embedding and a class token whose final (layer-normed) state is the penultimate vector.
With loss variant `binary` the head has a single output (exactly 2 classes required).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from core.ml.arch_compat import arch_incompatibility
from core.ml.errors import SpecError

__all__ = ["CNN", "GRUNet", "LinearNet", "MLP", "TransformerNet", "build_model", "model_config"]


class LinearNet(nn.Module):
    """Multinomial logistic regression on the flat features."""

    input_view = "flat"

    def __init__(self, n_features: int, n_out: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_features, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the flattened input."""
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network with dropout."""

    input_view = "flat"

    def __init__(self, n_features: int, hidden: list[int], n_out: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the last hidden layer."""
        return self.body(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class CNN(nn.Module):
    """3x3 conv + ReLU stack, global average pooling, linear head."""

    input_view = "image"

    def __init__(self, channels: list[int], n_out: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: globally average-pooled channels of the last conv."""
        return self.drop(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class GRUNet(nn.Module):
    """GRU over image rows; the final hidden state feeds the head."""

    input_view = "sequence"

    def __init__(self, step_dim: int, hidden: list[int], n_out: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(step_dim, hidden[0], num_layers=len(hidden), batch_first=True,
                          dropout=dropout if len(hidden) > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden[0], n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the top layer's state after the last row."""
        _, h_n = self.gru(x)
        return self.drop(h_n[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class TransformerNet(nn.Module):
    """Pre-norm transformer encoder over image rows with a class token."""

    input_view = "sequence"

    def __init__(self, step_dim: int, n_steps: int, hidden: list[int], n_out: int,
                 dropout: float) -> None:
        super().__init__()
        d = hidden[0]
        self.embed = nn.Linear(step_dim, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n_steps + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=len(hidden),
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the class token's final state."""
        tok = self.embed(x)
        tok = torch.cat([self.cls.expand(len(x), -1, -1), tok], dim=1) + self.pos
        return self.norm(self.encoder(tok)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


def model_config(
    model_spec: dict[str, Any],
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int] | None,
    variant: str,
) -> dict[str, Any]:
    """JSON-safe description of a built model (stored in model.json and safetensors metadata)."""
    arch = str(model_spec.get("arch", "mlp"))
    return {
        "arch": arch,
        "hidden": [int(h) for h in model_spec.get("hidden", [256, 256])],
        "dropout": float(model_spec.get("dropout", 0.0)),
        "n_features": int(n_features),
        "n_classes": int(n_classes),
        "n_outputs": 1 if variant == "binary" else int(n_classes),
        "image_shape": list(image_shape) if image_shape else None,
        "input_view": {"cnn": "image", "gru": "sequence", "transformer": "sequence"}.get(
            arch, "flat"),
        "variant": variant,
    }


def build_model(
    model_spec: dict[str, Any],
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int] | None,
    variant: str = "uniform",
) -> nn.Module:
    """Build the net for spec["model"] (arch, hidden, dropout); SpecError if it does not fit."""
    cfg = model_config(model_spec, n_features, n_classes, image_shape, variant)
    arch, hidden, dropout = cfg["arch"], cfg["hidden"], cfg["dropout"]
    reason = arch_incompatibility(arch, n_features, image_shape)
    if reason:
        raise SpecError(reason)
    if variant == "binary" and n_classes != 2:
        raise SpecError(
            f"loss.variant='binary' needs exactly 2 classes, this dataset has {n_classes}; "
            f"use 'uniform' or 'off_target'"
        )
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"model.dropout={dropout} must be in [0, 1)")
    if any(h < 1 for h in hidden):
        raise SpecError(f"model.hidden={hidden}: every entry must be >= 1")
    if arch in ("cnn", "gru", "transformer") and not hidden:
        raise SpecError(f"model.arch={arch!r} needs at least one entry in model.hidden")
    n_out = cfg["n_outputs"]
    if arch == "linear":
        return LinearNet(n_features, n_out)
    if arch == "mlp":
        return MLP(n_features, hidden, n_out, dropout)
    if arch == "cnn":
        return CNN(hidden, n_out, dropout)
    if image_shape is None:  # unreachable: arch_incompatibility refuses it
        raise SpecError(f"model.arch={arch!r} needs image-shaped data")
    n_steps, step_dim = image_shape
    if arch == "gru":
        return GRUNet(step_dim, hidden, n_out, dropout)
    if hidden[0] % 4:
        raise SpecError(
            f"model.hidden[0]={hidden[0]} is the transformer's d_model and must be divisible by "
            f"its 4 attention heads; use e.g. {hidden[0] + 4 - hidden[0] % 4}"
        )
    return TransformerNet(step_dim, n_steps, hidden, n_out, dropout)
