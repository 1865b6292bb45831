"""Where tensors and models live during training: device moves and memory layout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["batch_view", "prepare_model_for", "to_device"]


def batch_view(x: Tensor) -> str:
    """The view of a batch of image data from its rank: image 4-D, sequence 3-D, flat 2-D."""
    return {4: "image", 3: "sequence"}.get(x.dim(), "flat")


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a CPU tensor to `device`: through pinned memory, non-blocking, on CUDA."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def prepare_model_for(model: nn.Module, device: torch.device) -> None:
    """Move the model; conv nets use channels-last memory (inputs follow in InputNorm)."""
    model.to(device)
    # Channels-last is oneDNN's native conv layout on the CPU too (a cnn step on 28x28 runs
    # about 20 % faster); without oneDNN the CPU keeps the default layout.
    fast_layout = device.type == "cuda" or torch.backends.mkldnn.is_available()
    if fast_layout and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        inorm = getattr(model, "inorm", None)
        if inorm is not None:
            inorm.channels_last = True
