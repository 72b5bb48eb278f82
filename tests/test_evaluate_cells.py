"""Which cells an evaluation trains: a study's best trials, genotype files, presets."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.analysis.pareto import write_pareto_json
from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError
from cnas_hpc.config.evaluate import EvalConfig
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.evaluate.cells import from_file, resolve_cells, study_costs
from cnas_hpc.space.genotype import DARTS_V1, DARTS_V2, PC_DARTS, genotype_to_dict, genotype_to_json
from cnas_hpc.study.pareto import pareto_view
from cnas_hpc.study.storage import make_storage
from tests.mo_studies import SCORE_PARAMS, Cell, make_study


def _study(tmp_path: Path, direction: Literal["minimize", "maximize"] = "minimize") -> StudyConfig:
    cfg = StudyConfig(storage=f"sqlite:///{tmp_path / 'cells.db'}")
    storage = make_storage(cfg, create_tables=True)
    study = optuna.create_study(storage=storage, study_name="s", direction=direction)
    for value, genotype in ((2.0, DARTS_V1), (1.0, DARTS_V2), (3.0, PC_DARTS)):
        trial = study.ask()
        trial.set_user_attr(attrs.GENOTYPE, genotype_to_json(genotype))
        study.tell(trial, value)
    study.tell(study.ask(), state=TrialState.FAIL)
    storage.engine.dispose()
    return cfg


def test_the_best_trials_come_first_then_files_then_presets(tmp_path: Path) -> None:
    cfg = _study(tmp_path)
    file = tmp_path / "mine.json"
    file.write_text(json.dumps(genotype_to_dict(PC_DARTS)))
    cells = resolve_cells(
        EvalConfig(from_study="s", top_k=2, genotypes=(str(file),), presets=("DARTS_V2",)), cfg
    )
    assert [c.cell_key for c in cells] == ["s:trial-1", "s:trial-0", "mine.json", "DARTS_V2"]
    assert (cells[0].study_name, cells[0].trial_number) == ("s", 1)
    assert cells[0].genotype_json == genotype_to_json(DARTS_V2)


def test_a_maximised_study_ranks_the_other_way(tmp_path: Path) -> None:
    cfg = _study(tmp_path, "maximize")
    (best,) = resolve_cells(EvalConfig(from_study="s", top_k=1), cfg)
    assert best.trial_number == 2


def test_a_search_s_best_genotype_file_gives_its_top_list(tmp_path: Path) -> None:
    path = tmp_path / "best_genotype.json"
    top = [
        {"trial": n, "value": 1.0, "genotype": genotype_to_dict(g)}
        for n, g in ((4, DARTS_V1), (9, PC_DARTS))
    ]
    path.write_text(
        json.dumps({"study": "x", "trial": 4, "genotype": top[0]["genotype"], "top": top})
    )
    assert [(c.study_name, c.trial_number) for c in from_file(str(path))] == [("x", 4), ("x", 9)]


def test_bad_sources_are_refused_with_one_line(tmp_path: Path) -> None:
    cfg = _study(tmp_path)
    with pytest.raises(StudyError, match="study 'nope' does not exist"):
        resolve_cells(EvalConfig(from_study="nope"), cfg)
    empty = StudyConfig(storage=f"sqlite:///{tmp_path / 'empty.db'}")
    optuna.create_study(storage=make_storage(empty, create_tables=True), study_name="e")
    with pytest.raises(StudyError, match="'e' has no COMPLETE trial"):
        resolve_cells(EvalConfig(from_study="e"), empty)
    broken = tmp_path / "broken.json"
    broken.write_text('{"normal": [["sep_conv_3x3", 0]]}')
    with pytest.raises(ValueError, match=r"broken\.json does not parse"):
        resolve_cells(EvalConfig(genotypes=(str(broken),)), cfg)
    with pytest.raises(ValueError, match="unknown preset 'DARTS_V9'"):
        resolve_cells(EvalConfig(presets=("DARTS_V9",)), cfg)
    with pytest.raises(FileNotFoundError, match="genotype file"):
        resolve_cells(EvalConfig(genotypes=("/no/such.json",)), cfg)


def _cost_aware(tmp_path: Path) -> StudyConfig:
    """A constrained score-vs-params study (front: trials 0, 1, 3) and one without costs."""
    cfg = StudyConfig(storage=f"sqlite:///{tmp_path / 'front.db'}")
    storage = make_storage(cfg, create_tables=True)
    make_study(storage, "mo", ("val_contrastive_loss", "params"), ("minimize", "minimize"),
               SCORE_PARAMS)  # fmt: skip
    make_study(storage, "plain", ("val_contrastive_loss",), ("minimize",),
               [Cell((1.0,)), Cell((2.0,))])  # fmt: skip
    untrained = [Cell(None, params=3_000_000, constraints=(1.0,))]
    make_study(storage, "none-feasible", ("val_contrastive_loss", "params"),
               ("minimize", "minimize"), untrained)  # fmt: skip
    storage.engine.dispose()
    return cfg


def test_cells_are_spread_along_the_front_cheapest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cost_aware(tmp_path)
    two = resolve_cells(EvalConfig(from_study="mo", from_front=2, top_k=5), cfg)
    assert [c.cell_key for c in two] == ["mo:trial-0", "mo:trial-3"]  # both ends; top_k unused
    assert [c.trial_number for c in resolve_cells(EvalConfig(from_study="mo", from_front=3),
                                                  cfg)] == [0, 1, 3]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        every = resolve_cells(EvalConfig(from_study="mo", from_front=7), cfg)
    assert [c.trial_number for c in every] == [0, 1, 3]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "eval.from_front=7: the front of study 'mo' has 3 cell(s); evaluating all of them"
    )
    # The best trials of a multi-objective study: by its score, the infeasible trial left out.
    best = resolve_cells(EvalConfig(from_study="mo", top_k=2), cfg)
    assert [c.trial_number for c in best] == [3, 4]


def test_a_study_without_a_front_is_refused_with_one_line(tmp_path: Path) -> None:
    cfg = _cost_aware(tmp_path)
    with pytest.raises(StudyError, match="'plain' has one objective and records no cost"):
        resolve_cells(EvalConfig(from_study="plain", from_front=2), cfg)
    with pytest.raises(StudyError, match="'none-feasible' has no feasible COMPLETE trial"):
        resolve_cells(EvalConfig(from_study="none-feasible", from_front=2), cfg)
    with pytest.raises(StudyError, match="study 'nope' does not exist"):
        resolve_cells(EvalConfig(from_study="nope", from_front=2), cfg)


def test_a_report_s_pareto_json_gives_its_front_and_the_search_s_costs_are_read(
    tmp_path: Path,
) -> None:
    cfg = _cost_aware(tmp_path)
    storage = make_storage(cfg, create_tables=False)
    view = pareto_view(optuna.load_study(study_name="mo", storage=storage))
    storage.engine.dispose()
    assert view is not None
    path = write_pareto_json(view, tmp_path / "pareto.json")
    cells = from_file(str(path))
    assert [(c.study_name, c.trial_number) for c in cells] == [("mo", 0), ("mo", 1), ("mo", 3)]
    costs = study_costs(cfg, {"mo", "plain", "nope"})
    assert costs[("mo", 0)] == {"params": 2e6, "macs": 3e8, "device": "cpu",
                                "network": "darts_cifar 20x36"}  # fmt: skip
    assert len(costs) == 8 and not any(name == "plain" for name, _ in costs)
