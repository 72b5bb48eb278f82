"""The study view in W&B: self-contained snapshots of a whole search as ``search-study`` runs.

A snapshot (``job_type="search-study"``, name ``study-view-<c>`` where ``c`` is the number of
COMPLETE trials it shows) holds the optimization history (``by_trial/objective`` and
``by_trial/best`` against ``trial_number``; ``by_time/objective`` and ``by_time/best`` against
``wall_hours``), the same as a ``history`` table and as pictures (``plots/history``,
``plots/best_vs_time``), a ``top_k`` table of the best trials with their genotypes, and pictures
of the best normal and reduction cells (``best/normal_cell``, ``best/reduce_cell``).

Design. Workers are independent processes that share only the study, and offline runs cannot be
appended to later, so nobody owns a long-lived "study run". Instead, after a COMPLETE trial, the
worker that finished it loads the study's trials itself and, when its trial is a *new best*
(better than every trial completed before it), the completion that spends the budget
(``search.n_trials``), or every ``study_view_every``-th completion (when > 0), writes a fresh,
complete snapshot (:class:`StudyViewObserver`). Each snapshot is self-contained, so the latest one
(highest ``config.snapshot``, then the latest start) is the truth; older ones are harmless
history. A completion's position is counted in the study's own completion order, so exactly one
worker writes the every-k-th and the final snapshots, whatever the races between workers.
:func:`log_study_view` writes the same view on demand (the report command).

This is study analysis: it sits above the search. A worker never imports it; the command-line
layer hands a :class:`StudyViewObserver` to the worker as one of its observers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection

from cnas_hpc.analysis.cells import draw_genotype
from cnas_hpc.analysis.plots import (
    best_so_far,
    complete_trials,
    plot_best_vs_time,
    plot_history,
    primary_objective,
)
from cnas_hpc.analysis.summary import best_trials
from cnas_hpc.common import attrs
from cnas_hpc.config.settings import Settings
from cnas_hpc.config.wandb import WandbConfig
from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.space.genotype import cell_text, genotype_to_json
from cnas_hpc.space.primitives import CELL_KINDS
from cnas_hpc.study.pareto import is_feasible, objectives_of
from cnas_hpc.tracking.wandb_runs import (
    STUDY_JOB_TYPE,
    TOP_K,
    Guard,
    init_run,
    run_dir,
    sync_command,
    wandb_config_of,
)

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

log = logging.getLogger(__name__)


def _scorer(study: optuna.Study) -> Callable[[optuna.trial.FrozenTrial], float]:
    """A trial's score: its value, or a multi-objective study's primary objective's value."""
    index, _ = primary_objective(study)
    return lambda t: float(t.values[index]) if t.values else 0.0


def _completion_order(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials with a finite value, in the order the study recorded their completion."""
    return sorted(
        complete_trials(study), key=lambda t: (t.datetime_complete or datetime.min, t.number)
    )


def study_view_trigger(
    study: optuna.Study, number: int, *, every: int = 0, n_trials: int | None = None
) -> str | None:
    """Why the completion of trial ``number`` should write a study view, or None.

    Args:
        study: the study, after trial ``number`` was told.
        number: a COMPLETE trial of ``study``.
        every: also every ``every``-th completion (0: never for this reason).
        n_trials: the budget; the completion that reaches it writes the final view.

    Returns:
        ``"new_best"`` (better than every trial completed before it), ``"final"``,
        ``"every_k"``, or None (also when the trial is not, or not yet, COMPLETE in ``study``).
    """
    done = _completion_order(study)
    position = next((i for i, t in enumerate(done, 1) if t.number == number), None)
    if position is None:
        return None
    score = _scorer(study)
    mine = score(done[position - 1])
    # A cell that broke search.constraints is never the best, nor the bar others must beat.
    before = [score(t) for t in done[: position - 1] if is_feasible(t)]
    if not is_feasible(done[position - 1]):
        new_best = False
    elif primary_objective(study)[1] == StudyDirection.MAXIMIZE:
        new_best = not before or mine > max(before)
    else:
        new_best = not before or mine < min(before)
    if new_best:
        return "new_best"
    if n_trials is not None and position >= n_trials:
        return "final"
    if every > 0 and position % every == 0:
        return "every_k"
    return None


def log_study_view(
    study: optuna.Study,
    settings: Settings,
    *,
    config: WandbConfig | None = None,
    trigger: str = "on_demand",
    written_by: str | None = None,
    top_k: int = TOP_K,
) -> Path | None:
    """Write one self-contained snapshot of the study as a ``search-study`` run.

    Reads only the study (COMPLETE trials with a finite value are results; FAIL and RUNNING
    are counted). Safe to call from any process, e.g. the report command.

    Args:
        study: the study to show.
        settings: the search's settings (``output_dir`` and the default W&B settings).
        config: W&B settings; default ``settings.wandb``.
        trigger: why the view is written (recorded in its config).
        written_by: who wrote it (recorded in its config), e.g. the worker and its trial.
        top_k: rows of the top-k table.

    Returns:
        The run's folder (what ``wandb sync`` takes), or None when W&B is disabled.

    Raises:
        Exception: whatever wandb raises (the run, once started, is always finished). Pictures
            that cannot be drawn are skipped with a warning instead.
    """
    cfg = config or wandb_config_of(settings)
    if not cfg.enabled:
        log.info("W&B is disabled (wandb.mode=disabled): no study view written")
        return None
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    by_number = sorted(_completion_order(study), key=lambda t: t.number)
    by_time = _completion_order(study)
    counts = {
        state.name: len(study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
    }
    ranked = best_trials(study, k=top_k)
    index, direction = primary_objective(study)
    objective = (
        str(study.user_attrs.get(attrs.STUDY_OBJECTIVE, "objective"))
        if len(study.directions) == 1
        else objectives_of(study)[index]
    )
    score = _scorer(study)
    run_config = {
        "study": study.study_name,
        "snapshot": len(by_time),
        "trigger": trigger,
        "written_by": written_by,
        "objective": objective,
        "direction": "maximize" if direction == StudyDirection.MAXIMIZE else "minimize",
        "n_trials_budget": settings.search.n_trials,
    }
    run = init_run(
        settings.output_dir,
        cfg,
        name=f"study-view-{len(by_time)}",
        job_type=STUDY_JOB_TYPE,
        group=study.study_name,
        run_config=run_config,
        tags=[*cfg.tags, "study-view"],
    )
    ok = False
    folder = run_dir(run)
    try:
        # The pictures are copied into the run when logged: the folder may go before finish.
        with tempfile.TemporaryDirectory(prefix="cnas-study-view-") as tmp:
            _log_history(run, by_number, by_time, direction, score)
            _log_tables(
                run, by_number, ranked, best_so_far([score(t) for t in by_number], direction), score
            )
            _log_pictures(run, study, ranked, Path(tmp))
        summary: dict[str, Any] = {
            "snapshot": len(by_time),
            "n_complete": counts["COMPLETE"],
            "n_fail": counts["FAIL"],
            "n_running": counts["RUNNING"],
        }
        if ranked:
            best = ranked[0]
            summary.update(
                best_trial=best.number,
                best_value=best.value,
                best_genotype=genotype_to_json(best.genotype),
            )
        run.summary.update(summary)
        ok = True
    finally:
        run.finish(exit_code=0 if ok else 1)
    log.info(
        "W&B study view of %s (%d complete, %s) written to %s%s",
        study.study_name,
        len(by_time),
        trigger,
        folder,
        f"; upload with: {sync_command(folder)}" if cfg.mode == "offline" else "",
    )
    return folder


def _log_history(
    run: Run,
    by_number: Sequence[optuna.trial.FrozenTrial],
    by_time: Sequence[optuna.trial.FrozenTrial],
    direction: optuna.study.StudyDirection,
    score: Callable[[optuna.trial.FrozenTrial], float],
) -> None:
    """Objective and best-so-far as W&B charts, against trial number and against wall hours."""
    run.define_metric("trial_number")
    run.define_metric("by_trial/*", step_metric="trial_number")
    run.define_metric("wall_hours")
    run.define_metric("by_time/*", step_metric="wall_hours")
    values = [score(t) for t in by_number]
    for trial, value, best in zip(by_number, values, best_so_far(values, direction), strict=True):
        run.log({"trial_number": trial.number, "by_trial/objective": value, "by_trial/best": best})
    starts = [t.datetime_start for t in by_time if t.datetime_start is not None]
    first = min(starts) if starts else None
    values = [score(t) for t in by_time]
    for trial, value, best in zip(by_time, values, best_so_far(values, direction), strict=True):
        done = trial.datetime_complete
        hours = (done - first).total_seconds() / 3600 if done and first else 0.0
        run.log({"wall_hours": hours, "by_time/objective": value, "by_time/best": best})


def _log_tables(
    run: Run,
    by_number: Sequence[optuna.trial.FrozenTrial],
    ranked: Sequence[Any],
    best: Sequence[float],
    score: Callable[[optuna.trial.FrozenTrial], float],
) -> None:
    """The history and the top-k trials (with their genotypes) as W&B tables."""
    import wandb

    history = wandb.Table(
        columns=["trial", "value", "best_so_far", "worker", "completed"],
        data=[
            [
                t.number,
                score(t),
                b,
                str(t.user_attrs.get(attrs.WORKER, "?")),
                t.datetime_complete.isoformat() if t.datetime_complete else None,
            ]
            for t, b in zip(by_number, best, strict=True)
        ],
    )
    top = wandb.Table(
        columns=[
            "rank",
            "trial",
            "value",
            "n_params",
            "macs",
            "wall_s",
            "worker",
            "normal",
            "reduce",
            "genotype",
        ],
        data=[
            [
                r.rank,
                r.number,
                r.value,
                r.n_params,
                r.macs,
                r.wall_s,
                r.worker,
                cell_text(r.genotype, "normal"),
                cell_text(r.genotype, "reduce"),
                genotype_to_json(r.genotype),
            ]
            for r in ranked
        ],
    )
    run.log({"history": history, "top_k": top})


def _log_pictures(run: Run, study: optuna.Study, ranked: Sequence[Any], folder: Path) -> None:
    """The history plots and the best trial's cells as images (skipped if drawing fails)."""
    import wandb

    images: dict[str, Any] = {}
    try:
        images["plots/history"] = wandb.Image(str(plot_history(study, folder / "history.png")))
        images["plots/best_vs_time"] = wandb.Image(
            str(plot_best_vs_time(study, folder / "best_vs_time.png"))
        )
    except Exception as exc:  # a picture is not worth losing the view
        log.warning("study view: history plots skipped (%s: %s)", type(exc).__name__, exc)
    if ranked:
        best = ranked[0]
        try:
            paths = draw_genotype(best.genotype, folder, "best", title=f"trial {best.number}")
            for cell, path in zip(CELL_KINDS, paths, strict=True):
                images[f"best/{cell}_cell"] = wandb.Image(
                    str(path), caption=f"trial {best.number}: {cell} cell"
                )
        except ImportError:
            log.warning("study view: cell pictures skipped (cnas_hpc.analysis.cells missing)")
        except Exception as exc:  # a picture is not worth losing the view
            log.warning("study view: cell pictures skipped (%s: %s)", type(exc).__name__, exc)
    if images:
        run.log(images)


class StudyViewObserver:
    """Writes a study view after the trials that call for one (see the module docstring).

    An observer of the search worker (rank 0); it only acts on ``trial_finished("COMPLETE")``.
    Never raises: W&B errors are logged and the search goes on.

    Args:
        settings: the search's settings (W&B settings, ``search.n_trials``, ``output_dir``).
        study: returns the worker's study (its already open connection).
    """

    def __init__(self, settings: Settings, study: Callable[[], optuna.Study]) -> None:
        self._settings = settings
        self._study = study
        self._info: TrialInfo | None = None
        self._guard = Guard(log)

    def trial_started(self, info: TrialInfo, *, n_params: int, macs: int) -> None:
        """Remember which trial runs (its number and worker label go into the view)."""
        self._info = info

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Nothing per step."""

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Nothing per epoch."""

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        """After a COMPLETE trial, write a snapshot if the trial calls for one."""
        info, self._info = self._info, None
        if state == "COMPLETE" and info is not None:
            self._guard("study view", self._maybe_write, info)

    def study_updated(self, complete: int, best: float | None) -> None:
        """Nothing: views follow completions, not claims."""

    def close(self) -> None:
        """Nothing to release."""

    def _maybe_write(self, info: TrialInfo) -> None:
        study = self._study()
        config = wandb_config_of(self._settings)
        trigger = study_view_trigger(
            study,
            info.number,
            every=config.study_view_every,
            n_trials=self._settings.search.n_trials,
        )
        if trigger is None:
            return
        log_study_view(
            study,
            self._settings,
            config=config,
            trigger=trigger,
            written_by=f"{info.worker} after trial {info.number}",
        )
