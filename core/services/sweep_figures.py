"""A sweep report's comparison plots, drawn from the stored report on first request.

Finalising a sweep stores only the report; its `plots` block lists the figures this module
can draw from it (`figure_names`, which imports no plotting library). The API draws one when
it is first asked for and keeps the bytes in a small per-process cache (a finished sweep's
report never changes). Sweeps finalised before this stored their PNGs as artifacts; those
are served as stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

from core.services.sweep_report import context_slug, plot_rows

__all__ = ["figure_drawers", "figure_names", "render_sweep_figure"]

Drawer = Callable[[], bytes]
_CACHE_SIZE = 64
_cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
_lock = threading.Lock()  # pyplot is not thread-safe, and request handlers run in threads


def _lazy(module: str, function: str, *args: Any, **kwargs: Any) -> Drawer:
    """A drawer calling core.ml.<module>.<function>: matplotlib is imported only to draw."""

    def draw() -> bytes:
        return bytes(getattr(import_module(f"core.ml.{module}"), function)(*args, **kwargs))

    return draw


def _alpha_drawers(report: Mapping[str, Any]) -> dict[str, Drawer]:
    """metrics_vs_alpha and reliability_overlay, per other-axes point when there are several."""
    by_context: dict[str, list[dict[str, Any]]] = {}
    for row in report["rows"]:
        if row["n_succeeded"]:
            by_context.setdefault(context_slug(row["context"]), []).append(row)
    out: dict[str, Drawer] = {}
    for slug, rows in sorted(by_context.items()):
        suffix = f"_{slug}" if slug else ""
        rows_of_plot = plot_rows(rows)
        out[f"metrics_vs_alpha{suffix}.png"] = _lazy("plots", "metric_vs_alpha_png", rows_of_plot)
        overlay = {
            f"α={r['alpha']:g}": {"reliability": r["reliability"], "ece": r["test"]["ece"]["mean"]}
            for r in sorted(rows, key=lambda r: r["alpha"])
        }
        title = f"Reliability curves per α{(' — ' + slug) if slug else ''}"
        out[f"reliability_overlay{suffix}.png"] = _lazy(
            "plots", "reliability_overlay_png", overlay, title=title
        )
    return out


def _curve_drawers(report: Mapping[str, Any]) -> dict[str, Drawer]:
    """learning_curves.png and one shift_ece_<perturbation>.png per perturbation, if present."""
    out: dict[str, Drawer] = {}
    block = report.get("learning_curves")
    if block and any(c["points"] for c in block["curves"]):
        out["learning_curves.png"] = _lazy("curve_plots", "learning_curves_png", block)
    by_shift: dict[str, list[Mapping[str, Any]]] = {}
    for curve in report.get("shift") or []:
        by_shift.setdefault(str(curve["shift"]), []).append(curve)
    for name, curves in sorted(by_shift.items()):
        out[f"shift_ece_{name}.png"] = _lazy(
            "curve_plots", "shift_ece_png", curves, title=f"ECE under {name} shift"
        )
    return out


def _method_drawers(report: Mapping[str, Any]) -> dict[str, Drawer]:
    """metrics_vs_<parameter>_<method>.png and reliability_overlay_<method>.png per method."""
    if "loss.method" not in (report.get("axes") or {}):
        return {}
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for r in report["rows"]:
        if r.get("n_succeeded") and r.get("method"):
            by_method.setdefault(str(r["method"]), []).append(r)
    out: dict[str, Drawer] = {}
    for method, members in sorted(by_method.items()):
        name = str(members[0]["parameter"]["name"])
        out[f"metrics_vs_{name}_{method}.png"] = _lazy(
            "method_plots", "parameter_png", method, name, members
        )
        overlay = {f"{name}={(r['parameter']['value'] or 0.0):g}":
                   {"reliability": r["reliability"], "ece": r["test"]["ece"]["mean"]}
                   for r in members}
        out[f"reliability_overlay_{method}.png"] = _lazy(
            "plots", "reliability_overlay_png", overlay, title=f"Reliability per {name}: {method}"
        )
    return out


def figure_drawers(report: Mapping[str, Any]) -> dict[str, Drawer]:
    """Every figure of a sweep report, as name → a function drawing its PNG."""
    if not (report.get("trials") or {}).get("succeeded"):
        return {}
    return {**_alpha_drawers(report), **_curve_drawers(report), **_method_drawers(report)}


def figure_names(report: Mapping[str, Any]) -> list[str]:
    """The names of the figures a sweep report can be drawn into (draws nothing)."""
    return list(figure_drawers(report))


def render_sweep_figure(name: str, report: Mapping[str, Any], *, key: str) -> bytes | None:
    """PNG bytes of figure `name` of a sweep report (None if it has none); cached by key."""
    drawer = figure_drawers(report).get(name)
    if drawer is None:
        return None
    with _lock:
        cached = _cache.get((key, name))
        if cached is None:
            cached = drawer()
            _cache[(key, name)] = cached
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end((key, name))
        return cached
