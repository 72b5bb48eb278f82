"""The Pareto front in the report: a plot per cost, the table, the front's cells, pareto.json.

The studies are built directly with Optuna as a cost-aware search leaves them
(``tests/mo_studies.py``); the report reads them through the same ``run_report`` a user runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import matplotlib.image
import optuna
import optuna_dashboard
import pytest

from cnas_hpc.analysis.pareto import format_front, plot_front, write_pareto_json, x_axes
from cnas_hpc.analysis.report import run_report
from cnas_hpc.config import Settings
from cnas_hpc.space.genotype import genotype_from_dict, genotype_from_json
from cnas_hpc.study.pareto import pareto_view
from tests.helpers import run_launch, tiny_settings
from tests.mo_studies import SCORE_PARAMS, Cell, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJ = ("val_contrastive_loss", "params")


def _settings(home: Path) -> Settings:
    return tiny_settings(home, "search.n_trials=8")


def _png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image[..., :3].std() > 0.03, path


def test_a_multi_objective_study_reports_its_front_everywhere_users_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path)
    make_study(settings.study.storage, settings.study.name, OBJ, ("minimize", "minimize"),
               SCORE_PARAMS)  # fmt: skip
    out = tmp_path / "report"
    assert run_report(settings, {"out_dir": str(out), "top_k": 3}) == 0
    printed = capsys.readouterr().out
    # The status names both objectives; best = by the score, the infeasible trial 6 left out.
    assert "objectives val_contrastive_loss (minimize), params (minimize)" in printed
    assert "best 3 trial(s)" in printed and "best genotype (trial 3;" in printed
    assert "Pareto front: 3 cell(s) of 6 feasible trained trial(s); 2 infeasible (1 never " \
        "trained)" in printed  # fmt: skip
    table = printed[printed.index("Pareto front:") :].splitlines()
    rule = next(i for i, line in enumerate(table) if line.strip().startswith("---"))
    assert table[rule - 1].split()[:4] == ["#", "trial", "val_contrastive_loss", "(min)"]
    rows = [line.split() for line in table[rule + 1 : rule + 4]]
    assert [row[1] for row in rows] == ["0", "1", "3"]  # trial numbers, cheapest first
    assert rows[0][2:4] == ["5", "2.000"] and rows[2][2:4] == ["3", "2.500"]
    # One plot per cost, the front's cells, all on the page.
    for name in ("pareto_params", "pareto_macs", "front_0000_normal", "front_0003_reduce",
                 "history", "best_vs_time", "importances", "best_normal"):  # fmt: skip
        _png(out / f"{name}.png")
    page = (out / "index.html").read_text()
    assert '<img src="pareto_params.png"' in page and "Pareto front: 3 cell(s)" in page
    assert (out / "status.txt").read_text().count("Pareto front:") == 1
    assert "limits (search.constraints): params <= 2.6e+06" in printed
    # pareto.json: every front cell with its genotype, values and costs.
    data = json.loads((out / "pareto.json").read_text())
    assert data["study"] == settings.study.name and data["objectives"] == list(OBJ)
    assert data["directions"] == {"val_contrastive_loss": "minimize", "params": "minimize",
                                  "macs": "minimize"}  # fmt: skip
    assert data["sort_by"] == "params" and [e["trial"] for e in data["front"]] == [0, 1, 3]
    # Mean ranks (score, params) of trained feasible trials 0-5: 3, 3, 4, 3, 4, 4; of the three
    # tied at 3 trial 3 has the best score.
    assert data["best_mean_rank"] == {"trial": 3, "mean_rank": 3.0, "cells": 6}
    assert "best mean rank over the objectives: trial 3 (mean rank 3.0 of 6 trained cells)" \
        in printed  # fmt: skip
    study = optuna.load_study(study_name=settings.study.name, storage=settings.study.storage)
    for entry in data["front"]:
        trial = study.trials[entry["trial"]]
        assert entry["values"] == dict(zip(OBJ, trial.values, strict=True))
        assert entry["costs"] == {"params": trial.values[1], "macs": SCORE_PARAMS[
            entry["trial"]].macs}  # fmt: skip
        assert entry["cost_device"] == "cpu" and entry["cost_network"] == "darts_cifar 20x36"
        assert genotype_from_dict(entry["genotype"]) == genotype_from_json(
            trial.user_attrs["cnas:genotype"]
        )


def test_a_single_objective_study_with_costs_gets_a_front_of_score_against_each_cost(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    cells = [Cell((c.values[0],), params=c.params, macs=c.macs, latency_ms=1.0 + i,
                  constraints=c.constraints) if c.values else c
             for i, c in enumerate(SCORE_PARAMS)]  # fmt: skip
    make_study(settings.study.storage, settings.study.name, (settings.search.objective,),
               ("minimize",), cells)  # fmt: skip
    out = tmp_path / "report"
    run_report(settings, {"out_dir": str(out)})
    text = (out / "status.txt").read_text()
    assert f"objective  {settings.search.objective} (minimize)" in text
    assert "front over val_contrastive_loss (min), params (min), macs (min), latency_ms (min)" \
        in text  # fmt: skip
    (header,) = [line for line in text.splitlines() if line.strip().startswith("#  ")]
    assert "params M (min)" in header and "latency_ms (min)" in header
    for cost in ("params", "macs", "latency_ms"):
        _png(out / f"pareto_{cost}.png")
    data = json.loads((out / "pareto.json").read_text())
    front = data["front"]
    assert data["best_mean_rank"] is None  # one objective: no pick
    assert [e["trial"] for e in front] == [0, 1, 3]
    assert front[0]["values"] == {"val_contrastive_loss": 5.0}
    assert front[0]["costs"] == {"params": 2e6, "macs": 3e8, "latency_ms": 1.0}


def test_a_single_objective_study_without_costs_reports_as_before(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_study(settings.study.storage, settings.study.name, (settings.search.objective,),
               ("minimize",), [Cell((2.0,)), Cell((1.0,))])  # fmt: skip
    out = tmp_path / "report"
    run_report(settings, {"out_dir": str(out)})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["status.txt", "index.html", "history.png", "best_vs_time.png", "importances.png",
         "best_normal.png", "best_reduce.png", "best_genotypes.json"]
    )  # fmt: skip
    assert "Pareto" not in (out / "status.txt").read_text()


def test_a_front_not_yet_there_is_said_and_the_plot_still_drawn(tmp_path: Path) -> None:
    study = make_study(None, "s", OBJ, ("minimize", "minimize"),
                       [Cell(None, params=3_000_000, constraints=(0.4e6,))])  # fmt: skip
    view = pareto_view(study)
    assert view is not None and x_axes(view) == ("params",)
    assert "(no feasible COMPLETE trial yet)" in format_front(view)
    _png(plot_front(view, "params", tmp_path / "p.png"))
    assert json.loads(write_pareto_json(view, tmp_path / "p.json").read_text())["front"] == []
    # Two scores and no cost: the plot is of one score against the other.
    two = make_study(None, "t", ("val_contrastive_loss", "knn_accuracy"),
                     ("minimize", "maximize"), [Cell((1.0, 0.5)), Cell((2.0, 0.7))])  # fmt: skip
    view = pareto_view(two)
    assert view is not None and x_axes(view) == ("knn_accuracy",)
    assert [p.number for p in view.front] == [0, 1]


def test_optuna_dashboard_serves_the_multi_objective_study(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    study = make_study(settings.study.storage, settings.study.name, OBJ,
                       ("minimize", "minimize"), SCORE_PARAMS)  # fmt: skip
    app = optuna_dashboard.wsgi(settings.study.storage)
    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = f"/api/studies/{study._study_id}"
    environ["QUERY_STRING"] = "after=0"
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    assert status == ["200 OK"], body[:300]
    served = json.loads(body)
    assert served["directions"] == ["minimize", "minimize"] and len(served["trials"]) == 8
    assert served["union_user_attrs"] and any(
        a["key"] == "cnas:cost_params" for a in served["union_user_attrs"]
    )


def test_the_report_command_draws_the_front(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    make_study(settings.study.storage, settings.study.name, OBJ, ("minimize", "minimize"),
               SCORE_PARAMS)  # fmt: skip
    result = run_launch("report.py", ["debug=tiny", "report.pictures=false"], home=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Pareto front: 3 cell(s)" in result.stdout
    assert (tmp_path / settings.study.name / "report" / "pareto.json").is_file()
