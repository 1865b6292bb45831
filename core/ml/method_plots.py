"""Sweep plots per training method: metrics against the method's parameter, reliability overlay."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["parameter_png"]

METRICS = ("accuracy", "ece", "smooth_ece", "nll")


def parameter_png(method: str, name: str, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Test metrics against the method's parameter, uncalibrated and after each post-hoc."""
    ordered = sorted(rows, key=lambda r: r["parameter"]["value"] or 0.0)
    x = np.array([r["parameter"]["value"] or 0.0 for r in ordered], dtype=float)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.0 * len(METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], METRICS, strict=True):
        stats = [r["test"].get(metric) or {} for r in ordered]
        mean = np.array([np.nan if s.get("mean") is None else s["mean"] for s in stats])
        std = np.array([0.0 if s.get("std") is None else s["std"] for s in stats])
        ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=4, label="uncalibrated")
        for m in sorted({m for r in ordered for m in r.get("posthoc", {})}):
            vals = [((r.get("posthoc", {}).get(m) or {}).get("test") or {}).get(metric) or {}
                    for r in ordered]
            ax.plot(x, [np.nan if v.get("mean") is None else v["mean"] for v in vals], "x--",
                    label=m)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.set_title(f"{method}: test {metric} vs {name}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
