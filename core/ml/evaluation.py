"""Evaluation of a trained net: class logits, features and the validation metrics of an epoch."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.ml import calibration

__all__ = ["autocast", "class_logits", "evaluate", "val_metrics"]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def class_logits(raw: Tensor) -> Tensor:
    """K-class logits for metrics (along the last axis): unchanged, or [0, z] for a one-output
    (binary) head."""
    raw = raw.float()
    return torch.cat([torch.zeros_like(raw), raw], dim=-1) if raw.shape[-1] == 1 else raw


_CPU_IMAGE_ROWS = 128


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int = 2048,
    feature_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(class logits (N,K) float32 CPU, labels (N,) CPU, features): the penultimate features
    (CPU, float32) of the ascending row indices `feature_rows` only (None: none kept).

    Only the rows asked for are kept: the features of every row would be an (N, D) float
    copy of the input for a linear model (4x a uint8 image set).
    """
    model.eval()
    head: nn.Linear = model.head  # type: ignore[assignment]
    logits, feats = [], []
    if X.device.type == "cpu" and X.ndim >= 4:
        # a conv net's activations for thousands of images fall out of the CPU's caches:
        # 128 rows a pass evaluate 1.2-1.8x faster than 2048 (bench/throughput.py models)
        batch_size = min(batch_size, _CPU_IMAGE_ROWS)
    for start in range(0, len(X), batch_size):
        with autocast(X.device):
            f = model.features(X[start:start + batch_size])  # type: ignore[operator]
            raw = head(f)
        logits.append(class_logits(raw).cpu())
        if feature_rows is not None:
            inside = feature_rows[(feature_rows >= start) & (feature_rows < start + len(f))]
            feats.append(f[(inside - start).to(f.device)].float().cpu())
    features = None
    if feature_rows is not None:
        features = torch.cat(feats) if feats else torch.empty(0, head.in_features)
    return torch.cat(logits), y.cpu(), features


def val_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Validation NLL, accuracy and ECE from class logits."""
    logp = F.log_softmax(logits.double(), dim=1)
    return {
        "val_nll": float(F.nll_loss(logp, labels)),
        "val_accuracy": float((logits.argmax(1) == labels).double().mean()),
        "val_ece": float(calibration.expected_calibration_error(logp.exp().float(), labels,
                                                                n_bins)),
    }
