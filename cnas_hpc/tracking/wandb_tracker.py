"""Weights & Biases tracking of a search: one run per trial, and snapshots of the study.

What is written (group = the study's name, so one W&B group holds a whole search):

* **Trial runs** (``job_type="search-trial"``, name ``trial-<n>``): the config holds the trial's
  identity (``study``, ``trial``, ``segment``, ``start_epoch``), its ``genotype``, its
  ``params``, the masked ``hparams`` (nested by section) and the ``worker`` / array-task
  identity. The history holds the per-step metrics (``train/loss``, ``train/lr``,
  ``train/images_per_s``, ``train/memory_mb`` against ``train/step``) and the per-epoch ones
  (``epoch/objective``, ``epoch/train_loss`` ... against ``epoch``). The summary holds
  ``state``, ``value``, ``n_params``, ``macs``, ``wall_s`` and the worker's result fields. The run
  is always finished, also when the trial fails (``state`` FAIL, W&B exit code 1) or is
  preempted (``state`` INTERRUPTED).
* **Study views** (``job_type="search-study"``, name ``study-view-<c>`` where ``c`` is the number
  of COMPLETE trials it shows): the optimization history (``by_trial/objective`` and
  ``by_trial/best`` against ``trial_number``; ``by_time/objective`` and ``by_time/best`` against
  ``wall_hours``), the same as a ``history`` table and as pictures (``plots/history``,
  ``plots/best_vs_time``), a ``top_k`` table of the best trials with their genotypes, and
  pictures of the best normal and reduction cells (``best/normal_cell``, ``best/reduce_cell``).

Design of the study view. Workers are independent processes that share only the study, and
offline runs cannot be appended to later, so nobody owns a long-lived "study run". Instead,
after a COMPLETE trial, the worker that finished it loads the study's trials itself and, when
its trial is a *new best* (better than every trial completed before it), the completion that
spends the budget (``search.n_trials``), or every ``study_view_every``-th completion (when > 0),
writes a fresh, complete snapshot as a new ``search-study`` run. Each snapshot is
self-contained, so the latest one (highest ``config.snapshot``, then the latest start) is the
truth; older ones are harmless history. A completion's position is counted in the study's own
completion order, so exactly one worker writes the every-k-th and the final snapshots, whatever
the races between workers. :func:`log_study_view` writes the same view on demand (the report
command).

Requeued and resumed trials. W&B cannot resume an offline run (wandb issues #2423, #4624), so a
trial resumed from a checkpoint (``TrialInfo.segment`` k > 0) gets a NEW run,
``trial-<n>-seg<k>``, tied to its trial by config (``trial``, ``segment``, ``start_epoch``) and
by the tag ``trial-<n>`` every segment carries. Epochs and steps are logged with their true
numbers (``epoch`` continues at ``start_epoch + 1``), so the segments of one trial together hold
every epoch once, and the study view, which reads the study and not W&B, stays correct.

Modes (``wandb.mode``): ``disabled`` (the local default: wandb is never imported), ``offline``
(the cluster default: compute nodes usually have no internet; runs are written under
``<output_dir>/wandb`` and uploaded later with ``wandb sync``, whose command line is logged), and
``online``. wandb stages the study view's tables under ``WANDB_DATA_DIR`` (default
``~/.local/share/wandb``) until they are synced; this module never changes the environment.

Failure policy: many concurrent workers can hit W&B's rate limits (HTTP 429) or a flaky network.
Every wandb call is wrapped: the first failure of each kind of call is logged as a warning, later
ones at debug level, and the worker goes on. A trial whose run failed to start is not tracked.

Secrets: the config only holds :class:`~cnas_hpc.tracking.observer.TrialInfo` fields, and
``hparams`` values are masked again here (URL passwords, secret-looking keys). wandb's own
system metadata is turned off because it records ``sys.argv`` (a Hydra override can carry a
storage URL with its password) and the git remote (which can embed a token); environment
variables are never read.

Only global rank 0 of a worker creates a :class:`WandbTracker` (the worker's contract).
"""

from __future__ import annotations

import logging
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cnas_hpc.search import attrs
from cnas_hpc.space.genotype import Genotype, genotype_to_dict, genotype_to_json
from cnas_hpc.space.primitives import CELL_KINDS
from cnas_hpc.tracking.observer import TrialInfo

if TYPE_CHECKING:
    # Only for annotations: cnas_hpc.config imports this module (WandbConfig), and wandb is
    # imported only when a run is actually written.
    import optuna
    from wandb.sdk.wandb_run import Run

    from cnas_hpc.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MODES: tuple[str, ...] = ("disabled", "offline", "online")
TRIAL_JOB_TYPE = "search-trial"
STUDY_JOB_TYPE = "search-study"
#: Rows of the study view's top-k table.
TOP_K = 10

# Keys whose values are never logged, whatever they hold.
_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)


@dataclass(frozen=True)
class WandbConfig:
    """How (and whether) a search reports to W&B; the ``wandb`` config group.

    Attributes:
        mode: ``disabled`` (nothing written, wandb not imported), ``offline`` (the cluster
            default: local files, ``wandb sync`` later) or ``online``.
        project: W&B project.
        entity: W&B entity (team or user); None: the account's default.
        dir: Where wandb writes (it adds its own ``wandb/`` folder below); None:
            ``<output_dir>/wandb``. Must be writable by every worker.
        tags: Tags added to every run.
        study_view_every: Also write a study view every this many completions (0: only on a new
            best and at the end of the budget).

    Raises:
        ValueError: A field is invalid (one line naming the ``wandb.<key>``).
    """

    mode: str = "disabled"
    project: str = "cnas-hpc"
    entity: str | None = None
    dir: str | None = None
    tags: tuple[str, ...] = ()
    study_view_every: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"wandb.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.project, str) or not self.project.strip():
            raise ValueError(f"wandb.project must be a non-empty string, got {self.project!r}")
        if self.entity is not None and (not isinstance(self.entity, str) or not self.entity):
            raise ValueError(
                f"wandb.entity must be null or a non-empty string, got {self.entity!r}"
            )
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir):
            raise ValueError(f"wandb.dir must be null or a non-empty path, got {self.dir!r}")
        if isinstance(self.tags, str) or not all(
            isinstance(tag, str) and tag.strip() for tag in self.tags
        ):
            raise ValueError(f"wandb.tags must be a list of non-empty strings, got {self.tags!r}")
        # bool is an int: reject it explicitly, `study_view_every: true` is a typo, not 1.
        if (
            isinstance(self.study_view_every, bool)
            or not isinstance(self.study_view_every, int)
            or self.study_view_every < 0
        ):
            raise ValueError(
                f"wandb.study_view_every must be an integer >= 0, got {self.study_view_every!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether anything is written to W&B."""
        return self.mode != "disabled"


def wandb_config_of(settings: Settings) -> WandbConfig:
    """The W&B settings of a search (disabled when the settings carry none)."""
    cfg = getattr(settings, "wandb", None)
    return cfg if isinstance(cfg, WandbConfig) else WandbConfig()


def wandb_root(settings: Settings, config: WandbConfig | None = None) -> Path:
    """The ``dir`` handed to ``wandb.init``: ``wandb.dir`` or ``<output_dir>/wandb``."""
    cfg = config or wandb_config_of(settings)
    return Path(cfg.dir or Path(settings.output_dir) / "wandb").expanduser()


def sync_command(path: str | Path) -> str:
    """The command line that uploads offline runs (a run folder or a glob of them)."""
    return f"wandb sync {path}"


def trial_run_name(number: int, segment: int = 0) -> str:
    """``trial-<n>`` for a fresh trial, ``trial-<n>-seg<k>`` for its k-th resumed segment."""
    return f"trial-{number}" if segment == 0 else f"trial-{number}-seg{segment}"


def _scrub(key: str, value: Any) -> Any:
    """``value`` safe to log: secret-looking keys hidden, URL passwords masked (recursively)."""
    if _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str) and "://" in value:
        # Lazy: cnas_hpc.search.study imports cnas_hpc.config, which imports this module.
        from cnas_hpc.search.study import mask_url

        return mask_url(value)
    if isinstance(value, Mapping):
        return {str(k): _scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(key, item) for item in value]
    return value


def safe_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``section.key`` hyper-parameters, masked again and nested by section for W&B.

    ``{"train.lr": 0.1, "study.storage": "postgresql://u:pw@h/db"}`` becomes
    ``{"train": {"lr": 0.1}, "study": {"storage": "postgresql://u:***@h/db"}}``; W&B shows nested
    keys as ``train.lr`` again, and nesting keeps them apart from the run's own config keys.
    """
    nested: dict[str, Any] = {}
    for flat_key, value in hparams.items():
        *sections, leaf = str(flat_key).split(".")
        node = nested
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):  # a scalar and a section share a name: keep both
                child = node.setdefault(f"{section}_", {})
            node = child
        node[leaf] = _scrub(str(flat_key), value)
    return nested


def _cells_text(genotype: Genotype, cell: str) -> str:
    """One cell on one line: ``op<-input`` pairs, nodes separated by ``|``."""
    edges = list(getattr(genotype, cell))
    nodes = [
        " ".join(f"{op}<-{int(index)}" for op, index in edges[k : k + 2])
        for k in range(0, len(edges), 2)
    ]
    return " | ".join(nodes)


def trial_config(info: TrialInfo) -> dict[str, Any]:
    """The W&B config of a trial's run (never a secret: see the module docstring)."""
    return {
        "study": info.study_name,
        "trial": info.number,
        "segment": info.segment,
        "start_epoch": info.start_epoch,
        "genotype": genotype_to_dict(info.genotype),
        "params": {str(k): _scrub(str(k), v) for k, v in info.params.items()},
        "worker": {
            "label": info.worker,
            "index": info.worker_index,
            "world_size": info.world_size,
            "array_job_id": info.array_job_id,
            "array_task_id": info.array_task_id,
            # wandb's own host metadata is off (it also records sys.argv): keep the host here.
            "host": socket.gethostname(),
        },
        "hparams": safe_hparams(info.hparams),
    }


def trial_tags(info: TrialInfo, config: WandbConfig) -> list[str]:
    """Tags of a trial's run: the configured ones, ``trial-<n>`` and ``seg<k>`` when resumed."""
    tags = [*config.tags, f"trial-{info.number}"]
    if info.segment:
        tags.append(f"seg{info.segment}")
    return tags


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(
        # No banners, no progress bars, no carriage returns in SLURM logs.
        silent=True,
        # The worker's stdout/stderr already go to the job's log; capturing them per run would
        # also wrap the streams again for every trial of a long-lived process.
        console="off",
        # System metadata records sys.argv and the git remote: both can hold credentials.
        x_disable_meta=True,
        disable_git=True,
        save_code=False,
    )


def _init_run(
    settings: Settings,
    config: WandbConfig,
    *,
    name: str,
    job_type: str,
    group: str,
    run_config: dict[str, Any],
    tags: Sequence[str],
) -> Run:
    """Start one W&B run (several may exist in one process). Raises what wandb raises."""
    import wandb

    root = wandb_root(settings, config)
    root.mkdir(parents=True, exist_ok=True)
    mode: Literal["online", "offline"] = "online" if config.mode == "online" else "offline"
    return wandb.init(
        project=config.project,
        entity=config.entity,
        dir=str(root),
        mode=mode,
        name=name,
        group=group,
        job_type=job_type,
        config=run_config,
        tags=list(tags),
        reinit="create_new",
        settings=_wandb_settings(),
    )


def _run_dir(run: Run) -> Path:
    """The run's own folder (``.../offline-run-<time>-<id>``): what ``wandb sync`` takes."""
    return Path(run.dir).parent


def _log_row(
    run: Run, x: tuple[str, int], prefix: str, metrics: Mapping[str, float | None]
) -> None:
    """Log ``metrics`` (None values left out) as ``<prefix><name>`` in one row with ``x``."""
    row: dict[str, Any] = {x[0]: x[1]}
    row.update({f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None})
    run.log(row)


class WandbTracker:
    """A :class:`~cnas_hpc.tracking.observer.TrialObserver` that writes W&B runs.

    One run per trial (per segment of a resumed trial), plus study-view snapshots (see the
    module docstring). Never raises from an observer method: W&B errors are logged (a warning
    for the first failure of each kind of call, debug after) and tracking goes on without them.

    Args:
        settings: the search's settings (``output_dir``, ``search.n_trials``, the study).
        config: W&B settings; default ``settings.wandb``. Must not be disabled.
        study: returns the worker's study, for the study view; default: the tracker loads the
            study itself from ``settings`` the first time it needs it.

    Raises:
        ValueError: ``config.mode`` is ``disabled``.
    """

    def __init__(
        self,
        settings: Settings,
        config: WandbConfig | None = None,
        *,
        study: Callable[[], optuna.Study] | None = None,
    ) -> None:
        self.config = config or wandb_config_of(settings)
        if not self.config.enabled:
            raise ValueError("WandbTracker needs wandb.mode offline or online, got 'disabled'")
        self._settings = settings
        self._study_source = study
        self._study: optuna.Study | None = None
        self._warned: set[str] = set()
        self._run: Run | None = None
        self._info: TrialInfo | None = None
        self._n_params: int | None = None
        self._macs: int | None = None
        self._started = 0.0
        self.root = wandb_root(settings, self.config)
        if self.config.mode == "offline":
            log.info(
                "W&B offline: runs are written under %s; upload them later with: %s",
                self.root / "wandb",
                sync_command(self.root / "wandb" / "offline-run-*"),
            )
        else:
            log.info("W&B online: project %s", self.config.project)

    # ---- failure policy -----------------------------------------------------------------

    def _guard(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn``; on any error log it (warning the first time per ``what``), return None."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # W&B is best effort: rate limits, network, disk
            first = what not in self._warned
            self._warned.add(what)
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "W&B %s failed (%s: %s); the search goes on%s",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                f" (further {what} failures are logged at debug level)" if first else "",
                exc_info=not first,
            )
            return None

    # ---- TrialObserver ------------------------------------------------------------------

    def trial_started(self, info: TrialInfo, *, n_params: int, macs: int) -> None:
        """Open the trial's run (``trial-<n>`` or ``trial-<n>-seg<k>``)."""
        if self._run is not None:
            # trial_finished was skipped (should not happen): never leave a run open.
            self._guard("finish", self._close_run, self._run, "ABANDONED", None, {})
        self._run = None
        self._info = info
        self._n_params, self._macs = n_params, macs
        self._started = time.perf_counter()
        self._run = self._guard("init", self._open_trial_run, info)

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log per-step metrics against ``train/step``."""
        run = self._run
        if run is None:
            return
        self._guard("log", _log_row, run, ("train/step", step), "train/", metrics)

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Log per-epoch metrics against ``epoch`` (the true, 1-based epoch number)."""
        run = self._run
        if run is None:
            return
        self._guard("log", _log_row, run, ("epoch", epoch), "epoch/", metrics)

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        """Finish the trial's run with its summary; maybe write a study view (COMPLETE only)."""
        run, info = self._run, self._info
        self._run = self._info = None
        if run is not None:
            self._guard("finish", self._close_run, run, state, value, summary)
        if state == "COMPLETE" and info is not None:
            self._guard("study view", self._maybe_write_study_view, info)

    # ---- trial runs ---------------------------------------------------------------------

    def _open_trial_run(self, info: TrialInfo) -> Run:
        run = _init_run(
            self._settings,
            self.config,
            name=trial_run_name(info.number, info.segment),
            job_type=TRIAL_JOB_TYPE,
            group=info.study_name,
            run_config=trial_config(info),
            tags=trial_tags(info, self.config),
        )
        try:
            # Charts use the true step/epoch (continuing across segments), not W&B's _step.
            run.define_metric("train/step")
            run.define_metric("train/*", step_metric="train/step")
            run.define_metric("epoch")
            run.define_metric("epoch/*", step_metric="epoch")
        except Exception:
            run.finish(exit_code=1)
            raise
        return run

    def _close_run(
        self, run: Run, state: str, value: float | None, summary: Mapping[str, Any]
    ) -> None:
        final: dict[str, Any] = {
            "state": state,
            "n_params": self._n_params,
            "macs": self._macs,
            "wall_s": time.perf_counter() - self._started,
        }
        if value is not None:
            final["value"] = float(value)
        final.update({k: v for k, v in summary.items() if v is not None})
        try:
            run.summary.update({k: v for k, v in final.items() if v is not None})
        finally:
            run_dir = _run_dir(run)
            # A failed trial ends as a failed W&B run, so W&B's own state filters find it.
            run.finish(exit_code=1 if state == "FAIL" else 0)
        if self.config.mode == "offline":
            log.info("W&B offline run %s: upload with: %s", run_dir.name, sync_command(run_dir))

    # ---- study view ---------------------------------------------------------------------

    def _load_study(self) -> optuna.Study:
        if self._study is None:
            if self._study_source is not None:
                self._study = self._study_source()
            else:
                from cnas_hpc.search.study import load_study

                self._study = load_study(self._settings, worker=self._settings.worker)
        return self._study

    def _maybe_write_study_view(self, info: TrialInfo) -> None:
        study = self._load_study()
        trigger = study_view_trigger(
            study,
            info.number,
            every=self.config.study_view_every,
            n_trials=self._settings.search.n_trials,
        )
        if trigger is None:
            return
        log_study_view(
            study,
            self._settings,
            config=self.config,
            trigger=trigger,
            written_by=f"{info.worker} after trial {info.number}",
        )


def _completion_order(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials with a finite value, in the order the study recorded their completion."""
    from cnas_hpc.tracking.plots import complete_trials

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
    from optuna.study import StudyDirection

    done = _completion_order(study)
    position = next((i for i, t in enumerate(done, 1) if t.number == number), None)
    if position is None:
        return None
    mine = float(done[position - 1].value or 0.0)
    before = [float(t.value or 0.0) for t in done[: position - 1]]
    if study.direction == StudyDirection.MAXIMIZE:
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

    from cnas_hpc.tracking.plots import best_so_far
    from cnas_hpc.tracking.summary import best_trials

    by_number = sorted(_completion_order(study), key=lambda t: t.number)
    by_time = _completion_order(study)
    counts = {
        state.name: len(study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
    }
    ranked = best_trials(study, k=top_k)
    objective = str(study.user_attrs.get(attrs.STUDY_OBJECTIVE, "objective"))
    direction = study.direction
    run_config = {
        "study": study.study_name,
        "snapshot": len(by_time),
        "trigger": trigger,
        "written_by": written_by,
        "objective": objective,
        "direction": "maximize" if direction == StudyDirection.MAXIMIZE else "minimize",
        "n_trials_budget": settings.search.n_trials,
    }
    run = _init_run(
        settings,
        cfg,
        name=f"study-view-{len(by_time)}",
        job_type=STUDY_JOB_TYPE,
        group=study.study_name,
        run_config=run_config,
        tags=[*cfg.tags, "study-view"],
    )
    ok = False
    run_dir = _run_dir(run)
    try:
        # The pictures are copied into the run when logged: the folder may go before finish.
        with tempfile.TemporaryDirectory(prefix="cnas-study-view-") as tmp:
            _log_history(run, by_number, by_time, direction, best_so_far)
            _log_tables(run, by_number, ranked, best_so_far(_values(by_number), direction))
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
        run_dir,
        f"; upload with: {sync_command(run_dir)}" if cfg.mode == "offline" else "",
    )
    return run_dir


def _values(trials: Sequence[optuna.trial.FrozenTrial]) -> list[float]:
    return [float(t.value) for t in trials if t.value is not None]


def _log_history(
    run: Run,
    by_number: Sequence[optuna.trial.FrozenTrial],
    by_time: Sequence[optuna.trial.FrozenTrial],
    direction: optuna.study.StudyDirection,
    best_so_far: Callable[[Sequence[float], optuna.study.StudyDirection], list[float]],
) -> None:
    """Objective and best-so-far as W&B charts, against trial number and against wall hours."""
    run.define_metric("trial_number")
    run.define_metric("by_trial/*", step_metric="trial_number")
    run.define_metric("wall_hours")
    run.define_metric("by_time/*", step_metric="wall_hours")
    for trial, best in zip(by_number, best_so_far(_values(by_number), direction), strict=True):
        run.log(
            {"trial_number": trial.number, "by_trial/objective": trial.value, "by_trial/best": best}
        )
    starts = [t.datetime_start for t in by_time if t.datetime_start is not None]
    first = min(starts) if starts else None
    for trial, best in zip(by_time, best_so_far(_values(by_time), direction), strict=True):
        done = trial.datetime_complete
        hours = (done - first).total_seconds() / 3600 if done and first else 0.0
        run.log({"wall_hours": hours, "by_time/objective": trial.value, "by_time/best": best})


def _log_tables(
    run: Run,
    by_number: Sequence[optuna.trial.FrozenTrial],
    ranked: Sequence[Any],
    best: Sequence[float],
) -> None:
    """The history and the top-k trials (with their genotypes) as W&B tables."""
    import wandb

    history = wandb.Table(
        columns=["trial", "value", "best_so_far", "worker", "completed"],
        data=[
            [
                t.number,
                t.value,
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
                _cells_text(r.genotype, "normal"),
                _cells_text(r.genotype, "reduce"),
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
        from cnas_hpc.tracking.plots import plot_best_vs_time, plot_history

        images["plots/history"] = wandb.Image(str(plot_history(study, folder / "history.png")))
        images["plots/best_vs_time"] = wandb.Image(
            str(plot_best_vs_time(study, folder / "best_vs_time.png"))
        )
    except Exception as exc:  # a picture is not worth losing the view
        log.warning("study view: history plots skipped (%s: %s)", type(exc).__name__, exc)
    if ranked:
        best = ranked[0]
        try:
            from cnas_hpc.tracking.cells import draw_genotype

            paths = draw_genotype(best.genotype, folder, "best", title=f"trial {best.number}")
            for cell, path in zip(CELL_KINDS, paths, strict=True):
                images[f"best/{cell}_cell"] = wandb.Image(
                    str(path), caption=f"trial {best.number}: {cell} cell"
                )
        except ImportError:
            log.warning("study view: cell pictures skipped (cnas_hpc.tracking.cells missing)")
        except Exception as exc:  # a picture is not worth losing the view
            log.warning("study view: cell pictures skipped (%s: %s)", type(exc).__name__, exc)
    if images:
        run.log(images)
