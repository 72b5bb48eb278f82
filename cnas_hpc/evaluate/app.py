"""The evaluation phase: train the planned cells from scratch (and/or probe them), record results.

Contract:
    * The cells were planned by the submitting side into the ``evaluations`` table
      (:func:`cnas_hpc.evaluate.store.plan`); this app only reads the plan. With ``eval.cell``
      set (one SLURM array task per cell) it evaluates that cell; without, every cell in turn.
    * All ranks of a task call :func:`run_evaluation`; global rank 0 alone opens the database
      and holds the observers (built by the caller's factory: the app knows trackers only
      through :class:`~cnas_hpc.evaluate.observer.EvalObserver`).
    * A COMPLETE cell is never trained again (a rerun of the same command skips it); any other
      cell resumes from its checkpoint. A failing cell is recorded FAIL and the others go on.
    * On a preemption or timeout signal (USR2), training stops at a step boundary on every rank,
      rank 0 checkpoints, and the job is handed to submitit's requeue; the requeued task resumes
      the same cell at its saved step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy
import torch

from cnas_hpc.common.errors import StudyError
from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config.evaluate import EvalSettings
from cnas_hpc.data.labeled import LabeledData, load_labeled
from cnas_hpc.distributed.collectives import broadcast_object
from cnas_hpc.distributed.env import (
    DistEnv,
    distributed_session,
    select_device,
    size_cpu_threads,
)
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.evaluate import store
from cnas_hpc.evaluate.observer import EvalObserver
from cnas_hpc.evaluate.runner import CellRunner

log = logging.getLogger(__name__)

#: Builds rank 0's observers (called once, on rank 0 only).
EvalObserverFactory = Callable[[], Sequence[EvalObserver]]


@dataclass
class EvalReport:
    """What one evaluation task did: cells by outcome (the same on every rank)."""

    completed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def run_evaluation(
    settings: EvalSettings,
    env: DistEnv | None = None,
    *,
    observers: EvalObserverFactory | None = None,
) -> EvalReport:
    """Evaluate the planned cells this task owns (see the module docstring).

    Raises:
        StudyError: the evaluation was never planned, or ``eval.cell`` is not one of its cells.
    """
    env = env or DistEnv.from_environment()
    device = select_device(env, settings.device)
    # Threads from the allocation: an evaluation task with a thread per core of a shared node
    # would oversubscribe it as much as search workers once did.
    size_cpu_threads(env)
    with distributed_session(env, device):
        engine = store.connect(settings.study) if env.is_main else None
        try:
            rows = broadcast_object(_my_rows(engine, settings) if engine is not None else [])
            group = ObserverGroup(observers() if observers and env.is_main else ())
            try:
                return _evaluate(rows, settings, env, device, engine, group)
            finally:
                group.notify("close")
        finally:
            if engine is not None:
                engine.dispose()


def _my_rows(engine: sqlalchemy.Engine, settings: EvalSettings) -> list[store.Row]:
    rows = store.rows(engine, settings.name)
    if not rows:
        raise StudyError(
            f"evaluation {settings.name!r} was never planned: run launch/evaluate.py with the "
            "same overrides (it plans the cells before anything runs)"
        )
    cell = settings.eval.cell
    if cell is None:
        return rows
    if not 0 <= cell < len(rows):
        raise StudyError(
            f"eval.cell={cell} is not a cell of {settings.name!r} (0..{len(rows) - 1})"
        )
    return [rows[cell]]


def _evaluate(
    rows: list[store.Row],
    settings: EvalSettings,
    env: DistEnv,
    device: torch.device,
    engine: sqlalchemy.Engine | None,
    observers: ObserverGroup,
) -> EvalReport:
    report = EvalReport()
    todo = [row for row in rows if row.state != store.COMPLETE]
    report.skipped = [row.cell_index for row in rows if row.state == store.COMPLETE]
    for index in report.skipped:
        log.info("cell %d of %s is already evaluated: skipped", index, settings.name)
    if not todo:
        return report
    data: LabeledData = load_labeled(settings.data)
    with Preemption() as preemption:
        for row in todo:
            runner = CellRunner(row, settings, env, device, data, engine, observers, preemption)
            outcome = runner.run()
            if outcome == "stopped":
                if env.is_main:
                    preemption.hand_over()
                raise SystemExit(0)
            if outcome is None:
                report.completed.append(row.cell_index)
            else:
                report.failed[row.cell_index] = outcome
    return report
