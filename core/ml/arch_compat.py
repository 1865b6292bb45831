"""Which architectures can run on data of a given shape (torch-free: the API asks it too)."""

from __future__ import annotations

from core.spec import ARCHS

__all__ = ["arch_incompatibility", "compatible_archs"]


def arch_incompatibility(
    arch: str, n_features: int, image_shape: tuple[int, int] | None
) -> str | None:
    """Return why `arch` cannot run on data of this shape, or None when it can."""
    if arch not in ARCHS:
        return f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}"
    if arch in ("linear", "mlp"):
        return None
    if image_shape is None:
        view = (
            "an image (H x W) view" if arch == "cnn" else "a row-sequence view (rows of an image)"
        )
        return (
            f"model.arch={arch!r} needs {view}, but this dataset has {n_features} flat "
            f"features and no image shape; use 'linear' or 'mlp', or upload an NPZ whose X "
            f"has shape (N, H, W)"
        )
    h, w = image_shape
    if h * w != n_features:
        return f"image shape {h}x{w} does not match {n_features} features"
    return None


def compatible_archs(n_features: int, image_shape: tuple[int, int] | None) -> list[str]:
    """Architectures that fit: linear/mlp always; cnn/gru/transformer need an image shape."""
    return [a for a in ARCHS if arch_incompatibility(a, n_features, image_shape) is None]
