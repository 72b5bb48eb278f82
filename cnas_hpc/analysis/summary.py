"""The end of a search: a table of the best trials and the best genotype as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from tabulate import tabulate

from cnas_hpc.common import attrs as A
from cnas_hpc.space.genotype import Genotype, genotype_from_json, genotype_to_dict
from cnas_hpc.study.pareto import objectives_of, primary_of, primary_ranking


@dataclass(frozen=True)
class RankedTrial:
    """One COMPLETE trial, best first."""

    rank: int
    number: int
    value: float
    n_params: int | None
    macs: int | None
    wall_s: float | None
    worker: str
    genotype: Genotype


def best_trials(study: optuna.Study, k: int = 5) -> list[RankedTrial]:
    """The ``k`` best COMPLETE feasible trials of ``study`` that carry a genotype, best first.

    Ranked by the study's objective; a multi-objective study by its primary objective (the
    first that is not a cost: :func:`cnas_hpc.study.pareto.primary_ranking`), ``value``
    being that objective's value. Trials that break the study's constraints are left out.
    """
    objectives = objectives_of(study)
    index = objectives.index(primary_of(objectives))
    return [
        _ranked(i + 1, t, float(t.values[index])) for i, t in enumerate(primary_ranking(study)[:k])
    ]


def _ranked(rank: int, trial: FrozenTrial, value: float) -> RankedTrial:
    attrs = trial.user_attrs
    return RankedTrial(
        rank=rank,
        number=trial.number,
        value=value,
        n_params=attrs.get(A.N_PARAMS),
        macs=attrs.get(A.MACS),
        wall_s=attrs.get(A.WALL_S),
        worker=str(attrs.get(A.WORKER, "?")),
        genotype=genotype_from_json(attrs[A.GENOTYPE]),
    )


def format_table(ranked: list[RankedTrial], objective: str) -> str:
    """A plain-text table of ranked trials (one line each)."""
    rows = [
        [
            r.rank,
            r.number,
            f"{r.value:.5f}",
            f"{r.n_params:,}" if r.n_params is not None else "-",
            f"{r.macs / 1e6:.1f}" if r.macs is not None else "-",
            f"{r.wall_s:.1f}" if r.wall_s is not None else "-",
            r.worker,
        ]
        for r in ranked
    ]
    headers = ["rank", "trial", objective, "params", "MMACs", "time s", "worker"]
    return tabulate(rows, headers, tablefmt="simple", disable_numparse=True, stralign="right")


def write_best_genotypes(ranked: list[RankedTrial], path: Path, *, study_name: str) -> None:
    """Write the best genotype (and the runners-up) as JSON for the evaluation phase.

    Format: ``{"study": ..., "trial": n, "value": v, "genotype": {...}, "top": [{...}, ...]}``;
    ``genotype`` loads with :func:`cnas_hpc.space.genotype.genotype_from_dict`.
    """
    if not ranked:
        raise ValueError(f"study {study_name!r} has no COMPLETE trial with a genotype yet")
    best = ranked[0]
    payload = {
        "study": study_name,
        "trial": best.number,
        "value": best.value,
        "genotype": genotype_to_dict(best.genotype),
        "top": [
            {"trial": r.number, "value": r.value, "genotype": genotype_to_dict(r.genotype)}
            for r in ranked
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
