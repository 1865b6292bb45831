"""PNG figures for issue 16: learning curves per architecture and α, ECE against shift intensity.

Both read the sweep report's `learning_curves` and `shift` blocks (core/services/curve_report.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402

from core.ml.plots import _STYLE, _png  # noqa: E402

__all__ = ["learning_curves_png", "shift_ece_png"]

_LABELS = {"accuracy": "test accuracy", "nll": "test NLL", "ece": "test ECE"}


def _label(context: Mapping[str, Any], alpha: float) -> str:
    parts = [f"{str(k).split('.')[-1]}={v}" for k, v in sorted(context.items())]
    return " ".join([*parts, f"α={alpha:g}"])


def _series(points: Sequence[Mapping[str, Any]], x: str, metric: str, method: str | None = None
            ) -> tuple[list[float], list[float], list[float]]:
    xs, ys, es = [], [], []
    for p in points:
        stats = (p[method] if method else p)[metric]
        if p.get(x) is None or stats["mean"] is None:
            continue
        xs.append(float(p[x]))
        ys.append(float(stats["mean"]))
        es.append(float(stats["std"] or 0.0))
    return xs, ys, es


def learning_curves_png(block: Mapping[str, Any], *, title: str = "Learning curves") -> bytes:
    """Accuracy, NLL and ECE against training-set size: a line per context and α, ±1 std."""
    metrics = list(block.get("metrics") or _LABELS)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 4.4))
        for ax, metric in zip(axes, metrics, strict=True):
            for curve in block["curves"]:
                xs, ys, es = _series(curve["points"], "n_train", metric)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3,
                                label=_label(curve["context"], curve["alpha"]))
            ax.set_xscale("log")
            ax.set_xlabel("training examples")
            ax.set_ylabel(_LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
        if metrics and "accuracy" in metrics and block.get("target_accuracy") is not None:
            axes[metrics.index("accuracy")].axhline(block["target_accuracy"], color="grey",
                                                    ls=":", label="target accuracy")
        axes[0].legend(loc="best")
        fig.suptitle(title)
        fig.tight_layout()
        return _png(fig)


def shift_ece_png(curves: Sequence[Mapping[str, Any]], *, title: str) -> bytes:
    """ECE against shift intensity: a line per context and α, solid before / dashed after T."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for n, curve in enumerate(curves):
            color = f"C{n % 10}"
            for method, style in (("before", "-"), ("after", "--")):
                xs, ys, es = _series(curve["points"], "intensity", "ece", method)
                if xs:
                    tag = "" if method == "before" else " (temp. scaled)"
                    ax.errorbar(xs, ys, yerr=es, color=color, ls=style, marker="o", ms=4,
                                capsize=3, label=_label(curve["context"], curve["alpha"]) + tag)
        ax.set_xlabel("shift intensity (0 = clean test split)")
        ax.set_ylabel("test ECE")
        ax.set_xticks(range(6))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(title)
        fig.tight_layout()
        return _png(fig)
