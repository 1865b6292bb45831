"""What a job will cost, computed analytically from the spec and the dataset's shape.

Torch-free (the API calls it before anything is queued). Mirrors core.ml.nets layer by layer:
`parameters` is exact; `flops_per_sample` counts multiply-adds of convolutions, linear
layers, GRU gates and attention as 2 FLOPs each (what torch.utils.flop_counter counts);
`epoch_gflop` = 3 x forward (forward + backward) over the training rows plus one forward
over the validation rows; `activation_bytes` is the float32 memory of the tensors autograd
keeps for one training batch (2 per conv/linear layer: its output and its normalised or
activated form), an estimate within a small factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CostEstimate", "cnn_pooling", "estimate_cost"]

POOL_MIN_SIZE = 8
RESNET_WIDTHS = (16, 32, 64)


@dataclass(frozen=True)
class CostEstimate:
    """Parameters, forward FLOPs per sample, FLOPs per epoch and activation memory of a job."""

    parameters: int
    flops_per_sample: int
    epoch_gflop: float
    activation_bytes: int
    weight_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (what the job document and the catalog show)."""
        doc = asdict(self)
        doc["epoch_gflop"] = round(self.epoch_gflop, 3)
        return doc


def cnn_pooling(size: tuple[int, int], n_layers: int) -> list[bool]:
    """Which cnn blocks end in 2x2 max pooling: each while the map's short side is >= 8."""
    h, w = size
    plan = []
    for _ in range(n_layers):
        pool = min(h, w) >= POOL_MIN_SIZE
        plan.append(pool)
        if pool:
            h, w = h // 2, w // 2
    return plan


def _dims(image_shape: tuple[int, ...] | list[int] | None, n_features: int
          ) -> tuple[int, int, int]:
    if not image_shape:
        return 1, 1, n_features
    dims = [int(d) for d in image_shape]
    return (1, dims[0], dims[1]) if len(dims) == 2 else (dims[0], dims[1], dims[2])


def _linear(n_in: int, n_out: int) -> tuple[int, int, int]:
    """(params, flops, activations) of one Linear layer on one sample."""
    return n_in * n_out + n_out, 2 * n_in * n_out, 2 * n_out


def _mlp(n_in: int, hidden: list[int], k: int) -> tuple[int, int, int]:
    p = f = a = 0
    for width in [*hidden, k]:
        lp, lf, la = _linear(n_in, width)
        p, f, a, n_in = p + lp, f + lf, a + la, width
    return p, f, a


def _cnn(c: int, h: int, w: int, hidden: list[int], k: int) -> tuple[int, int, int]:
    p = f = a = 0
    for width, pool in zip(hidden, cnn_pooling((h, w), len(hidden)), strict=True):
        p += 9 * c * width + 2 * width  # conv (no bias) + BatchNorm
        f += 2 * 9 * c * width * h * w
        a += 3 * width * h * w  # conv out, BN out, ReLU out
        if pool:
            h, w = h // 2, w // 2
        c = width
    lp, lf, la = _linear(c, k)
    return p + lp, f + lf, a + la


def _resnet(depth: int, c: int, h: int, w: int, k: int) -> tuple[int, int, int]:
    n = (depth - 2) // 6
    p = 9 * c * 16 + 32
    f = 2 * 9 * c * 16 * h * w
    a = 3 * 16 * h * w
    c_in = 16
    for stage, width in enumerate(RESNET_WIDTHS):
        for i in range(n):
            if stage > 0 and i == 0:
                h, w = (h + 1) // 2, (w + 1) // 2
            p += 9 * c_in * width + 9 * width * width + 4 * width
            f += 2 * 9 * (c_in * width + width * width) * h * w
            a += 6 * width * h * w
            c_in = width
    lp, lf, la = _linear(c_in, k)
    return p + lp, f + lf, a + la


def _gru(step: int, steps: int, hidden: list[int], k: int) -> tuple[int, int, int]:
    hs, p, f, n_in = hidden[0], 0, 0, step
    for _ in hidden:
        p += 3 * hs * (n_in + hs) + 6 * hs
        f += steps * 2 * 3 * hs * (n_in + hs)
        n_in = hs
    lp, lf, la = _linear(hs, k)
    return p + lp, f + lf, la + 4 * len(hidden) * steps * hs


def _transformer(step: int, steps: int, hidden: list[int], k: int) -> tuple[int, int, int]:
    d, t = hidden[0], steps + 1
    p = step * d + d + d + t * d + 2 * d  # embed, class token, positions, final norm
    f = 2 * steps * step * d
    per_layer = 4 * d * d + 4 * d + 4 * d * d + 3 * d + 4 * d  # attn, feed-forward, 2 norms
    p += len(hidden) * per_layer
    # qkv projection, scores + weighted sum, output projection, feed-forward (2 layers)
    f += len(hidden) * (6 * t * d * d + 4 * t * t * d + 2 * t * d * d + 8 * t * d * d)
    a = len(hidden) * (12 * t * d + 4 * t * t)
    lp, lf, la = _linear(d, k)
    return p + lp, f + lf, a + la


def estimate_cost(
    model_spec: dict[str, Any],
    *,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, ...] | list[int] | None,
    n_train: int,
    n_val: int,
    batch_size: int,
    binary: bool = False,
) -> CostEstimate:
    """The cost of training `model_spec` on data of this shape for one epoch (see module doc)."""
    arch = str(model_spec.get("arch", "mlp"))
    default = [32, 64, 128] if arch == "cnn" else [256, 256]  # as core.spec.ModelSpec
    hidden = [int(v) for v in model_spec.get("hidden", default) or []]
    k = 1 if binary else n_classes
    c, h, w = _dims(image_shape, n_features)
    if arch == "linear":
        p, f, a = _linear(n_features, k)
    elif arch == "mlp":
        p, f, a = _mlp(n_features, hidden, k)
    elif arch == "cnn":
        p, f, a = _cnn(c, h, w, hidden, k)
    elif arch == "resnet":
        p, f, a = _resnet(int(model_spec.get("depth") or 20), c, h, w, k)
    elif arch == "gru":
        p, f, a = _gru(c * w, h, hidden, k)
    else:
        p, f, a = _transformer(c * w, h, hidden, k)
    a += n_features  # the float input batch, kept for the first layer's backward
    epoch = (3 * n_train + n_val) * f / 1e9
    batch = max(1, min(batch_size, n_train))
    return CostEstimate(parameters=p, flops_per_sample=f, epoch_gflop=epoch,
                        activation_bytes=4 * a * batch, weight_bytes=16 * p)
