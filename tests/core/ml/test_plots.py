"""The plots return valid PNGs of a readable size."""

from __future__ import annotations

import struct

import pytest
import torch

from core.ml.calibration import calibration_report, penultimate_projection
from core.ml.plots import (
    metric_vs_alpha_png,
    penultimate_projection_png,
    reliability_diagram_png,
    reliability_overlay_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert isinstance(data, bytes)
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    return width, height


def _report(seed: int, sharp: float = 2.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(400, 5, generator=g) * sharp
    labels = torch.multinomial(torch.softmax(z / 1.5, dim=1), 1, generator=g).squeeze(1)
    return calibration_report(torch.softmax(z, dim=1), labels, logits=z, alpha=0.1)


def _assert_sane(data: bytes) -> None:
    w, h = _png_size(data)
    assert 400 <= w <= 3000 and 300 <= h <= 3000
    assert len(data) > 5_000


def test_reliability_diagram_png():
    _assert_sane(reliability_diagram_png(_report(0), title="digits / MLP, α = 0.1"))


def test_reliability_diagram_rejects_missing_bins():
    with pytest.raises(ValueError, match="reliability"):
        reliability_diagram_png({"ece": 0.1})


def test_penultimate_projection_png():
    g = torch.Generator().manual_seed(1)
    templates = torch.randn(3, 16, generator=g) * 3
    labels = torch.randint(0, 3, (300,), generator=g)
    feats = templates[labels] + torch.randn(300, 16, generator=g)
    _, coords = penultimate_projection(feats, templates)
    _assert_sane(penultimate_projection_png(coords, labels, ["cat", "dog", "ship"], title="test"))
    with pytest.raises(ValueError, match="class_names"):
        penultimate_projection_png(coords, labels, ["cat", "dog"])


def test_reliability_overlay_png():
    reports = {f"α = {a}": _report(i, sharp=2.0 + i) for i, a in enumerate((0.0, 0.1, 0.2))}
    _assert_sane(reliability_overlay_png(reports, title="per α"))
    with pytest.raises(ValueError, match="at least one"):
        reliability_overlay_png({})


def test_metric_vs_alpha_png():
    rows = [
        {
            "alpha": a,
            "accuracy_mean": 0.9 + a / 10,
            "accuracy_std": 0.01,
            "ece_mean": 0.05 - a / 10,
            "ece_std": 0.005,
            "nll_mean": 0.3 + a,
            "nll_std": None,
        }
        for a in (0.2, 0.0, 0.1, 0.3)
    ]
    _assert_sane(metric_vs_alpha_png(rows))
    _assert_sane(metric_vs_alpha_png(rows, metrics=("ece",)))
    with pytest.raises(ValueError, match="at least one row"):
        metric_vs_alpha_png([])


def test_figure_title_from_a_resolved_spec():
    from core.ml.figures import figure_title

    spec = {"dataset": {"source": "builtin", "name": "digits"}, "model": {"arch": "cnn"},
            "loss": {"alpha": 0.05}}
    assert figure_title(spec) == "digits cnn alpha=0.05"
    assert figure_title({"dataset": {"source": "upload", "id": "ds_1"}}) == "upload mlp alpha=0.1"
