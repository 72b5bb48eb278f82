"""The default search: two label-free objectives (the score and NASWOT), cells ranked by their
mean rank (issue 18: it ranked 600-epoch accuracy best, README "Does the proxy work?")."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from scipy import stats

from cnas_hpc.analysis.fidelity import FidelitySummary, Interval, RankingRow, format_summary
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config import settings_from_config
from cnas_hpc.study.pareto import primary_ranking, ranks_by_mean, tied_ranks
from tests.helpers import compose_config, run_search
from tests.mo_studies import Cell, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
LOSS_NASWOT = ("val_contrastive_loss", "naswot")


def objectives(*overrides: str) -> tuple[str, ...]:
    return settings_from_config(compose_config(overrides)).search.values


def test_the_default_search_has_the_score_and_naswot_as_objectives() -> None:
    assert objectives() == LOSS_NASWOT
    assert objectives("debug=tiny") == LOSS_NASWOT  # smoke runs keep the default's study
    # The paper's settings and an explicit empty list: the score alone.
    assert objectives("experiment=csnas_paper") == ("train_contrastive_loss",)
    assert objectives("search.objectives=[]") == ("val_contrastive_loss",)
    # `score` naming an objective the list names too counts once: a NASWOT-only search.
    assert objectives("search.objective=naswot") == ("naswot",)
    assert objectives("search.objective=synflow") == ("synflow", "naswot")
    # Written twice by the user is still a mistake.
    with pytest.raises(ConfigError, match="lists 'naswot' twice"):
        objectives("search.objectives=[naswot,naswot]")


def test_a_pruner_with_the_default_objectives_is_refused_saying_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"set search.objectives=\[\] \(the score alone\)"):
        objectives("search.pruner=median")
    assert objectives("search.pruner=median", "search.objectives=[]") == ("val_contrastive_loss",)


def test_tied_ranks_share_their_mean_rank() -> None:
    keys = [3.0, 1.0, 1.0, 2.0, 5.0]
    assert tied_ranks(keys) == pytest.approx(list(stats.rankdata(keys)))
    assert tied_ranks([]) == []


def test_a_label_free_study_ranks_its_trials_by_their_mean_rank() -> None:
    # (loss: lower is better, naswot: higher is better)
    values = [(5.50, 800.0), (5.52, 860.0), (5.49, 820.0), (5.51, 850.0), (5.53, 790.0)]
    study = make_study(None, "d", LOSS_NASWOT, ("minimize", "maximize"),
                       [Cell(v) for v in values])  # fmt: skip
    assert ranks_by_mean(study)
    loss_rank = stats.rankdata([v[0] for v in values])
    naswot_rank = stats.rankdata([-v[1] for v in values])
    mean = (loss_rank + naswot_rank) / 2
    # Ties of the mean rank go to the better score (the loss), then the lower trial number.
    expected = sorted(range(len(values)), key=lambda i: (mean[i], values[i][0], i))
    assert [t.number for t in primary_ranking(study)] == expected
    assert expected[0] == 2  # best loss and a middling NASWOT beat the best NASWOT alone
    # By the score alone the order would differ: the ranking really is the mean rank.
    assert expected != sorted(range(len(values)), key=lambda i: values[i][0])


def test_a_cost_aware_study_still_ranks_by_its_score() -> None:
    values = [(5.50, 3e6), (5.49, 4e6), (5.52, 1e6)]
    study = make_study(None, "c", ("val_contrastive_loss", "params"), ("minimize", "minimize"),
                       [Cell(v) for v in values])  # fmt: skip
    assert not ranks_by_mean(study)
    assert [t.number for t in primary_ranking(study)] == [1, 0, 2]


def test_the_fidelity_summary_names_the_search_s_ranking() -> None:
    row = RankingRow(
        name="val_contrastive_loss + naswot",
        kind="rank mean",
        labels=False,
        cost_s=9.7,
        device="CPU",
        tau=Interval(0.43, 0.26, 0.58),
        rho=Interval(0.58, 0.34, 0.75),
        top_k_overlap=0.2,
    )
    summary = FidelitySummary(
        objective="val_contrastive_loss", n_cells=50, n_measured=50, tau=None, rho=None,
        top_k=5, top_k_overlap=None, params_tau=None, by_objective={}, by_epoch=[],
        noise_std=None, score_spread=None, failures=[], rows=[], rankings=[row],
        search_ranking=row,
    )  # fmt: skip
    text = format_summary(summary, 0.95)
    assert "the search's ranking: val_contrastive_loss + naswot" in text
    assert "Kendall tau +0.430 [+0.260, +0.580]" in text


def test_a_default_search_writes_its_best_cells_in_mean_rank_order(tmp_path: Path) -> None:
    done = run_search(["debug=tiny", "search.poll_seconds=0.5", "search.n_trials=4"],
                      home=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Pareto front of study" in done.stdout
    assert "mean rank over val_contrastive_loss, naswot" in done.stdout
    db = f"sqlite:///{tmp_path}/cnas.db"
    (name,) = optuna.get_all_study_names(db)
    study = optuna.load_study(study_name=name, storage=db)
    assert len(study.directions) == 2
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 4
    loss = stats.rankdata([t.values[0] for t in trials])
    naswot = stats.rankdata([-t.values[1] for t in trials])
    mean = {t.number: (a + b) / 2 for t, a, b in zip(trials, loss, naswot, strict=True)}
    best = json.loads((tmp_path / name / "best_genotype.json").read_text())
    order = [entry["trial"] for entry in best["top"]]
    assert sorted(order) == sorted(mean)
    assert [mean[n] for n in order] == sorted(mean[n] for n in order)
    assert best["trial"] == order[0]
