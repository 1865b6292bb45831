"""A job's figures, drawn on first request from its stored result document (no torch here).

Training no longer draws: the reliability diagram needs only the test report's bins and the
projection scatter only the projection points, both in the result document. The API draws a
figure when it is first asked for and keeps the bytes (a result never changes once stored);
`figure_names` says which figures a result has, for the result's artifact links.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

__all__ = ["FIGURES", "figure_names", "figure_title", "render_figure"]

FIGURES = ("reliability.png", "penultimate.png")
_CACHE_SIZE = 64
_cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
_lock = threading.Lock()  # pyplot is not thread-safe, and request handlers run in threads


def figure_names(result: Mapping[str, Any]) -> list[str]:
    """The figures a result document can be drawn into (penultimate.png needs a projection)."""
    names = []
    if (result.get("test") or {}).get("reliability"):
        names.append("reliability.png")
    if result.get("projection"):
        names.append("penultimate.png")
    return names


def figure_title(spec: Mapping[str, Any]) -> str:
    """'<dataset> <arch> alpha=<α>' from a resolved job spec."""
    ds = spec.get("dataset") or {}
    arch = (spec.get("model") or {}).get("arch", "mlp")
    alpha = float((spec.get("loss") or {}).get("alpha", 0.1))
    return f"{ds.get('name') or ds.get('source')} {arch} alpha={alpha:g}"


def _draw(name: str, result: Mapping[str, Any]) -> bytes:
    """Draw one figure of a result document (matplotlib imported on first use)."""
    import numpy as np

    from core.ml import plots

    title = figure_title(result.get("spec") or {})
    if name == "reliability.png":
        return plots.reliability_diagram_png(result["test"], title=f"reliability: {title}")
    proj = result["projection"]
    points = np.asarray(proj["points"], dtype=float).reshape(-1, 3)
    names = list(result["dataset"]["class_names"])
    return plots.penultimate_projection_png(points[:, :2], points[:, 2].astype(int), names,
                                            title=f"penultimate layer: {title}")


def render_figure(name: str, result: Mapping[str, Any], *, key: str) -> bytes | None:
    """PNG bytes of figure `name` of a result (None if it has no such figure); cached by key."""
    if name not in figure_names(result):
        return None
    with _lock:
        cached = _cache.get((key, name))
        if cached is None:
            cached = _draw(name, result)
            _cache[(key, name)] = cached
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end((key, name))
        return cached
