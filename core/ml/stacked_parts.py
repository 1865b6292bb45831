"""Pieces of the stacked trainer (core.ml.sweep): row compaction and the plain-MLP forward."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.ml.nets import MLP, LinearNet
from core.ml.train import TrainConfig, make_optimizer

__all__ = ["compact_rows", "linear_stack", "plain_layers"]


def compact_rows(params: dict[str, Tensor], optimizer: torch.optim.Optimizer, keep: list[int],
                 cfg: TrainConfig) -> tuple[dict[str, Tensor], torch.optim.Optimizer]:
    """Keep only the rows `keep` of the stacked parameters and of the optimiser state."""
    idx = torch.tensor(keep, device=next(iter(params.values())).device)
    new = {k: v.detach().index_select(0, idx).requires_grad_(True) for k, v in params.items()}
    new_opt = make_optimizer(new.values(), cfg, fused=True)
    for old_p, new_p in zip(params.values(), new.values(), strict=True):
        state = optimizer.state.get(old_p)
        if state:
            new_opt.state[new_p] = {
                name: (v.index_select(0, idx) if v.ndim > 0 else v.clone())
                if isinstance(v, Tensor) else v
                for name, v in state.items()}
    return new, new_opt


def plain_layers(model: nn.Module, params: dict[str, Tensor], prefix: str) -> list[str] | None:
    """The stacked parameter prefixes of a cast-only Linear-ReLU stack (mlp, linear), or None."""
    if not isinstance(model, MLP | LinearNet) or model.inorm.mean is not None:
        return None
    names = []
    for i, module in enumerate(model.body if isinstance(model, MLP) else []):
        if isinstance(module, nn.Linear):
            names.append(f"{prefix}body.{i}")
        elif not (isinstance(module, nn.ReLU)
                  or (isinstance(module, nn.Dropout) and module.p == 0.0)):
            return None
    names.append(f"{prefix}head")
    ok = all(f"{n}.weight" in params and f"{n}.bias" in params for n in names)
    return names if ok and len(params) == 2 * len(names) else None


def linear_stack(params: dict[str, Tensor], layers: list[str], x: Tensor) -> Tensor:
    """Raw outputs (T, B, K) of stacked Linear-ReLU layers on x (B, D) or (T, B, D).

    The batched matmuls vmap(functional_call) lowers these layers to, called directly.
    """
    h = x.float()
    for i, name in enumerate(layers):
        w, b = params[f"{name}.weight"], params[f"{name}.bias"].unsqueeze(1)
        if h.ndim == 2:
            h = torch.matmul(h, w.transpose(1, 2)) + b
        else:
            h = torch.baddbmm(b, h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h
