"""The penultimate-layer projection of Müller et al. 2019 (three class templates, one plane)."""

from __future__ import annotations

import torch
from torch import Tensor

from core.ml.metric_helpers import check_tensor


def penultimate_projection(features: Tensor, templates: Tensor) -> tuple[Tensor, Tensor]:
    """Project features (N, D) on the plane of 3 templates (3, D): basis (2, D), coords (N, 2)."""
    features = check_tensor(features, "features")
    templates = check_tensor(templates, "templates")
    if templates.ndim != 2 or templates.shape[0] != 3 or not templates.is_floating_point():
        raise ValueError(
            "Expected argument `templates` to be a floating point tensor of shape (3, D), but got "
            f"shape {tuple(templates.shape)}"
        )
    if (
        features.ndim != 2
        or features.shape[1] != templates.shape[1]
        or not features.is_floating_point()
    ):
        raise ValueError(
            "Expected argument `features` to be a floating point tensor of shape "
            f"(N, {templates.shape[1]}), but got shape {tuple(features.shape)}"
        )
    t = templates.double()
    u = t[1] - t[0]
    w = t[2] - t[0]
    nu = torch.linalg.vector_norm(u)
    scale = float(torch.linalg.vector_norm(t, dim=1).max()) or 1.0
    if float(nu) <= 1e-12 * scale:
        raise ValueError(
            "Expected argument `templates` to span a plane, but the first two coincide"
        )
    e1 = u / nu
    w = w - (w @ e1) * e1
    w = w - (w @ e1) * e1  # second Gram-Schmidt pass for numerical orthogonality
    nw = torch.linalg.vector_norm(w)
    if float(nw) <= 1e-12 * scale:
        raise ValueError(
            "Expected argument `templates` to span a plane, but the three are collinear"
        )
    basis = torch.stack([e1, w / nw])
    coords = (features.double() - t[0]) @ basis.T
    dtype = torch.promote_types(features.dtype, templates.dtype)
    return basis.to(dtype), coords.to(dtype)

