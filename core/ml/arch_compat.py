"""Which architectures can run on data of a given shape (torch-free: the API asks it too)."""

from __future__ import annotations

from core.spec import ARCHS

__all__ = [
    "IMAGE_ARCHS",
    "RESNET_MIN_SIZE",
    "arch_incompatibility",
    "compatible_archs",
    "image_dims",
    "view_of_arch",
]

IMAGE_ARCHS = ("cnn", "resnet")
RESNET_MIN_SIZE = 8


def image_dims(image_shape: tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """(C, H, W) of an image shape given as (H, W) (one channel) or (C, H, W)."""
    dims = tuple(int(d) for d in image_shape)
    if len(dims) == 2:
        return 1, dims[0], dims[1]
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    raise ValueError(f"Expected argument `image_shape` to be (H, W) or (C, H, W), but got {dims}")


def view_of_arch(arch: str) -> str:
    """The input view of an arch: flat (linear, mlp), image (cnn, resnet), sequence (rnn)."""
    if arch in IMAGE_ARCHS:
        return "image"
    return "sequence" if arch in ("gru", "transformer") else "flat"


def arch_incompatibility(
    arch: str, n_features: int, image_shape: tuple[int, ...] | None
) -> str | None:
    """Return why `arch` cannot run on data of this shape, or None when it can."""
    if arch not in ARCHS:
        return f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}"
    if arch in ("linear", "mlp"):
        return None
    if image_shape is None:
        view = (
            "an image (H x W) view" if arch in IMAGE_ARCHS
            else "a row-sequence view (rows of an image)"
        )
        return (
            f"model.arch={arch!r} needs {view}, but this dataset has {n_features} flat "
            f"features and no image shape; use 'linear' or 'mlp', or upload an NPZ whose X "
            f"has shape (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    c, h, w = image_dims(image_shape)
    if c * h * w != n_features:
        return f"image shape {c}x{h}x{w} does not match {n_features} features"
    if arch == "resnet" and min(h, w) < RESNET_MIN_SIZE:
        return (f"model.arch='resnet' needs images of at least {RESNET_MIN_SIZE}x"
                f"{RESNET_MIN_SIZE} pixels (it halves the resolution twice), got {h}x{w}")
    return None


def compatible_archs(n_features: int, image_shape: tuple[int, ...] | None) -> list[str]:
    """Architectures that fit: linear/mlp always; the others need an image shape."""
    return [a for a in ARCHS if arch_incompatibility(a, n_features, image_shape) is None]
