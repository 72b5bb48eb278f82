"""Glue between Hydra and the evaluation phase: plan the cells once, then every task evaluates.

Contract:
    * :class:`EvalCallback` runs in the SUBMITTING process (``on_run_start`` of a local run,
      ``on_multirun_start`` before the launcher queues anything). It validates the config, the
      data (labels!) and the launcher request, resolves the cells (the study's top-k trials,
      genotype files, presets) and plans them into the ``evaluations`` table. Bad input ends the
      process with one ``error:`` line and exit status 2: nothing is queued.
    * With ``-m``, the cells sweeper (``hydra/sweeper=cells``, the evaluate config's default)
      turns the plan into ONE array: one task per cell (``eval.cell=<i>``).
    * :func:`run_evaluate_task` is the body of every task (every rank): it evaluates its cell(s)
      and, on a local run, prints the results table and writes ``results.md`` / ``results.csv``.
      A task whose cell failed exits with status 1 (SLURM's accounting shows it FAILED); the
      other tasks are not affected. Ctrl-C ends it with one ``interrupted: ...`` line and
      status 130, the cell checkpointed and handed back (the same command resumes it).
    * A ``-m`` rerun while an array of the same evaluation still has tasks in SLURM is refused
      (one ``error:`` line, nothing submitted); the launcher records each array it submits
      (:func:`record_eval_array`, through :data:`cnas_hpc.cli.multirun.OUTCOME`).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnas_hpc.analysis.evaluations import comparable_rows, write_results
from cnas_hpc.cli.common import (
    CONFIG_PATH,
    USER_ERRORS,
    check_config_secrets,
    check_launcher,
    fail,
    refuse_live_arrays,
    resolved,
)
from cnas_hpc.cli.multirun import PlanningCallback
from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config.evaluate import EvalSettings, eval_settings_from_config
from cnas_hpc.data.datasets import check_available
from cnas_hpc.data.labeled import check_labeled
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.evaluate import store
from cnas_hpc.evaluate.app import EvaluationInterrupted, run_evaluation
from cnas_hpc.evaluate.cells import resolve_cells, study_costs
from cnas_hpc.evaluate.observer import EvalObserver
from cnas_hpc.study.app_arrays import record_array, recorded_arrays
from cnas_hpc.tracking.eval_progress import EvalProgress
from cnas_hpc.tracking.wandb_eval import WandbEvalTracker

log = logging.getLogger("cnas_hpc")

#: Exit status after Ctrl-C (128 + SIGINT, what a shell reports for an interrupted command).
EXIT_INTERRUPTED = 130


def eval_settings_of(cfg: DictConfig) -> EvalSettings:
    """Resolve and validate the composed evaluate config (without the ``hydra`` node).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    return eval_settings_from_config(resolved(cfg))


#: The app's name in the ``cnas_arrays`` table.
APP = "evaluate"


def plan_evaluation(
    cfg: DictConfig, launcher: DictConfig | None, *, slurm: bool = False
) -> list[store.Row]:
    """Everything the submitting side checks, then the plan (idempotent: a rerun resumes).

    With ``slurm`` (the multirun submits an array), a rerun while an array of the same
    evaluation still runs is refused: its recorded arrays and those of its RUNNING rows.

    Raises:
        ConfigError, StudyError, FileNotFoundError, ValueError: one line each.
    """
    check_config_secrets(cfg)
    settings = eval_settings_of(cfg)
    check_config_secrets(cfg, settings)
    check_available(settings.data)
    check_labeled(settings.data)
    check_launcher(launcher, settings.protocol.batch_size)
    decisive, protocol_hash = settings.protocol_fingerprint()
    with store.opened(settings.study) as engine:
        # A rerun keeps the cells of the first submission: they are resolved only once.
        planned = store.rows(engine, settings.name)
        if planned and slurm:
            arrays = recorded_arrays(engine, APP, settings.name)
            arrays += store.running_arrays(engine, settings.name)
            refuse_live_arrays(arrays, f"evaluation {settings.name!r}")
        cells = [] if planned else resolve_cells(settings.eval, settings.study)
        rows = store.plan(
            engine,
            settings.name,
            cells,
            method=settings.eval.method,
            protocol_name=settings.protocol.name,
            protocol=decisive,
            protocol_hash=protocol_hash,
            seed=settings.eval.seed,
            epochs=settings.protocol.epochs,
        )
    done = sum(row.state == store.COMPLETE for row in rows)
    log.info(
        "evaluation %r in %s: %d cell(s) (%s), %d already complete",
        settings.name,
        mask_url(settings.study.storage),
        len(rows),
        ", ".join(row.cell_key for row in rows),
        done,
    )
    return rows


def planned_cells(cfg: DictConfig) -> list[int]:
    """The cells of the evaluation of ``cfg`` still to train (the array: one task per cell);
    a rerun submits only the cells that are not COMPLETE."""
    settings = eval_settings_of(cfg)
    with store.opened(settings.study) as engine:
        rows = store.rows(engine, settings.name)
    return [row.cell_index for row in rows if row.state != store.COMPLETE]


class EvalCallback(PlanningCallback):
    """Hydra callback: validate and plan once, in the submitting process; summarise at the end."""

    report_what = "summarise the evaluation"

    @staticmethod
    def plan(config: DictConfig, launcher: DictConfig | None, *, slurm: bool) -> None:
        plan_evaluation(config, launcher, slurm=slurm)

    @staticmethod
    def record_array(config: DictConfig, array_job_id: str) -> None:
        record_eval_array(config, array_job_id)

    @staticmethod
    def report(config: DictConfig) -> None:
        print_results(eval_settings_of(config))


def record_eval_array(cfg: DictConfig, array_job_id: str) -> None:
    """Record the submitted array of ``cfg``'s evaluation (the launcher calls it)."""
    settings = eval_settings_of(cfg)
    with store.opened(settings.study) as engine:
        record_array(engine, APP, settings.name, array_job_id)


def make_eval_observers(settings: EvalSettings) -> list[EvalObserver]:
    """Rank 0's observers: terminal progress, and with W&B on, one run per cell."""
    observers: list[EvalObserver] = [EvalProgress()]
    if settings.wandb.enabled:
        observers.append(WandbEvalTracker(settings))
    return observers


def print_results(settings: EvalSettings) -> None:
    """Print the results table and write ``results.md`` / ``results.csv``; cells of a
    cost-aware study show the costs its search recorded beside their accuracy."""
    with store.opened(settings.study) as engine:
        names = {r.study_name for r in comparable_rows(engine, settings.name) if r.study_name}
        costs = study_costs(settings.study, names)
        table, paths = write_results(engine, settings.name, settings.results_dir, costs)
    print(f"\nEvaluation {settings.name!r}:")
    print(table)
    print("Written to " + ", ".join(str(p) for p in paths), flush=True)


def run_evaluate_task(cfg: DictConfig) -> int:
    """Body of every evaluation task; returns the number of cells it completed."""
    try:
        settings = eval_settings_of(cfg)
        env = DistEnv.from_environment()
        report = run_evaluation(settings, env, observers=lambda: make_eval_observers(settings))
        if env.is_main and HydraConfig.get().mode == RunMode.RUN:
            print_results(settings)
    except USER_ERRORS as exc:
        fail(str(exc))
    except EvaluationInterrupted as exc:
        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        print(
            "interrupted; run the same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    if report.failed:
        first = next(iter(report.failed.items()))
        fail(f"{len(report.failed)} cell(s) failed; cell {first[0]}: {first[1]}", code=1)
    return len(report.completed)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> int:
    """``cnas-evaluate`` (and ``launch/evaluate.py``): every array task (and every rank of it)
    runs this Hydra task."""
    return run_evaluate_task(cfg)


#: The command: overrides checked first (a typo: one ``error:`` line), then the Hydra app.
main = checked_command("evaluate", hydra_main)
