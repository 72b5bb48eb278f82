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
    * A cell is trained only by the worker that claimed it (:func:`store.claim`, rank 0, the
      decision broadcast to every rank): a cell another live worker trains is skipped with one
      line (``busy``), never trained twice at once; its heartbeat runs while it trains.
    * Ctrl-C (SIGINT) on a local run: training stops at a step boundary, rank 0 checkpoints,
      the cell is handed back (PENDING, progress kept) and :class:`EvaluationInterrupted` says
      where it stopped; the same command resumes it at once.
    * On a preemption or timeout signal (USR2), training stops at a step boundary on every rank,
      rank 0 checkpoints, and the job is handed to submitit's requeue; the requeued task resumes
      the same cell at its saved step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import NoReturn

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
    #: cells another live worker trains: why each was left to it
    busy: dict[int, str] = field(default_factory=dict)


class EvaluationInterrupted(Exception):  # noqa: N818 - an event, not an error
    """SIGINT stopped a cell: it was checkpointed and handed back (the message says where)."""


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
    threads = size_cpu_threads(env).intra_op
    with distributed_session(env, device):
        engine = store.connect(settings.study) if env.is_main else None
        try:
            rows = broadcast_object(_my_rows(engine, settings) if engine is not None else [])
            group = ObserverGroup(observers() if observers and env.is_main else ())
            try:
                return _evaluate(rows, settings, env, device, engine, group, threads)
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
    threads: int,
) -> EvalReport:
    report = EvalReport()
    todo = [row for row in rows if row.state != store.COMPLETE]
    report.skipped = [row.cell_index for row in rows if row.state == store.COMPLETE]
    for index in report.skipped:
        log.info("cell %d of %s is already evaluated: skipped", index, settings.name)
    if not todo:
        return report
    data: LabeledData = load_labeled(settings.data)
    with Preemption(interrupt=True) as preemption:
        for row in todo:
            claim = broadcast_object(_claim(engine, settings, row, env) if engine else None)
            if claim is not None and not claim.claimed:
                _busy(report, settings, row, claim)
                continue
            runner = CellRunner(
                row, settings, env, device, data, engine, observers, preemption,
                max_threads=threads,
            )  # fmt: skip
            try:
                with _heartbeat(engine, settings, row, env):
                    outcome = runner.run()
            except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint, but the cell is free
                if engine is not None:
                    store.release(engine, settings.name, row.cell_index, worker=env.worker_label)
                raise
            if outcome == "stopped":
                _stop(preemption, env, engine, settings, row)
            if outcome is None:
                report.completed.append(row.cell_index)
            else:
                report.failed[row.cell_index] = outcome
    return report


def _claim(
    engine: sqlalchemy.Engine, settings: EvalSettings, row: store.Row, env: DistEnv
) -> store.Claim:
    return store.claim(
        engine, settings.name, row.cell_index,
        worker=env.worker_label, grace_s=settings.study.grace_period,
    )  # fmt: skip


def _busy(report: EvalReport, settings: EvalSettings, row: store.Row, claim: store.Claim) -> None:
    if claim.state == store.COMPLETE:
        report.skipped.append(row.cell_index)
        log.info("cell %d of %s is already evaluated: skipped", row.cell_index, settings.name)
        return
    report.busy[row.cell_index] = claim.reason
    log.warning(
        "cell %d (%s) of %s is %s: left to it, not trained twice",
        row.cell_index, row.cell_key, settings.name, claim.reason,
    )  # fmt: skip


def _heartbeat(
    engine: sqlalchemy.Engine | None, settings: EvalSettings, row: store.Row, env: DistEnv
) -> AbstractContextManager[object]:
    if engine is None:
        return nullcontext()
    return store.heartbeat(
        engine, settings.name, row.cell_index,
        worker=env.worker_label, interval=settings.study.heartbeat_interval,
    )  # fmt: skip


def _stop(
    preemption: Preemption,
    env: DistEnv,
    engine: sqlalchemy.Engine | None,
    settings: EvalSettings,
    row: store.Row,
) -> NoReturn:
    """Leave after a stopped cell (every rank): a preemption hands over to submitit (requeue;
    the row stays this job's), Ctrl-C hands the cell back and raises
    :class:`EvaluationInterrupted` (rank 0 decides which, for all ranks)."""
    if not broadcast_object(preemption.interrupted):
        if env.is_main:
            preemption.hand_over()
        raise SystemExit(0)
    done = ""
    if engine is not None:
        store.release(engine, settings.name, row.cell_index, worker=env.worker_label)
        now = next(r for r in store.rows(engine, settings.name) if r.cell_index == row.cell_index)
        done = f", {now.epochs_done or 0} of {now.epochs} epoch(s) done"
    raise EvaluationInterrupted(
        f"interrupted: cell {row.cell_index} ({row.cell_key}) checkpointed{done}; "
        "run the same command to resume it"
    )
