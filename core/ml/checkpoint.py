"""Training checkpoints: the state `fit` saves after each epoch, as safetensors + JSON metadata.

Every tensor (model, best state, optimizer state, RNG states) is a safetensors entry; the rest
is JSON in one metadata key. Reading needs neither pickle nor torch.load.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

__all__ = ["CHECKPOINT_FORMAT", "encode_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = 2  # 1 was torch.save (zip + restricted unpickler); 2 is safetensors


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
    """The tensors under `prefix`, with the prefix taken off their names."""
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
