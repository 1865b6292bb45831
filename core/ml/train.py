"""The training loop: config, one epoch, evaluation, early stopping, checkpoints and resume.

Reproducibility contract (CPU): the same config, data and seed give bit-identical results,
and a run interrupted after epoch k and resumed from its checkpoint ends exactly like an
uninterrupted one. Randomness comes from three sources, all saved in every checkpoint:
the global torch RNG (model init before `fit`, dropout), the data-order generator
(seed) and the augmentation generator (seed + 1). Progress leaves only through hooks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from core.ml import calibration, losses
from core.ml.augment import augment_defaults, random_crop_flip
from core.ml.errors import DeviceUnavailableError, SpecError, TrainingDivergedError, TrainingStopped
from core.ml.schedules import make_scheduler, restore_scheduler, scheduler_state
from core.spec import JobSpec

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

CHECKPOINT_FORMAT = 2  # 1 was torch.save (zip + restricted unpickler); 2 is safetensors
logger = logging.getLogger(__name__)
METRICS = {"val_nll": "min", "val_ece": "min", "val_accuracy": "max"}


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
class TrainConfig:
    """Everything the loop needs besides the model and the data (plain values, JSON-safe)."""

    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    crop_padding: int | None = None
    flip: bool | None = None
    alpha: float = 0.1
    variant: str = "uniform"
    prior: list[float] | None = None
    form: str = "ce"
    early_stopping_metric: str | None = "val_nll"
    patience: int = 5
    n_bins: int = 15
    eval_batch_size: int = 2048

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TrainConfig:
        """Read a (resolved) job spec dict through the JobSpec model: its defaults, its checks."""
        try:
            job = JobSpec.model_validate(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"{where}: {first['msg']}") from exc
        return cls.from_job_spec(job)

    @classmethod
    def from_job_spec(cls, job: JobSpec) -> TrainConfig:
        """The training, optimizer, loss and calibration blocks of a validated JobSpec."""
        tr, opt, loss, es = job.training, job.optimizer, job.loss, job.training.early_stopping
        return cls(
            epochs=tr.epochs, batch_size=tr.batch_size, seed=tr.seed, device=tr.device,
            augment=tr.augment, optimizer=opt.name, lr=opt.lr, weight_decay=opt.weight_decay,
            momentum=opt.momentum, alpha=loss.alpha, variant=loss.variant,
            prior=None if loss.prior is None else [float(p) for p in loss.prior],
            form=loss.form, early_stopping_metric=es.metric if es else None,
            patience=es.patience if es else 0, n_bins=job.calibration.n_bins,
            nesterov=opt.nesterov, schedule=tr.schedule.name,
            milestones=list(tr.schedule.milestones), gamma=tr.schedule.gamma,
            warmup_epochs=tr.schedule.warmup_epochs, crop_padding=tr.crop_padding, flip=tr.flip,
        )


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


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def class_logits(raw: Tensor) -> Tensor:
    """K-class logits for metrics: unchanged, or [0, z] for a one-output (binary) head."""
    raw = raw.float()
    return torch.cat([torch.zeros_like(raw), raw], dim=1) if raw.shape[1] == 1 else raw


def compute_loss(raw: Tensor, y: Tensor, cfg: TrainConfig, prior: Tensor | None) -> Tensor:
    """The label-smoothed loss of core.ml.losses for one batch (binary: one logit per row)."""
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
            xb = random_crop_flip(xb, image_shape, _view_of(xb), aug, padding=padding,
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


def _view_of(x: Tensor) -> str:
    """The view of a batch of image data from its rank: image 4-D, sequence 3-D, flat 2-D."""
    return {4: "image", 3: "sequence"}.get(x.dim(), "flat")


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a CPU tensor to `device`: through pinned memory, non-blocking, on CUDA."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def prepare_model_for(model: nn.Module, device: torch.device) -> None:
    """Move the model; on CUDA conv nets use channels-last memory (inputs follow in InputNorm)."""
    model.to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        inorm = getattr(model, "inorm", None)
        if inorm is not None:
            inorm.channels_last = True


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int = 2048
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (class logits (N,K) float32 CPU, labels (N,) CPU, penultimate features (N,D) CPU)."""
    model.eval()
    head: nn.Linear = model.head  # type: ignore[assignment]
    logits, feats = [], []
    for start in range(0, len(X), batch_size):
        with _autocast(X.device):
            f = model.features(X[start:start + batch_size])  # type: ignore[operator]
            raw = head(f)
        logits.append(class_logits(raw).cpu())
        feats.append(f.float().cpu())
    return torch.cat(logits), y.cpu(), torch.cat(feats)


def val_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Validation NLL, accuracy and ECE from class logits."""
    logp = F.log_softmax(logits.double(), dim=1)
    return {
        "val_nll": float(F.nll_loss(logp, labels)),
        "val_accuracy": float((logits.argmax(1) == labels).double().mean()),
        "val_ece": float(calibration.expected_calibration_error(logp.exp().float(), labels,
                                                                n_bins)),
    }


# --------------------------------------------------------------------------- checkpoints


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of the model's state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _rng_state(order: torch.Generator, aug: torch.Generator, device: torch.device) -> dict:
    """All RNG states the loop depends on."""
    return {
        "torch": torch.get_rng_state(),
        "order": order.get_state(),
        "augment": aug.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


_CKPT_TAG = "softlabel-checkpoint"
_MAX_HEADER = 64 << 20  # a safetensors header larger than this is not ours


def _tensor_table(prefix: str, tensors: dict[str, Tensor], out: dict[str, Tensor],
                  seen: set[int]) -> None:
    """Add CPU, contiguous, unshared views of `tensors` to `out` under `prefix`."""
    for key, value in tensors.items():
        t = value.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:  # safetensors refuses
            t = t.clone()  # tensors that share storage (tied weights, views of one buffer)
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[f"{prefix}{key}"] = t


def encode_checkpoint(ckpt: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict (as `load_checkpoint` returns it) to one safetensors blob.

    Every tensor (model, best state, optimizer state, RNG states) is a safetensors entry; the
    rest (epoch, history, counters, config, optimizer param groups) is JSON in the metadata.
    Writing is a memory copy and reading needs neither pickle nor torch.load.
    """
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    model = {k: v.detach().to("cpu") for k, v in ckpt["model"].items()}
    _tensor_table("model/", model, tensors, seen)
    best: dict[str, Tensor] | None = ckpt["best_state"]
    best_is_model = (
        best is not None and ckpt["best_epoch"] == ckpt["epoch"] and best.keys() == model.keys()
        and all(
            torch.equal(best[k], model[k]) for k in model))  # the epoch that just improved
    if best is not None and not best_is_model:
        _tensor_table("best/", best, tensors, seen)
    optim = ckpt["optimizer"]
    optim_values: dict[str, dict[str, Any]] = {}
    for idx, state in optim["state"].items():
        plain = {}
        for name, value in state.items():
            if isinstance(value, Tensor):
                _tensor_table(f"optim/{int(idx)}/", {name: value}, tensors, seen)
            else:
                plain[name] = value
        optim_values[str(int(idx))] = plain
    rng = ckpt["rng"]
    _tensor_table("rng/", {"torch": rng["torch"], "order": rng["order"],
                           "augment": rng["augment"]}, tensors, seen)
    cuda = rng["cuda"]
    if cuda is not None:
        _tensor_table("rng/cuda/", {str(i): t for i, t in enumerate(cuda)}, tensors, seen)
    meta = {
        "config": ckpt["config"], "epoch": int(ckpt["epoch"]), "history": ckpt["history"],
        "best_value": ckpt["best_value"], "best_epoch": int(ckpt["best_epoch"]),
        "best": None if best is None else ("model" if best_is_model else "stored"),
        "bad_epochs": int(ckpt["bad_epochs"]), "stopped_early": bool(ckpt["stopped_early"]),
        "optimizer": {"param_groups": optim["param_groups"], "state": optim_values},
        "cuda_rng": None if cuda is None else len(cuda),
        "scheduler": ckpt.get("scheduler"),
    }
    # one metadata key: safetensors writes several in hash order, one gives stable bytes
    return safetensors_save(tensors, metadata={
        _CKPT_TAG: json.dumps({"version": CHECKPOINT_FORMAT, **meta})})


def _frozen(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of checkpoint state that training cannot change any more (tensors cloned).

    The best state is shared: `fit` replaces it on improvement and never changes it in place.
    """
    def copy(t: Tensor) -> Tensor:
        return t.detach().to("cpu", copy=True)

    optim = state["optimizer"]
    rng = state["rng"]
    return {
        **state,
        "model": {k: copy(v) for k, v in state["model"].items()},
        "optimizer": {
            "state": {idx: {n: copy(v) if isinstance(v, Tensor) else v for n, v in st.items()}
                      for idx, st in optim["state"].items()},
            "param_groups": [dict(g) for g in optim["param_groups"]],
        },
        "rng": {**rng, "cuda": None if rng["cuda"] is None else [copy(t) for t in rng["cuda"]]},
        "history": list(state["history"]),
    }


def _header_metadata(blob: bytes) -> dict[str, Any]:
    """The `__metadata__` of a safetensors blob, parsed as JSON only (nothing executed)."""
    if len(blob) < 8:
        raise ValueError("not a Softlabel training checkpoint (too short)")
    size = int.from_bytes(blob[:8], "little")
    if not 2 <= size <= min(_MAX_HEADER, len(blob) - 8):
        raise ValueError("not a Softlabel training checkpoint (no safetensors header)")
    header = json.loads(blob[8:8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("not a Softlabel training checkpoint (no metadata)")
    return meta


def _split(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_checkpoint(blob: bytes) -> dict[str, Any]:
    """Read checkpoint bytes written by `fit` (safetensors + JSON metadata: no pickle).

    Raises ValueError for anything else: foreign bytes, the old torch.save format, another
    format version, or metadata that does not describe a checkpoint.
    """
    header = _header_metadata(blob)
    if _CKPT_TAG not in header:
        raise ValueError("not a Softlabel training checkpoint (no checkpoint metadata)")
    try:
        meta = json.loads(header[_CKPT_TAG])
    except ValueError as exc:
        raise ValueError(f"unreadable checkpoint metadata: {exc}") from exc
    version = meta.get("version") if isinstance(meta, dict) else None
    if version != CHECKPOINT_FORMAT:
        raise ValueError(f"a checkpoint of format {version!r}, not {CHECKPOINT_FORMAT}")
    try:
        tensors = safetensors_load(blob)
        model = _split(tensors, "model/")
        if meta["best"] not in (None, "model", "stored"):
            raise ValueError(f"best={meta['best']!r}")
        best = (None if meta["best"] is None else
                {k: v.clone() for k, v in model.items()} if meta["best"] == "model" else
                _split(tensors, "best/"))
        optim_state: dict[int, dict[str, Any]] = {}
        for idx, plain in meta["optimizer"]["state"].items():
            entry = dict(plain)
            entry.update(_split(tensors, f"optim/{int(idx)}/"))
            optim_state[int(idx)] = entry
        groups = [dict(g) for g in meta["optimizer"]["param_groups"]]
        for group in groups:  # JSON turned tuples (Adam's betas) into lists
            for name, value in group.items():
                if name != "params" and isinstance(value, list):
                    group[name] = tuple(value)
        n_cuda = meta["cuda_rng"]
        ckpt = {
            "format": CHECKPOINT_FORMAT, "config": str(meta["config"]),
            "epoch": int(meta["epoch"]), "model": model,
            "optimizer": {"state": optim_state, "param_groups": groups},
            "rng": {"torch": tensors["rng/torch"], "order": tensors["rng/order"],
                    "augment": tensors["rng/augment"],
                    "cuda": None if n_cuda is None else
                    [tensors[f"rng/cuda/{i}"] for i in range(int(n_cuda))]},
            "history": [dict(r) for r in meta["history"]],
            "best_value": None if meta["best_value"] is None else float(meta["best_value"]),
            "best_epoch": int(meta["best_epoch"]), "best_state": best,
            "bad_epochs": int(meta["bad_epochs"]), "stopped_early": bool(meta["stopped_early"]),
            "scheduler": _scheduler_meta(meta.get("scheduler")),
        }
    except ValueError:
        raise
    except Exception as exc:  # missing keys, wrong types, a corrupt tensor table
        raise ValueError(f"not a readable Softlabel training checkpoint: {exc!r}") from exc
    return ckpt


def _scheduler_meta(value: Any) -> dict[str, Any] | None:
    """The checkpoint's scheduler state: a dict or nothing (anything else is refused)."""
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"scheduler={value!r}")
    return value


def _improved(value: float, best: float | None, metric: str) -> bool:
    """Strict improvement of an early-stopping metric in its direction."""
    if best is None:
        return True
    return value < best if METRICS[metric] == "min" else value > best


# --------------------------------------------------------------------------- the loop


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
    X_train, y_train = to_device(X_train, device), to_device(y_train, device)
    X_val, y_val = to_device(X_val, device), to_device(y_val, device)
    prior = torch.tensor(cfg.prior, dtype=torch.float32, device=device) if cfg.prior else None
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(X_train) / cfg.batch_size))
    order = torch.Generator().manual_seed(cfg.seed)
    aug = torch.Generator().manual_seed(cfg.seed + 1)
    config_json = json.dumps({"train": asdict(cfg), "fingerprint": fingerprint}, sort_keys=True)
    metric = cfg.early_stopping_metric

    # state carried across epochs (and through checkpoints)
    epoch, history = 0, []
    best_value: float | None = None
    best_epoch, best_state, bad_epochs, stopped_early = 0, None, 0, False
    resumed_from: int | None = None

    blob = hooks.load_checkpoint() if hooks.load_checkpoint else None
    ckpt: dict[str, Any] | None = None
    if blob:
        try:
            ckpt = load_checkpoint(blob)
        except Exception as exc:  # unreadable, foreign or old-format bytes: start over
            logger.warning("ignoring an unreadable checkpoint (%d bytes): %s", len(blob), exc)
        if ckpt is not None and ckpt["config"] != config_json:
            logger.warning("ignoring a checkpoint written for another config")
            ckpt = None
        if ckpt is not None and ckpt["model"].keys() != model.state_dict().keys():
            logger.warning("ignoring a checkpoint whose tensors do not fit the model")
            ckpt = None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler"):
                restore_scheduler(scheduler, ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            order.set_state(ckpt["rng"]["order"])
            aug.set_state(ckpt["rng"]["augment"])
            if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            epoch, history = ckpt["epoch"], list(ckpt["history"])
            best_value, best_epoch = ckpt["best_value"], ckpt["best_epoch"]
            best_state, bad_epochs = ckpt["best_state"], ckpt["bad_epochs"]
            stopped_early = ckpt["stopped_early"]
            resumed_from = epoch

    t0 = time.perf_counter()
    epochs_run = 0
    while epoch < cfg.epochs and not stopped_early:
        epoch += 1
        train_loss = train_one_epoch(
            model, optimizer, X_train, y_train, cfg, order=order,
            aug=aug if cfg.augment else None, image_shape=image_shape, prior=prior,
            should_stop=hooks.should_stop, scheduler=scheduler,
        )
        logits, labels, _ = evaluate(model, X_val, y_val, batch_size=cfg.eval_batch_size)
        if not (math.isfinite(train_loss) and bool(torch.isfinite(logits).all())):
            raise TrainingDivergedError(epoch)
        row = {"epoch": epoch, "train_loss": train_loss,
               **val_metrics(logits, labels, cfg.n_bins)}
        history.append(row)
        epochs_run += 1

        if metric is None:
            best_epoch = epoch
        elif _improved(row[metric], best_value, metric):
            best_value, best_epoch, best_state, bad_epochs = row[metric], epoch, \
                _cpu_state(model), 0
        else:
            bad_epochs += 1
            stopped_early = bad_epochs >= cfg.patience

        if hooks.save_checkpoint or hooks.checkpoint_ready:
            state = {
                "config": config_json, "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": _rng_state(order, aug, device), "history": history,
                "best_value": best_value, "best_epoch": best_epoch, "best_state": best_state,
                "bad_epochs": bad_epochs, "stopped_early": stopped_early,
                "scheduler": scheduler_state(scheduler),
            }
            if hooks.checkpoint_ready:
                hooks.checkpoint_ready(functools.partial(encode_checkpoint, _frozen(state)))
            if hooks.save_checkpoint:
                hooks.save_checkpoint(encode_checkpoint(state))
        if hooks.on_epoch:
            hooks.on_epoch(dict(row))

    if best_state is not None:  # early stopping keeps the best epoch's weights
        model.load_state_dict(best_state)
    train_s = time.perf_counter() - t0
    return FitResult(
        history=history, best_epoch=best_epoch, stopped_early=stopped_early, train_s=train_s,
        samples_per_s=len(X_train) * epochs_run / train_s if train_s > 0 else 0.0,
        device=str(device), resumed_from_epoch=resumed_from,
    )
