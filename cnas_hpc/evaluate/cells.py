"""Which cells an evaluation trains: the best trials of a study or cells spread along its
Pareto front, genotype files (a search's ``best_genotypes.json`` or ``pareto.json``), presets.

Resolved once, on the submitting side, into the planned rows of the ``evaluations`` table
(:func:`cnas_hpc.evaluate.store.plan`); array tasks read their cell from there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

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
from cnas_hpc.study.pareto import pareto_view, primary_ranking, spread_along, trial_costs
from cnas_hpc.study.storage import describe_db_error, make_storage

log = logging.getLogger(__name__)


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
    """The ``k`` best COMPLETE feasible trials that carry a genotype, best first (ties: lower
    number); a multi-objective study's by its primary objective (the score)."""
    return primary_ranking(study)[:k]


def front_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """``k`` trials spread along the study's Pareto front (the rule of ``eval.from_front``:
    :func:`cnas_hpc.study.pareto.spread_along`), cheapest first.

    ``k`` above the front's size gives the whole front, with a one-line warning.

    Raises:
        StudyError: the study has no front (one objective and no recorded cost), or no
            feasible COMPLETE trial on it yet.
    """
    view = pareto_view(study)
    if view is None:
        raise StudyError(
            f"study {study.study_name!r} has one objective and records no cost: it has no "
            "Pareto front (use eval.top_k)"
        )
    if not view.front:
        raise StudyError(
            f"study {study.study_name!r} has no feasible COMPLETE trial: its Pareto front is empty"
        )
    if k > len(view.front):
        log.warning(
            "eval.from_front=%d: the front of study %r has %d cell(s); evaluating all of them",
            k,
            study.study_name,
            len(view.front),
        )
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    return [by_number[p.number] for p in spread_along(view, k)]


def _study_trials(
    cfg: StudyConfig, name: str, pick: Callable[[optuna.Study], list[FrozenTrial]]
) -> list[FrozenTrial]:
    """``pick`` applied to study ``name`` in ``cfg.storage``.

    Raises:
        StudyError: unreachable database, unknown study, or what ``pick`` raises.
    """
    url = cfg.storage
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).is_file():
        raise StudyError(f"study {name!r} not found: {url.split('///', 1)[-1]} does not exist")
    storage = make_storage(cfg, create_tables=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return pick(study)
    except KeyError:
        raise StudyError(f"study {name!r} does not exist in {mask_url(url)}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StudyError(describe_db_error(exc, url)) from None
    finally:
        storage.engine.dispose()


def _study_cells(name: str, trials: list[FrozenTrial]) -> list[PlannedCell]:
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


def from_study(cfg: StudyConfig, name: str, top_k: int) -> list[PlannedCell]:
    """The ``top_k`` best trials of study ``name`` in ``cfg.storage``.

    Raises:
        StudyError: unreachable database, unknown study, or a study without COMPLETE trials.
    """
    trials = _study_trials(cfg, name, lambda study: best_trials(study, top_k))
    if not trials:
        raise StudyError(f"study {name!r} has no COMPLETE trial with a genotype to evaluate")
    return _study_cells(name, trials)


def from_front(cfg: StudyConfig, name: str, k: int) -> list[PlannedCell]:
    """``k`` cells spread along the Pareto front of study ``name`` (see :func:`front_trials`).

    Raises:
        StudyError: unreachable database, unknown study, or a study without a front.
    """
    return _study_cells(name, _study_trials(cfg, name, lambda study: front_trials(study, k)))


def study_costs(cfg: StudyConfig, names: set[str]) -> dict[tuple[str, int], dict[str, object]]:
    """The costs the studies ``names`` recorded on their trials, by ``(study, trial number)``
    (:func:`cnas_hpc.study.pareto.trial_costs`).

    Studies that do not exist, or a database that cannot be read, give nothing: the
    evaluation's tables are then shown without the search's costs.
    """
    out: dict[tuple[str, int], dict[str, object]] = {}
    if not names:
        return out
    try:
        storage = make_storage(cfg, create_tables=False)
    except StudyError:
        return out
    try:
        for name in sorted(names):
            try:
                out.update(trial_costs(optuna.load_study(study_name=name, storage=storage)))
            except KeyError:
                continue
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("cannot read the search's costs: %s", str(exc).splitlines()[0])
    finally:
        storage.engine.dispose()
    return out


def from_file(path_text: str) -> list[PlannedCell]:
    """The genotypes of a JSON file: one genotype, a search's ``best_genotype(s).json`` or a
    report's ``pareto.json``.

    A search's file (``{"study": ..., "top": [{"trial": n, "genotype": {...}}, ...]}``) gives
    every genotype of its ``top`` list, tied to its study and trial; a ``pareto.json`` (the
    same entries under ``front``) every cell of its front.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not JSON or holds no valid genotype (one line naming it).
    """
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"genotype file {path} not found (eval.genotypes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        listed = ("top", "front")
        if isinstance(data, dict) and any(key in data for key in listed):
            study = data.get("study")
            entries = data["top"] if "top" in data else data["front"]
            return [
                _planned(
                    f"{path.name}:trial-{entry['trial']}",
                    "file",
                    genotype_from_dict(entry["genotype"]),
                    study_name=str(study) if study is not None else None,
                    trial_number=int(entry["trial"]),
                )
                for entry in entries
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
    """Every cell ``cfg`` names, in order: study trials (its best, or spread along its front
    with ``from_front``), files, presets (duplicates kept once).

    Raises:
        StudyError, FileNotFoundError, ValueError: see the functions above.
    """
    cells: list[PlannedCell] = []
    if cfg.from_study is not None and cfg.from_front is not None:
        cells += from_front(study, cfg.from_study, cfg.from_front)
    elif cfg.from_study is not None:
        cells += from_study(study, cfg.from_study, cfg.top_k)
    for path in cfg.genotypes:
        cells += from_file(path)
    cells += [from_preset(name) for name in cfg.presets]
    unique: dict[str, PlannedCell] = {}
    for cell in cells:
        unique.setdefault(cell.cell_key, cell)
    return list(unique.values())
