"""Standard image augmentation on batched tensors, on the batch's device: random crop with
zero padding and horizontal flips (the CIFAR recipe of He et al. 2016), seeded.

Works on every view of image data: image (N, C, H, W), flat (N, C*H*W) and sequence
(N, H, C*W) (grey images: (N, H, W)); raw uint8 batches stay uint8 (padding is black,
as torchvision pads the PIL image before ToTensor/Normalize).
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.ml.arch_compat import image_dims

__all__ = ["augment_defaults", "random_crop_flip"]

SMALL_IMAGE = 16


def augment_defaults(image_shape: tuple[int, ...], padding: int | None, flip: bool | None
                     ) -> tuple[int, bool]:
    """(padding, flip) with the defaults filled in: padding 4 (1 under 16 px), flip for colour."""
    c, h, w = image_dims(image_shape)
    pad = padding if padding is not None else (4 if min(h, w) >= SMALL_IMAGE else 1)
    return pad, (c > 1) if flip is None else flip


def _to_nchw(x: Tensor, view: str, c: int, h: int, w: int) -> Tensor:
    n = x.shape[0]
    if view == "sequence":
        return x.reshape(n, h, c, w).permute(0, 2, 1, 3)
    return x.reshape(n, c, h, w)


def _from_nchw(img: Tensor, like: Tensor, view: str) -> Tensor:
    if view == "sequence":
        return img.permute(0, 2, 1, 3).reshape(like.shape)
    return img.reshape(like.shape)


def random_crop_flip(x: Tensor, image_shape: tuple[int, ...], view: str,
                     generator: torch.Generator, *, padding: int, flip: bool) -> Tensor:
    """Pad by `padding` zeros, crop back to H x W at a random offset, flip half the images."""
    c, h, w = image_dims(image_shape)
    n, dev = x.shape[0], x.device
    img = _to_nchw(x, view, c, h, w)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(dev)
    flips = (torch.rand(n, generator=generator) < 0.5).to(dev) if flip else None
    padded = torch.nn.functional.pad(img, (padding, padding, padding, padding))
    rows = torch.arange(h, device=dev) + offsets[:, :1]  # (n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    cols = cols + offsets[:, 1:]
    out = padded[torch.arange(n, device=dev)[:, None, None, None],
                 torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    return _from_nchw(out, x, view)
