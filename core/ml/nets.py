"""The five architectures. Each has `features(x)` (penultimate activations) and a final
`nn.Linear` named `head` whose weight rows are the class templates; forward = head(features(x)).

How `model.hidden` is read:
- linear: ignores hidden; features(x) is the flat input itself.
- mlp: one Linear + ReLU + Dropout per entry of hidden (its width); penultimate = last width
  (no hidden layers = logistic regression).
- cnn: one conv-BN-ReLU block (3x3, padding 1) per entry of hidden (its channel count) on the
  (C, H, W) image, each followed by 2x2 max pooling while the map is at least 8 pixels on its
  short side (28x28 -> 14 -> 7; digits 8x8 -> 4), then global average pooling (+ dropout);
  penultimate = hidden[-1] channels. Default hidden for cnn: [32, 64, 128].
- resnet: the CIFAR ResNet-(6n+2) of He et al. (core.ml.resnet), model.depth in
  {20, 32, 44, 56, 110}; hidden is ignored; penultimate = 64 channels.
- gru: a GRU over the image rows as time steps, hidden size hidden[0], len(hidden) layers
  (dropout between layers); the last step's top-layer state is the penultimate vector.
- transformer: rows projected to d_model = hidden[0] (must be divisible by 4 heads),
  len(hidden) pre-norm encoder layers (feed-forward 2*d_model), a learned positional
  embedding and a class token whose final (layer-normed) state is the penultimate vector.
With loss variant `binary` the head has a single output (exactly 2 classes required).
Uploaded images arrive raw (uint8/float16/float32); every net starts with an `InputNorm`
that casts the batch to float32 and normalises it per channel with training-split statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from core.ml.arch_compat import arch_incompatibility, image_dims, view_of_arch
from core.ml.cost import cnn_pooling
from core.ml.errors import SpecError
from core.ml.resnet import CifarResNet, InputNorm, kaiming_init

__all__ = ["CNN", "CifarResNet", "GRUNet", "LinearNet", "MLP", "TransformerNet", "build_model",
           "model_config"]


class LinearNet(nn.Module):
    """Multinomial logistic regression on the flat features."""

    input_view = "flat"

    def __init__(self, n_features: int, n_out: int, inorm: InputNorm | None = None) -> None:
        super().__init__()
        self.inorm = inorm or InputNorm()
        self.head = nn.Linear(n_features, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the flattened (normalised) input."""
        return self.inorm(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network with dropout."""

    input_view = "flat"

    def __init__(self, n_features: int, hidden: list[int], n_out: int, dropout: float,
                 inorm: InputNorm | None = None) -> None:
        super().__init__()
        self.inorm = inorm or InputNorm()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the last hidden layer."""
        return self.body(self.inorm(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class CNN(nn.Module):
    """Conv-BN-ReLU blocks with 2x2 max pooling while the map is large, GAP, linear head."""

    input_view = "image"

    def __init__(self, in_channels: int, size: tuple[int, int], channels: list[int], n_out: int,
                 dropout: float, inorm: InputNorm | None = None) -> None:
        super().__init__()
        self.inorm = inorm or InputNorm()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c, pool in zip(channels, cnn_pooling(size, len(channels)), strict=True):
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, n_out)
        kaiming_init(self)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: globally average-pooled channels of the last block."""
        return self.drop(self.body(self.inorm(x)).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class GRUNet(nn.Module):
    """GRU over image rows; the final hidden state feeds the head."""

    input_view = "sequence"

    def __init__(self, step_dim: int, hidden: list[int], n_out: int, dropout: float,
                 inorm: InputNorm | None = None) -> None:
        super().__init__()
        self.inorm = inorm or InputNorm()
        self.gru = nn.GRU(step_dim, hidden[0], num_layers=len(hidden), batch_first=True,
                          dropout=dropout if len(hidden) > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden[0], n_out)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: the top layer's state after the last row."""
        _, h_n = self.gru(self.inorm(x))
        return self.drop(h_n[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


class TransformerNet(nn.Module):
    """Pre-norm transformer encoder over image rows with a class token."""

    input_view = "sequence"

    def __init__(self, step_dim: int, n_steps: int, hidden: list[int], n_out: int,
                 dropout: float, inorm: InputNorm | None = None) -> None:
        super().__init__()
        self.inorm = inorm or InputNorm()
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
        tok = self.embed(self.inorm(x))
        tok = torch.cat([self.cls.expand(len(x), -1, -1), tok], dim=1) + self.pos
        return self.norm(self.encoder(tok)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.features(x))


def model_config(
    model_spec: dict[str, Any],
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | None,
    variant: str,
    input_norm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-safe description of a built model (stored in model.json and safetensors metadata).

    `input_norm` ({"mean": [...], "std": [...]} per channel) is set for raw uploaded images.
    """
    arch = str(model_spec.get("arch", "mlp"))
    cfg: dict[str, Any] = {
        "arch": arch,
        "hidden": [int(h) for h in model_spec.get("hidden", [256, 256])],
        "dropout": float(model_spec.get("dropout", 0.0)),
        "n_features": int(n_features),
        "n_classes": int(n_classes),
        "n_outputs": 1 if variant == "binary" else int(n_classes),
        "image_shape": list(image_shape) if image_shape else None,
        "input_view": view_of_arch(arch),
        "variant": variant,
    }
    if arch == "resnet":
        cfg["depth"] = int(model_spec.get("depth") or 20)
    if input_norm is not None:
        cfg["input_norm"] = {"mean": [float(v) for v in input_norm["mean"]],
                             "std": [float(v) for v in input_norm["std"]]}
    return cfg


def _check(cfg: dict[str, Any], image_shape: tuple[int, ...] | None) -> None:
    """SpecError unless the model config fits its data and its own rules."""
    arch, hidden, dropout = cfg["arch"], cfg["hidden"], cfg["dropout"]
    reason = arch_incompatibility(arch, cfg["n_features"], image_shape)
    if reason:
        raise SpecError(reason)
    if cfg["variant"] == "binary" and cfg["n_classes"] != 2:
        raise SpecError(
            f"loss.variant='binary' needs exactly 2 classes, this dataset has "
            f"{cfg['n_classes']}; use 'uniform' or 'off_target'"
        )
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"model.dropout={dropout} must be in [0, 1)")
    if any(h < 1 for h in hidden):
        raise SpecError(f"model.hidden={hidden}: every entry must be >= 1")
    if arch in ("cnn", "gru", "transformer") and not hidden:
        raise SpecError(f"model.arch={arch!r} needs at least one entry in model.hidden")
    if arch == "transformer" and hidden[0] % 4:
        raise SpecError(
            f"model.hidden[0]={hidden[0]} is the transformer's d_model and must be divisible by "
            f"its 4 attention heads; use e.g. {hidden[0] + 4 - hidden[0] % 4}"
        )


def build_model(
    model_spec: dict[str, Any],
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | None,
    variant: str = "uniform",
    input_norm: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the net for spec["model"] (arch, hidden, dropout, depth); SpecError if it won't fit."""
    # a stored model config (model.json) carries its own input normalisation
    cfg = model_config(model_spec, n_features, n_classes, image_shape, variant,
                       input_norm or model_spec.get("input_norm"))
    _check(cfg, image_shape)
    arch, hidden, dropout, n_out = cfg["arch"], cfg["hidden"], cfg["dropout"], cfg["n_outputs"]
    norm = cfg.get("input_norm")
    inorm = InputNorm(norm["mean"], norm["std"], cfg["input_view"]) if norm else InputNorm()
    if arch == "linear":
        return LinearNet(n_features, n_out, inorm)
    if arch == "mlp":
        return MLP(n_features, hidden, n_out, dropout, inorm)
    if image_shape is None:  # unreachable: arch_incompatibility refuses it
        raise SpecError(f"model.arch={arch!r} needs image-shaped data")
    c, h, w = image_dims(image_shape)
    if arch == "cnn":
        return CNN(c, (h, w), hidden, n_out, dropout, inorm)
    if arch == "resnet":
        return CifarResNet(cfg["depth"], c, n_out, inorm)
    if arch == "gru":
        return GRUNet(c * w, hidden, n_out, dropout, inorm)
    return TransformerNet(c * w, h, hidden, n_out, dropout, inorm)
