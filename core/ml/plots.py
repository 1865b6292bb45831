"""PNG figures for calibration results: reliability diagrams, projections, sweeps (Agg backend)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "metric_vs_alpha_png",
    "penultimate_projection_png",
    "reliability_diagram_png",
    "reliability_overlay_png",
]

_DPI = 110
_STYLE: Any = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}


def _png(fig: Figure) -> bytes:
    """Render `fig` to PNG bytes and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _fmt(x: Any, spec: str = ".3f") -> str:
    """Format a possibly-missing number."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def _bins(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reliability bins of a report, or ValueError."""
    bins = report.get("reliability")
    if not isinstance(bins, list) or not bins:
        raise ValueError("Expected argument `report` to have a non-empty `reliability` list")
    return bins


def reliability_diagram_png(report: Mapping[str, Any], *, title: str = "") -> bytes:
    """Reliability diagram: per-bin accuracy bars, gap to the diagonal, confidence histogram."""
    bins = _bins(report)
    lo = np.array([b["lo"] for b in bins], dtype=float)
    hi = np.array([b["hi"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    width = hi - lo
    full = counts > 0
    with plt.rc_context(_STYLE):
        fig, (ax, axh) = plt.subplots(
            2, 1, figsize=(6.0, 7.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        ax.bar(
            lo[full],
            acc[full],
            width=width[full],
            align="edge",
            color="#4C72B0",
            edgecolor="black",
            linewidth=0.6,
            label="accuracy",
        )
        gap_lo = np.minimum(acc, conf)[full]
        gap_h = np.abs(acc - conf)[full]
        ax.bar(
            lo[full],
            gap_h,
            bottom=gap_lo,
            width=width[full],
            align="edge",
            color="#DD8452",
            alpha=0.45,
            edgecolor="#C44E52",
            hatch="//",
            linewidth=0.6,
            label="gap to diagonal",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1.2, label="perfect calibration")
        ax.plot(conf[full], acc[full], "o", color="black", markersize=3.5, label="bin mean")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        head = (
            f"ECE = {_fmt(report.get('ece'))}   accuracy = {_fmt(report.get('accuracy'))}"
            f"   n = {report.get('n', int(counts.sum()))}"
        )
        ax.set_title(f"{title}\n{head}" if title else head)
        share = counts / counts.sum() if counts.sum() > 0 else counts
        axh.bar(
            lo, share, width=width, align="edge", color="#55A868", edgecolor="black", linewidth=0.6
        )
        axh.set_xlabel("confidence (top-label probability)")
        axh.set_ylabel("share of samples")
        axh.grid(alpha=0.3)
        fig.tight_layout()
        return _png(fig)


def penultimate_projection_png(
    coords: Any, labels: Any, class_names: Sequence[str], *, title: str = ""
) -> bytes:
    """Scatter of 2-D projected penultimate activations, coloured by class, with a legend."""
    xy = np.asarray(coords.detach().cpu() if hasattr(coords, "detach") else coords, dtype=float)
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"Expected argument `coords` to have shape (N, 2), but got {xy.shape}")
    if lab.shape != (xy.shape[0],):
        raise ValueError(
            f"Expected argument `labels` to have shape ({xy.shape[0]},), but got {lab.shape}"
        )
    classes = np.unique(lab)
    if classes.size and (classes.min() < 0 or classes.max() >= len(class_names)):
        raise ValueError(
            f"Expected argument `labels` to index `class_names` ({len(class_names)} names), "
            f"but got values in [{classes.min()}, {classes.max()}]"
        )
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 6.0))
        cmap = plt.get_cmap("tab10")
        for i, c in enumerate(classes):
            m = lab == c
            ax.scatter(
                xy[m, 0],
                xy[m, 1],
                s=10,
                alpha=0.6,
                color=cmap(i % 10),
                label=f"{class_names[int(c)]} (n={int(m.sum())})",
                edgecolors="none",
            )
        ax.set_xlabel("plane coordinate 1")
        ax.set_ylabel("plane coordinate 2")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", markerscale=2)
        ax.set_title(title or "Penultimate-layer activations projected on the class-template plane")
        fig.tight_layout()
        return _png(fig)


def reliability_overlay_png(reports: Mapping[str, Mapping[str, Any]], *, title: str = "") -> bytes:
    """Reliability curves (bin confidence vs accuracy) of several runs overlaid, e.g. per alpha."""
    if not reports:
        raise ValueError("Expected argument `reports` to hold at least one report, but got none")
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 6.0))
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1.2, label="perfect calibration")
        cmap = plt.get_cmap("viridis")
        n = len(reports)
        for i, (name, rep) in enumerate(reports.items()):
            pts = [(b["confidence"], b["accuracy"]) for b in _bins(rep) if b["count"]]
            if not pts:
                continue
            x, y = zip(*pts, strict=True)
            ax.plot(
                x,
                y,
                "o-",
                color=cmap(i / max(n - 1, 1)),
                markersize=4,
                linewidth=1.5,
                label=f"{name} (ECE {_fmt(rep.get('ece'))})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        ax.set_title(title or "Reliability curves")
        fig.tight_layout()
        return _png(fig)


def metric_vs_alpha_png(
    rows: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] = ("accuracy", "ece", "nll")
) -> bytes:
    """One panel per metric: mean +- std against the smoothing alpha, with error bars."""
    if not rows:
        raise ValueError("Expected argument `rows` to hold at least one row, but got none")
    if not metrics:
        raise ValueError("Expected argument `metrics` to name at least one metric, but got none")
    ordered = sorted(rows, key=lambda r: float(r["alpha"]))
    alpha = np.array([float(r["alpha"]) for r in ordered])

    def col(key: str) -> np.ndarray:
        """One column of the rows as floats (None -> NaN)."""
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in ordered])

    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
        for ax, name in zip(axes[0], metrics, strict=True):
            mean = col(f"{name}_mean")
            std = np.nan_to_num(col(f"{name}_std"))
            ax.errorbar(alpha, mean, yerr=std, fmt="o-", capsize=4, linewidth=1.5, markersize=5)
            ax.set_xlabel("label smoothing α")
            ax.set_ylabel(name)
            ax.set_title(f"{name} vs α (mean ± std)")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        return _png(fig)
