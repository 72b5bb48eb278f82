"""Which cells an evaluation trains: the best trials of a study, genotype files, presets.

Resolved once, on the submitting side, into the planned rows of the ``evaluations`` table
(:func:`cnas_hpc.evaluate.store.plan`); array tasks read their cell from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config.evaluate import EvalConfig
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.evaluate.store import PlannedCell
from cnas_hpc.space.encoding import compact_hash
from cnas_hpc.space.genotype import (
    PRESETS,
    Genotype,
    genotype_from_dict,
    genotype_from_json,
    genotype_to_json,
    validate_genotype,
)
from cnas_hpc.study.storage import describe_db_error, make_storage


def _planned(key: str, source: str, genotype: Genotype, **extra: Any) -> PlannedCell:
    validate_genotype(genotype)
    return PlannedCell(
        cell_key=key,
        source=source,
        genotype_json=genotype_to_json(genotype),
        genotype_hash=compact_hash(genotype),
        **extra,
    )


def best_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE trials that carry a genotype, best first (ties: lower number)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and attrs.GENOTYPE in t.user_attrs
    ]
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    done.sort(key=lambda t: (sign * float(t.value or 0.0), t.number))
    return done[:k]


def from_study(cfg: StudyConfig, name: str, top_k: int) -> list[PlannedCell]:
    """The ``top_k`` best trials of study ``name`` in ``cfg.storage``.

    Raises:
        StudyError: unreachable database, unknown study, or a study without COMPLETE trials.
    """
    url = cfg.storage
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).is_file():
        raise StudyError(f"study {name!r} not found: {url.split('///', 1)[-1]} does not exist")
    storage = make_storage(cfg, create_tables=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = best_trials(study, top_k)
    except KeyError:
        raise StudyError(f"study {name!r} does not exist in {mask_url(url)}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StudyError(describe_db_error(exc, url)) from None
    finally:
        storage.engine.dispose()
    if not trials:
        raise StudyError(f"study {name!r} has no COMPLETE trial with a genotype to evaluate")
    return [
        _planned(
            f"{name}:trial-{t.number}",
            "study",
            genotype_from_json(str(t.user_attrs[attrs.GENOTYPE])),
            study_name=name,
            trial_number=t.number,
        )
        for t in trials
    ]


def from_file(path_text: str) -> list[PlannedCell]:
    """The genotypes of a JSON file: one genotype, or a search's ``best_genotype(s).json``.

    A search's file (``{"study": ..., "top": [{"trial": n, "genotype": {...}}, ...]}``) gives
    every genotype of its ``top`` list, tied to its study and trial.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not JSON or holds no valid genotype (one line naming it).
    """
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"genotype file {path} not found (eval.genotypes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "top" in data:
            study = data.get("study")
            return [
                _planned(
                    f"{path.name}:trial-{entry['trial']}",
                    "file",
                    genotype_from_dict(entry["genotype"]),
                    study_name=str(study) if study is not None else None,
                    trial_number=int(entry["trial"]),
                )
                for entry in data["top"]
            ]
        return [_planned(path.name, "file", genotype_from_dict(data))]
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"genotype file {path} does not parse: {message}") from None


def from_preset(name: str) -> PlannedCell:
    """A published genotype by name.

    Raises:
        ValueError: unknown name (the line lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (eval.presets; known: {', '.join(PRESETS)})")
    return _planned(name, "preset", PRESETS[name])


def resolve_cells(cfg: EvalConfig, study: StudyConfig) -> list[PlannedCell]:
    """Every cell ``cfg`` names, in order: study trials, files, presets (duplicates kept once).

    Raises:
        StudyError, FileNotFoundError, ValueError: see the functions above.
    """
    cells: list[PlannedCell] = []
    if cfg.from_study is not None:
        cells += from_study(study, cfg.from_study, cfg.top_k)
    for path in cfg.genotypes:
        cells += from_file(path)
    cells += [from_preset(name) for name in cfg.presets]
    unique: dict[str, PlannedCell] = {}
    for cell in cells:
        unique.setdefault(cell.cell_key, cell)
    return list(unique.values())
