"""Learning curves and shift curves of the sweep report on hand-made trials (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest

from core.services.sweep_figures import figure_drawers
from core.services.sweep_report import Trial, build_report

PNG = b"\x89PNG\r\n\x1a\n"


def result(n_train: int, acc: float, ece: float, nll: float,
           shift: dict[str, Any] | None = None) -> dict[str, Any]:
    bins = [{"lo": 0.5, "hi": 1.0, "count": 100, "confidence": acc + ece, "accuracy": acc}]
    return {"dataset": {"n_train": n_train},
            "test": {"accuracy": acc, "ece": ece, "nll": nll, "reliability": bins},
            "history": [{"epoch": 1, "val_nll": nll}], "best_epoch": 1, "shift": shift}


def trial(arch: str, fraction: float, alpha: float, seed: int, res: dict[str, Any] | None,
          status: str = "succeeded") -> Trial:
    ctx = {"model.arch": arch, "split.train_fraction": fraction}
    return Trial(f"j-{arch}-{fraction}-{alpha}-{seed}", status, alpha, seed, ctx, res)


# (arch, fraction) -> per seed (n_train, acc, ece, nll)
GRID = {
    ("cnn", 0.1): [(100, 0.80, 0.05, 0.6), (100, 0.84, 0.07, 0.5)],
    ("cnn", 1.0): [(1000, 0.95, 0.02, 0.2), (1000, 0.97, 0.02, 0.1)],
    ("mlp", 0.1): [(100, 0.60, 0.15, 1.1), (100, 0.64, 0.11, 0.9)],
    ("mlp", 1.0): [(1000, 0.90, 0.04, 0.3), (1000, 0.92, 0.06, 0.4)],
}


def trials() -> list[Trial]:
    out = [trial(a, f, 0.1, s, result(*row)) for (a, f), rows in GRID.items()
           for s, row in enumerate(rows)]
    out.append(trial("mlp", 1.0, 0.1, 2, None, status="failed"))  # ignored in the means
    return out


def test_learning_curves_by_hand() -> None:
    block = build_report(trials(), objective="val_nll", target_accuracy=0.9)["learning_curves"]
    assert block["x"] == "n_train" and block["target_accuracy"] == 0.9
    curves = {c["context"]["model.arch"]: c for c in block["curves"]}
    assert set(curves) == {"cnn", "mlp"} and curves["cnn"]["context"] == {"model.arch": "cnn"}
    cnn = curves["cnn"]["points"]
    assert [p["n_train"] for p in cnn] == [100, 1000]
    assert cnn[0]["accuracy"]["mean"] == pytest.approx(0.82)
    assert cnn[0]["accuracy"]["std"] == pytest.approx(0.0282842712)  # ddof=1 of 0.80, 0.84
    assert cnn[1]["nll"]["mean"] == pytest.approx(0.15) and cnn[1]["ece"]["n"] == 2
    assert curves["mlp"]["points"][1]["accuracy"]["n"] == 2  # the failed trial is left out
    smallest = {s["context"]["model.arch"]: s for s in block["smallest_size"]}
    assert smallest["cnn"]["n_train"] == 1000 and smallest["cnn"]["train_fraction"] == 1.0
    assert smallest["mlp"]["n_train"] == 1000  # 0.91 >= 0.9
    block_hi = build_report(trials(), objective="val_nll", target_accuracy=0.95)["learning_curves"]
    assert {s["context"]["model.arch"]: s["n_train"] for s in block_hi["smallest_size"]} == {
        "cnn": 1000, "mlp": None}
    gaps = {g["size"]: g for g in block["arch_gaps"]}
    assert gaps["smallest"]["train_fraction"] == 0.1 and gaps["largest"]["train_fraction"] == 1.0
    assert gaps["smallest"]["most_accurate"] == "cnn"
    assert gaps["smallest"]["accuracy_gap"] == pytest.approx(0.82 - 0.62)
    assert gaps["smallest"]["ece_gap"] == pytest.approx(0.13 - 0.06)
    assert gaps["largest"]["accuracy_gap"] == pytest.approx(0.96 - 0.91)
    assert gaps["largest"]["best_calibrated"] == "cnn"


def test_no_fraction_axis_means_no_learning_curves() -> None:
    plain = [Trial("a", "succeeded", 0.0, 0, {"model.arch": "mlp"}, result(10, 0.9, 0.1, 0.3))]
    report = build_report(plain, objective="val_nll")
    assert report["learning_curves"] is None and report["shift"] is None


def shift_doc(ece0: float, eces: list[float], scale: float) -> dict[str, Any]:
    def m(ece: float) -> dict[str, float]:
        return {"accuracy": 0.5, "nll": 1.0, "ece": ece, "mean_confidence": 0.6}

    return {"clean": {"before": m(ece0), "after": m(ece0 * scale)},
            "perturbations": [{"name": "translate", "intensities": [
                {"intensity": i + 1, "applied": {}, "before": m(e), "after": m(e * scale)}
                for i, e in enumerate(eces)]}]}


def test_shift_curves_by_hand_and_the_plots() -> None:
    ts = [trial("cnn", 1.0, 0.0, 0, result(1000, 0.9, 0.1, 0.3, shift_doc(0.02, [0.1, 0.3], 0.5))),
          trial("cnn", 1.0, 0.0, 1, result(1000, 0.9, 0.1, 0.3, shift_doc(0.04, [0.2, 0.5], 0.5))),
          trial("cnn", 1.0, 0.1, 0, result(1000, 0.9, 0.1, 0.3, shift_doc(0.05, [0.1, 0.2], 1.0)))]
    report = build_report(ts, objective="val_nll")
    curves = {c["alpha"]: c for c in report["shift"]}
    assert set(curves) == {0.0, 0.1} and curves[0.0]["shift"] == "translate"
    pts = curves[0.0]["points"]
    assert [p["intensity"] for p in pts] == [0, 1, 2]
    assert pts[0]["before"]["ece"]["mean"] == pytest.approx(0.03)
    assert pts[2]["before"]["ece"]["mean"] == pytest.approx(0.4)
    assert pts[2]["after"]["ece"]["mean"] == pytest.approx(0.2)
    assert curves[0.1]["points"][1]["before"]["ece"]["std"] is None  # one seed
    images = {name: draw() for name, draw in figure_drawers(report).items()
              if name.startswith(("learning_curves", "shift_ece"))}
    assert set(images) == {"learning_curves.png", "shift_ece_translate.png"}
    assert all(png.startswith(PNG) and len(png) > 5000 for png in images.values())
