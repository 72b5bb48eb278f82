"""Which cells an evaluation trains: a study's best trials, genotype files, presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError
from cnas_hpc.config.evaluate import EvalConfig
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.evaluate.cells import from_file, resolve_cells
from cnas_hpc.space.genotype import DARTS_V1, DARTS_V2, PC_DARTS, genotype_to_dict, genotype_to_json
from cnas_hpc.study.storage import make_storage


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
