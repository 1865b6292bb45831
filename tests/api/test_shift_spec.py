"""split.train_fraction and evaluation.shifts validation through the real app (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Job, Sweep

PROBLEM = "application/problem+json"
IRIS = {"source": "builtin", "name": "iris"}


def counts() -> tuple[int, int]:
    with session_scope() as s:
        jobs = int(s.scalar(select(func.count()).select_from(Job)) or 0)
        sweeps = int(s.scalar(select(func.count()).select_from(Sweep)) or 0)
    return jobs, sweeps


@pytest.mark.parametrize(
    ("spec", "field", "needle"),
    [
        ({"split": {"train_fraction": 0}}, "split.train_fraction", "greater than 0"),
        ({"split": {"train_fraction": 1.5}}, "split.train_fraction", "less than or equal to 1"),
        ({"evaluation": {"shifts": [{"name": "blur", "intensities": [0]}]}},
         "evaluation.shifts.0.intensities.0", "greater than or equal to 1"),
        ({"evaluation": {"shifts": [{"name": "blur", "intensities": [6]}]}},
         "evaluation.shifts.0.intensities.0", "less than or equal to 5"),
        ({"evaluation": {"shifts": [{"name": "blur", "intensities": [2, 2]}]}},
         "evaluation.shifts.0.intensities", "repeat"),
        ({"evaluation": {"shifts": [{"name": "zoom"}]}},
         "evaluation.shifts.0.name", "feature_dropout"),
        ({"dataset": IRIS, "evaluation": {"shifts": [{"name": "translate"}]}},
         "evaluation.shifts.0.name", "does not apply to tabular"),
        ({"evaluation": {"shifts": [{"name": "gaussian_noise"}, {"name": "feature_dropout"}]}},
         "evaluation.shifts.1.name", "does not apply to image"),
        ({"evaluation": {"shifts": [{"name": "blur"}, {"name": "blur"}]}},
         "evaluation.shifts", "twice"),
    ],
)
def test_bad_fraction_or_shift_is_422_naming_the_field(
    client: Any, spec: dict, field: str, needle: str
) -> None:
    resp = client.post("/v1/jobs", json=spec)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    fields = [e.get("field") for e in body.get("errors", [])]
    assert any(f == field for f in fields), body
    assert needle in resp.text
    assert counts() == (0, 0)


def test_fraction_axis_out_of_range_is_a_422_sweep(client: Any) -> None:
    body = {"alphas": [0.0], "axes": {"split.train_fraction": [0.5, 0.0]}}
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 422 and "train_fraction" in resp.text
    assert client.post("/v1/sweeps", json={**body, "target_accuracy": 0}).status_code == 422
    assert counts() == (0, 0)


def test_good_spec_resolves_fraction_and_shift_defaults(client: Any) -> None:
    resp = client.post("/v1/jobs", json={"split": {"train_fraction": 0.25},
                                         "evaluation": {"shifts": [{"name": "translate"}]}})
    assert resp.status_code == 202, resp.text
    spec = resp.json()["spec"]
    assert spec["split"]["train_fraction"] == 0.25
    assert spec["evaluation"] == {"seed": 0, "shifts": [
        {"name": "translate", "intensities": [1, 2, 3, 4, 5]}]}
    plain = client.post("/v1/jobs", json={}).json()["spec"]
    assert plain["split"]["train_fraction"] == 1.0 and plain["evaluation"]["shifts"] == []


def test_trials_differing_in_alpha_and_seed_stack_across_a_fraction_axis(client: Any) -> None:
    body = {"alphas": [0.0, 0.1], "seeds": [0, 1],
            "axes": {"split.train_fraction": [0.1, 1.0], "model.arch": ["mlp", "linear"]}}
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["groups"] == 4  # 2 archs × 2 fractions; α × seed stack within each
