"""The end of a search: a table of the best trials and the best genotype as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from tabulate import tabulate

from cnas_hpc.common import attrs as A
from cnas_hpc.space.genotype import Genotype, genotype_from_json, genotype_to_dict


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
    """The ``k`` best COMPLETE trials of ``study`` that carry a genotype, best first."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and A.GENOTYPE in t.user_attrs
    ]
    reverse = study.direction == StudyDirection.MAXIMIZE
    trials.sort(key=lambda t: (t.value if not reverse else -float(t.value or 0.0), t.number))
    return [_ranked(i + 1, t) for i, t in enumerate(trials[:k])]


def _ranked(rank: int, trial: FrozenTrial) -> RankedTrial:
    attrs = trial.user_attrs
    return RankedTrial(
        rank=rank,
        number=trial.number,
        value=float(trial.value if trial.value is not None else float("nan")),
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
