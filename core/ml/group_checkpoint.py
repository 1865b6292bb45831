"""Group checkpoints of stacked sweep trials: the state `_train_stack` has after an epoch.

`snapshot(stack, epoch, keys)` takes a frozen copy on the training thread; `encode` turns it
into one safetensors blob (tensors: stacked parameters of the active rows, optimiser state,
best states, data-order and augmentation generator states per seed; JSON metadata: epoch,
trial keys, active rows, history and early-stopping state per trial). `restore` puts a decoded
checkpoint into a freshly built `_Stack`: trials are matched by key (the worker's job ids), so
a group that lost some trials since (canceled, diverged, delivered apart) resumes exactly for
the rest; a trial the checkpoint does not hold means a fresh start (`GroupResumeError`).
Reading needs neither pickle nor torch.load. The global torch RNG is not used by stacked
training (the models are built under `fork_rng`, no dropout), so it is not stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from core.ml.checkpoint import _header_metadata
from core.ml.train import make_optimizer

__all__ = ["GROUP_CHECKPOINT_FORMAT", "GroupResumeError", "decode", "encode", "handoff",
           "restore", "resume_or_none", "snapshot"]

logger = logging.getLogger("softlabel.ml")

GROUP_CHECKPOINT_FORMAT = 1
_TAG = "softlabel-group-checkpoint"


class GroupResumeError(ValueError):
    """The checkpoint cannot resume this group (another trial set, spec or format)."""


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def snapshot(stack: Any, epoch: int, keys: list[str], fingerprint: str) -> dict[str, Any]:
    """A frozen copy of the stack after `epoch` (training may go on changing the stack)."""
    tensors: dict[str, Tensor] = {f"param/{k}": _cpu(v) for k, v in stack.params.items()}
    optim: dict[str, dict[str, Any]] = {}
    for k, p in stack.params.items():
        plain: dict[str, Any] = {}
        for name, value in stack.optimizer.state.get(p, {}).items():
            if isinstance(value, Tensor):
                tensors[f"optim/{k}/{name}"] = _cpu(value)
            else:
                plain[name] = value
        optim[k] = plain
    seeds = sorted({t.cfg.seed for t in stack.trials})
    for s, order, aug in zip(seeds, stack.orders, stack.augs, strict=True):
        tensors[f"order/{s}"], tensors[f"augment/{s}"] = order.get_state(), aug.get_state()
    trials = []
    for t in stack.trials:
        if t.canceled:
            continue
        key = keys[t.index]
        if t.best_state is not None:  # replaced on improvement, never changed in place
            tensors.update({f"best/{key}/{n}": v for n, v in t.best_state.items()})
        st = t.stop
        trials.append({"key": key, "seed": t.cfg.seed, "alpha": t.cfg.alpha,
                       "history": list(t.history), "epochs_run": t.epochs_run,
                       "best": t.best_state is not None, "best_value": st.best_value,
                       "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
                       "stopped": st.stopped})
    meta = {"version": GROUP_CHECKPOINT_FORMAT, "epoch": epoch, "fingerprint": fingerprint,
            "trials": trials, "active": [keys[t.index] for t in stack.active],
            "optimizer": optim}
    return {"tensors": tensors, "meta": meta}


def encode(snap: dict[str, Any]) -> bytes:
    """One safetensors blob (tensors + the JSON metadata in one key, for stable bytes)."""
    return safetensors_save(snap["tensors"], metadata={_TAG: json.dumps(snap["meta"])})


def decode(blob: bytes) -> dict[str, Any]:
    """The snapshot that `encode` wrote; ValueError for anything else (nothing executed)."""
    header = _header_metadata(blob)
    if _TAG not in header:
        raise ValueError("not a Softlabel group checkpoint")
    meta = json.loads(header[_TAG])
    if not isinstance(meta, dict) or meta.get("version") != GROUP_CHECKPOINT_FORMAT:
        raise ValueError("a group checkpoint of another format")
    return {"tensors": safetensors_load(blob), "meta": meta}


def _split(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check(stack: Any, meta: dict[str, Any], keys: list[str], fingerprint: str
           ) -> dict[str, dict[str, Any]]:
    """The checkpoint's trial entries by key; GroupResumeError when they cannot resume us."""
    if meta["fingerprint"] != fingerprint:
        raise GroupResumeError("the checkpoint is of another trial spec")
    saved = {t["key"]: t for t in meta["trials"]}
    for t in stack.trials:
        entry = saved.get(keys[t.index])
        if entry is None:
            raise GroupResumeError(f"trial {keys[t.index]} is not in the checkpoint")
        if entry["seed"] != t.cfg.seed or entry["alpha"] != t.cfg.alpha:
            raise GroupResumeError(f"trial {keys[t.index]} has another alpha or seed")
    return saved


def restore(stack: Any, snap: dict[str, Any], keys: list[str], fingerprint: str) -> int:
    """Put the checkpoint's state into a fresh stack; the epoch it resumes after."""
    meta, tensors = snap["meta"], snap["tensors"]
    saved = _check(stack, meta, keys, fingerprint)
    for t in stack.trials:
        entry = saved[keys[t.index]]
        t.history = [dict(r) for r in entry["history"]]
        t.stop.best_value, t.stop.best_epoch = entry["best_value"], int(entry["best_epoch"])
        t.stop.bad_epochs, t.stop.stopped = int(entry["bad_epochs"]), bool(entry["stopped"])
        t.best_state = _split(tensors, f"best/{keys[t.index]}/") if entry["best"] else None
    rows_ck = {k: r for r, k in enumerate(meta["active"])}
    active = [t for t in stack.trials if keys[t.index] in rows_ck]
    rows = [rows_ck[keys[t.index]] for t in active]
    idx = torch.tensor(rows, dtype=torch.long)
    device = stack.device
    params = {k: tensors[f"param/{k}"].index_select(0, idx).to(device).requires_grad_(True)
              for k in stack.params}
    optimizer = make_optimizer(params.values(), stack.cfg, fused=True)
    for k, p in params.items():
        state: dict[str, Any] = dict(meta["optimizer"][k])
        for name, v in _split(tensors, f"optim/{k}/").items():
            state[name] = (v.index_select(0, idx) if v.ndim > 0 else v).to(device)
        if state:
            optimizer.state[p] = state
    stack.params, stack.optimizer, stack.active = params, optimizer, active
    stack.loss_fn.keep([t.index for t in active])
    seeds = sorted({t.cfg.seed for t in stack.trials})
    for s, order, aug in zip(seeds, stack.orders, stack.augs, strict=True):
        order.set_state(tensors[f"order/{s}"])
        aug.set_state(tensors[f"augment/{s}"])
    return int(meta["epoch"])


def handoff(stack: Any, epoch: int) -> Callable[[], bytes]:
    """Freeze the stack after `epoch` now; the returned callable encodes it (on any thread)."""
    snap = snapshot(stack, epoch, stack.keys, stack.fingerprint)
    return lambda: encode(snap)


def resume_or_none(stack: Any, blob: bytes) -> int | None:
    """Resume a fresh stack from checkpoint bytes: the epoch it resumes after, or None (logged)
    when the checkpoint cannot resume this group and training must start from epoch 1."""
    try:
        snap = decode(blob)
        epoch = restore(stack, snap, stack.keys, stack.fingerprint)
    except Exception as exc:  # noqa: BLE001 - any unusable checkpoint means a fresh start
        logger.warning("group checkpoint not used, the trials start from epoch 1: %s", exc)
        return None
    logger.info("stacked trials resumed from the group checkpoint after epoch %d", epoch)
    stack.resumed_from = epoch
    return epoch
