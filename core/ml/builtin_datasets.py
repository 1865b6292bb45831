"""The built-in (scikit-learn bundled) datasets, described without loading them (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUILTIN_DATASETS", "BuiltinInfo"]


@dataclass(frozen=True)
class BuiltinInfo:
    """Metadata of one built-in (scikit-learn bundled) dataset, known without loading it."""

    n_samples: int
    n_features: int
    n_classes: int
    image_shape: tuple[int, int] | None
    description: str


BUILTIN_DATASETS: dict[str, BuiltinInfo] = {
    "digits": BuiltinInfo(1797, 64, 10, (8, 8), "8x8 grey-scale handwritten digits 0-9"),
    "iris": BuiltinInfo(150, 4, 3, None, "iris flower measurements, 3 species"),
    "wine": BuiltinInfo(178, 13, 3, None, "wine chemical analysis, 3 cultivars"),
    "breast_cancer": BuiltinInfo(569, 30, 2, None, "Wisconsin breast cancer, malignant/benign"),
}
