"""The training loop: one epoch, early stopping, checkpoints and resume.

Reproducibility contract (CPU): the same config, data and seed give bit-identical results,
and a run interrupted after epoch k and resumed from its checkpoint ends exactly like an
uninterrupted one. Randomness comes from three sources, all saved in every checkpoint:
the global torch RNG (model init before `fit`, dropout), the data-order generator
(seed) and the augmentation generator (seed + 1). Progress leaves only through hooks.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.ml import losses, methods
from core.ml.augment import augment_defaults, random_crop_flip
from core.ml.checkpoint import (
    CHECKPOINT_FORMAT,
    _cpu_state,
    _frozen,
    _rng_state,
    encode_checkpoint,
    load_checkpoint,
)
from core.ml.early_stopping import EarlyStopping, epoch_row
from core.ml.errors import DeviceUnavailableError, SpecError, TrainingStopped
from core.ml.evaluation import autocast as _autocast
from core.ml.evaluation import class_logits, evaluate, val_metrics
from core.ml.pause import pause_if_requested
from core.ml.placement import batch_view, prepare_model_for, to_device
from core.ml.schedules import make_scheduler, restore_scheduler, scheduler_state
from core.ml.train_config import TrainConfig

# The config, checkpoints and evaluation live in their own modules (train_config, checkpoint,
# evaluation); their public names stay importable from here.
__all__ = [
    "CHECKPOINT_FORMAT",
    "FitResult",
    "TrainConfig",
    "TrainHooks",
    "class_logits",
    "encode_checkpoint",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_optimizer",
    "resolve_device",
    "train_one_epoch",
    "val_metrics",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainHooks:
    """Callbacks between the training loop and its caller (the worker)."""

    on_epoch: Callable[[dict], None] | None = None
    should_stop: Callable[[], str | None] | None = None
    load_checkpoint: Callable[[], bytes | None] | None = None
    save_checkpoint: Callable[[bytes], None] | None = None
    # For callers that store asynchronously: after every epoch, a function that returns that
    # epoch's checkpoint bytes. The state is copied at once; the encoding (the same bytes
    # save_checkpoint gets) is left to whoever calls it, on any thread, or to nobody.
    checkpoint_ready: Callable[[Callable[[], bytes]], None] | None = None


@dataclass
class FitResult:
    """What `fit` returns; the model holds the selected (best or last) weights."""

    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    train_s: float
    samples_per_s: float
    device: str
    resumed_from_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- building blocks


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda" without a GPU raises DeviceUnavailableError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "training.device='cuda' but no CUDA GPU is available on this worker; use 'auto' "
            "or 'cpu'"
        )
    if name not in ("cpu", "cuda"):
        raise SpecError(f"training.device={name!r}; use auto, cpu or cuda")
    return torch.device(name)


def preload_training() -> None:
    """Import now what a process's first optimiser would import mid-training.

    torch.optim's constructors are wrapped by `torch._disable_dynamo`, which imports
    torch._dynamo on the first call: about a second, inside the first job's lease and train_s.
    """
    import torch._dynamo  # noqa: F401


def make_optimizer(model: nn.Module | Iterable[Tensor], cfg: TrainConfig, *,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW, all with cfg.weight_decay (a model or its tensors)."""
    params = model.parameters() if isinstance(model, nn.Module) else list(model)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def compute_loss(raw: Tensor, y: Tensor, cfg: TrainConfig, prior: Tensor | None) -> Tensor:
    """The label-smoothed loss of core.ml.losses for one batch (binary: one logit per row)."""
    if cfg.method != "label_smoothing":
        return methods.method_loss(raw.float(), y, cfg.method, cfg.method_params)
    logits = raw.float().squeeze(1) if cfg.variant == "binary" else raw.float()
    return losses.label_smoothed_cross_entropy(logits, y, cfg.alpha, cfg.variant,
                                               prior=prior, form=cfg.form)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: Tensor,
    y: Tensor,
    cfg: TrainConfig,
    *,
    order: torch.Generator,
    aug: torch.Generator | None = None,
    image_shape: tuple[int, ...] | None = None,
    prior: Tensor | None = None,
    should_stop: Callable[[], str | None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One pass over (X, y) in a seeded random order; returns the mean training loss.

    With `aug` and an image shape, each batch is randomly cropped (and flipped) on its device;
    `scheduler` is stepped after every optimizer step.
    """
    model.train()
    device = X.device
    n = len(X)
    perm = torch.randperm(n, generator=order).to(device)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for start in range(0, n, cfg.batch_size):
        idx = perm[start:start + cfg.batch_size]
        xb, yb = X[idx], y[idx]
        if aug is not None and image_shape is not None:
            padding, flip = augment_defaults(image_shape, cfg.crop_padding, cfg.flip)
            xb = random_crop_flip(xb, image_shape, batch_view(xb), aug, padding=padding,
                                  flip=flip)
        with _autocast(device):
            raw = model(xb)
        loss = compute_loss(raw, yb, cfg, prior)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().double() * len(idx)
        if should_stop is not None and (reason := should_stop()):
            raise TrainingStopped(reason)
    return float(total / n)


# --------------------------------------------------------------------------- the loop


@dataclass
class _LoopState:
    """What the epoch loop carries from epoch to epoch (and through checkpoints)."""

    stop: EarlyStopping
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    resumed_from: int | None = None


def _restore(blob: bytes | None, config_json: str, model: nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any, order: torch.Generator,
             aug: torch.Generator, device: torch.device, cfg: TrainConfig) -> _LoopState | None:
    """The loop state of a usable checkpoint (model, optimiser and RNGs restored), else None."""
    if not blob:
        return None
    try:
        ckpt = load_checkpoint(blob)
    except Exception as exc:  # unreadable, foreign or old-format bytes: start over
        logger.warning("ignoring an unreadable checkpoint (%d bytes): %s", len(blob), exc)
        return None
    if ckpt["config"] != config_json:
        logger.warning("ignoring a checkpoint written for another config")
        return None
    if ckpt["model"].keys() != model.state_dict().keys():
        logger.warning("ignoring a checkpoint whose tensors do not fit the model")
        return None
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler"):
        restore_scheduler(scheduler, ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    order.set_state(ckpt["rng"]["order"])
    aug.set_state(ckpt["rng"]["augment"])
    if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    stop = EarlyStopping(cfg.early_stopping_metric, cfg.patience, ckpt["best_value"],
                         ckpt["best_epoch"], ckpt["bad_epochs"], ckpt["stopped_early"])
    return _LoopState(stop=stop, epoch=ckpt["epoch"], history=list(ckpt["history"]),
                      best_state=ckpt["best_state"], resumed_from=ckpt["epoch"])


def _offer_checkpoint(hooks: TrainHooks, st: _LoopState, config_json: str, model: nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler: Any, order: torch.Generator,
                      aug: torch.Generator, device: torch.device) -> None:
    """Hand the end-of-epoch state to the checkpoint hooks (encoded now or on demand)."""
    if not (hooks.save_checkpoint or hooks.checkpoint_ready):
        return
    state = {
        "config": config_json, "epoch": st.epoch,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": _rng_state(order, aug, device), "history": st.history,
        "best_value": st.stop.best_value, "best_epoch": st.stop.best_epoch,
        "best_state": st.best_state, "bad_epochs": st.stop.bad_epochs,
        "stopped_early": st.stop.stopped,
        "scheduler": scheduler_state(scheduler),
    }
    if hooks.checkpoint_ready:
        hooks.checkpoint_ready(functools.partial(encode_checkpoint, _frozen(state)))
    if hooks.save_checkpoint:
        hooks.save_checkpoint(encode_checkpoint(state))


def fit(
    model: nn.Module,
    X_train: Tensor,
    y_train: Tensor,
    X_val: Tensor,
    y_val: Tensor,
    cfg: TrainConfig,
    hooks: TrainHooks | None = None,
    *,
    image_shape: tuple[int, ...] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` (already built and seeded) with early stopping, checkpoints and resume.

    Tensors may live on the CPU; they are moved to the resolved device. `fingerprint`
    (JSON-safe, e.g. the model config and dataset hash) is stored in checkpoints: a
    checkpoint whose config or fingerprint differs is ignored and training starts over.
    Raises TrainingStopped, TrainingDivergedError, DeviceUnavailableError.
    """
    hooks = hooks or TrainHooks()
    device = resolve_device(cfg.device)
    if cfg.augment and image_shape is None:
        raise SpecError("training.augment shifts images and needs image-shaped data; set it "
                        "to false for this dataset")
    prepare_model_for(model, device)
    X_train, y_train, X_val, y_val = (to_device(t, device) for t in (X_train, y_train, X_val,
                                                                      y_val))
    prior = torch.tensor(cfg.prior, dtype=torch.float32, device=device) if cfg.prior else None
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(X_train) / cfg.batch_size))
    order = torch.Generator().manual_seed(cfg.seed)
    aug = torch.Generator().manual_seed(cfg.seed + 1)
    config_json = json.dumps({"train": asdict(cfg), "fingerprint": fingerprint}, sort_keys=True)
    blob = hooks.load_checkpoint() if hooks.load_checkpoint else None
    st = (_restore(blob, config_json, model, optimizer, scheduler, order, aug, device, cfg)
          or _LoopState(stop=EarlyStopping(cfg.early_stopping_metric, cfg.patience)))

    t0 = time.perf_counter()
    epochs_run = 0
    while st.epoch < cfg.epochs and not st.stop.stopped:
        st.epoch += 1
        train_loss = train_one_epoch(
            model, optimizer, X_train, y_train, cfg, order=order,
            aug=aug if cfg.augment else None, image_shape=image_shape, prior=prior,
            should_stop=hooks.should_stop, scheduler=scheduler,
        )
        logits, labels, _ = evaluate(model, X_val, y_val, batch_size=cfg.eval_batch_size)
        row = epoch_row(st.epoch, train_loss, logits, labels, cfg.n_bins)
        st.history.append(row)
        epochs_run += 1
        if st.stop.update(row):
            st.best_state = _cpu_state(model)
        _offer_checkpoint(hooks, st, config_json, model, optimizer, scheduler, order, aug,
                          device)
        if hooks.on_epoch:
            hooks.on_epoch(dict(row))
        pause_if_requested(st.epoch, hooks.should_stop)

    return _finished(model, st, len(X_train) * epochs_run, time.perf_counter() - t0, device)


def _finished(model: nn.Module, st: _LoopState, samples: int, train_s: float,
              device: torch.device) -> FitResult:
    """The best epoch's weights back in `model` (early stopping) and the FitResult."""
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    return FitResult(
        history=st.history, best_epoch=st.stop.best_epoch, stopped_early=st.stop.stopped,
        train_s=train_s, samples_per_s=samples / train_s if train_s > 0 else 0.0,
        device=str(device), resumed_from_epoch=st.resumed_from,
    )
