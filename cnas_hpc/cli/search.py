"""Glue between Hydra and the library: the bootstrap callback and the search task function.

Contract:
    * :class:`BootstrapCallback` runs in the SUBMITTING process (``on_run_start`` for a single
      run, ``on_multirun_start`` before the launcher queues anything): it validates the config,
      the data and the launcher request, then creates or checks the study. On bad input it prints
      one line ``error: ...`` and exits with status 2: nothing is queued, nothing is written.
    * :func:`run_search_task` is the body of every worker (every rank of every array task): it
      only loads the study, runs the worker loop, and on a single local run prints the best
      trials and writes ``best_genotype.json``.

What the submitting side refuses (each with its own line): invalid values (unknown op or
encoding, impossible sizes, fractions outside (0, 1], ``search.n_trials <= 0``, ...: see
:mod:`cnas_hpc.config`), missing data files, a search split smaller than one batch (digits and
npz, whose image counts are cheap to read), a launcher asking for more GPUs than tasks or a batch
the world size does not divide, an unreachable database, refused credentials, a study name taken
by another search space, objective or scoring setup (each differing key named), a password
written into ``study.storage``, an ``output_dir`` that cannot be made, a proxy over the worker's
memory (:func:`~cnas_hpc.cli.common.check_proxy_memory`), and on SLURM what the cluster cannot
grant (:func:`~cnas_hpc.cli.common.check_slurm_request`: partition, GPUs, ``MaxArraySize``).
Typos in group options and keys are refused earlier, before Hydra runs
(:mod:`cnas_hpc.cli.overrides`). A multirun on a complete study submits nothing (exit 0).

Secrets: the database password comes from ``PGPASSWORD``, ``~/.pgpass`` or an
``${oc.env:VAR}`` interpolation inside the URL; never from text Hydra saves. The callback runs
before Hydra writes anything (``.hydra/*.yaml``, ``multirun.yaml``, submitit pickles), so a
literal password is refused before it reaches a file (see
:func:`cnas_hpc.common.storage_url.check_storage_secret`); the URL is only ever printed masked.

The observers of each worker (terminal progress, W&B trial runs, the W&B study view) are
composed here (:func:`make_observers`) and handed to the worker, which knows them only through
its observer protocol.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import optuna
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from tabulate import tabulate

from cnas_hpc.analysis.study_view import StudyViewObserver
from cnas_hpc.analysis.summary import best_trials, format_table, write_best_genotypes
from cnas_hpc.cli.common import (
    CONFIG_PATH,
    USER_ERRORS,
    check_config_secrets,
    check_launcher,
    check_output_dir,
    check_proxy_memory,
    check_slurm_request,
    fail,
    settings_of,
)
from cnas_hpc.cli.multirun import EXIT_WORKERS_DIED, OUTCOME, record_array
from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.common.errors import ConfigError, StudyError
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config import Settings
from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.train import check_global_batch
from cnas_hpc.data.datasets import (
    ImageArrays,
    check_available,
    check_folder_images,
    digits_arrays,
    inspect_npz,
)
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.distributed.cluster import ask_cluster
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.distributed.jobs import array_tasks_held
from cnas_hpc.search.observer import TrialObserver
from cnas_hpc.search.worker import run_worker
from cnas_hpc.study.lifecycle import arrays_of, bootstrap_study, load_study
from cnas_hpc.study.pareto import best_mean_rank, mean_ranks, pareto_view, ranks_by_mean
from cnas_hpc.study.retry import DatabaseUnavailableError
from cnas_hpc.tracking.progress import SearchProgress
from cnas_hpc.tracking.wandb_tracker import WandbTracker

log = logging.getLogger("cnas_hpc")

#: Exit status of a worker whose database stayed down past ``study.retry_deadline_s``.
EXIT_DATABASE_DOWN = 3
#: Exit status of a worker that failed for a reason that is not the user's input (a bug).
EXIT_WORKER_FAILED = 1


def _source_size(cfg: DataConfig) -> tuple[int, bool] | None:
    """``(number of images, has labels)`` of the source, where that is cheap; else ``None``.

    digits: scikit-learn's bundled set (1,797). npz: read from the array headers in the zip
    archive, without decompressing the images (which also checks their dtype and layout).

    Raises:
        ValueError: the npz file is not an npz archive of images the loader accepts.
    """
    if cfg.source == "digits":
        return int(digits_arrays()[1].shape[0]), True
    if cfg.source != "npz" or cfg.path is None:
        return None
    contents = inspect_npz(Path(cfg.path).expanduser().absolute())
    return contents.n_images, contents.labeled


def check_readable(cfg: DataConfig) -> None:
    """Refuse data the workers could not load (checked cheaply, from headers).

    Raises:
        ValueError: an npz file with the wrong dtype, layout or channels; an image folder with
            a file that is not an image.
    """
    if cfg.source == "npz" and cfg.path is not None:
        inspect_npz(Path(cfg.path).expanduser().absolute())
    elif cfg.source == "folder" and cfg.root is not None:
        check_folder_images(Path(cfg.root).expanduser().absolute())


def check_search_split(settings: Settings) -> None:
    """Refuse a search split with fewer training images than one global batch.

    Only for sources whose size is cheap to know (digits, npz); other sources are checked by
    the worker when it loads them.

    Raises:
        ConfigError: the training split is smaller than ``train.batch_size``.
        ValueError: the split leaves no training image, or wants labels the source lacks.
    """
    data = settings.data
    found = _source_size(data)
    if found is None:
        return
    n, labeled = found
    if data.max_images is not None:
        n = min(n, data.max_images)
    # The real split function on 1x1 stand-in images: its sizes can never drift from the
    # worker's, and n bytes x 3 is cheap even for large sources.
    stand_in = ImageArrays(
        torch.zeros((n, 3, 1, 1), dtype=torch.uint8),
        torch.zeros(n, dtype=torch.int64) if labeled else None,
        str(data.path) if data.source == "npz" else data.source,
    )
    n_train = len(make_search_data(stand_in, data).train)
    check_global_batch(settings.train.batch_size, 1, n_train)


def check_no_live_array(settings: Settings) -> None:
    """Refuse to submit a second array while one still works the study.

    Runs after the bootstrap: when the study existed (the only case with an array), the
    bootstrap wrote nothing.

    Raises:
        StudyError: one line naming the array, how to follow it and how to stop it.
    """
    for array in arrays_of(settings):
        held = array_tasks_held(array)
        if held:
            raise StudyError(
                f"study {settings.study.name!r} is still being worked by SLURM array {array} "
                f"({len(held)} task(s) pending or running): no second array is submitted. Wait "
                f"for it (`squeue -j {array}`, `python launch/report.py`), or stop it with "
                f"`scancel {array}` and run the command again"
            )


def check_sweep(overrides: list[str]) -> int:
    """The number of jobs a multirun's sweep overrides ask for; refuse a sweep of none.

    Raises:
        ConfigError: the sweep yields no job (``'worker=range(0)'``).
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    n_jobs = sum(len(batch) for batch in batches)
    if n_jobs == 0:
        sweeps = [str(o.input_line) for o in parsed if o.is_sweep_override()]
        raise ConfigError(
            f"{', '.join(sweeps) or 'the sweep'} asks for no worker: "
            "sweep at least one (e.g. 'worker=range(4)')"
        )
    return n_jobs


def validate_and_bootstrap(
    cfg: DictConfig, launcher: DictConfig | None, *, slurm: bool = False, n_jobs: int | None = None
) -> Settings:
    """Everything the submitting side checks, then the one-time study bootstrap.

    The order puts what needs nothing first, SLURM next and the database last, so that a
    refused config never writes to the database (the bootstrap is the only writer). A multirun
    on a study that is already complete submits nothing (one line, exit status 0).

    Args:
        cfg: the composed config (hydra node included).
        launcher: the launcher's config of a multirun (None for a single run).
        slurm: the multirun submits a SLURM array (refused while another works the study).
        n_jobs: the multirun's number of workers (None for a single run).
    """
    check_config_secrets(cfg)
    settings = settings_of(cfg)
    check_config_secrets(cfg, settings)
    check_output_dir(settings.output_dir)
    check_available(settings.data)
    check_readable(settings.data)
    check_search_split(settings)
    check_launcher(launcher, settings.train.batch_size)
    cluster = ask_cluster() if slurm and launcher is not None else None
    if slurm and launcher is not None:
        check_slurm_request(launcher, n_jobs or 1, cluster)
    check_proxy_memory(settings, launcher if slurm else None, cluster)
    result = bootstrap_study(settings)
    if slurm and not result.created:
        check_no_live_array(settings)
    log.info(
        "study %r in %s: %s, %d/%d trials complete",
        result.study_name,
        mask_url(result.storage_url),
        "created" if result.created else "resumed",
        result.n_complete,
        settings.search.n_trials,
    )
    if n_jobs is not None and result.n_complete >= settings.search.n_trials:
        print(
            f"study {result.study_name!r} is complete ({result.n_complete}/"
            f"{settings.search.n_trials} trials): nothing submitted; raise search.n_trials "
            "to search further",
            flush=True,
        )
        raise SystemExit(0)
    return settings


class BootstrapCallback(Callback):
    """Hydra callback: validate and bootstrap once, in the submitting process."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A single run may itself be one rank of a torchrun job: only rank 0 bootstraps.
        if DistEnv.from_environment().global_rank != 0:
            return
        self._bootstrap(config, launcher=None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher")
        slurm = "Slurm" in str(launcher.get("_target_", ""))
        try:
            n_jobs = check_sweep(list(config.hydra.overrides.task))
        except USER_ERRORS as exc:
            fail(str(exc))
        self._bootstrap(
            config,
            launcher=launcher if "tasks_per_node" in launcher else None,
            slurm=slurm,
            n_jobs=n_jobs,
        )
        OUTCOME.recorder = partial(record_array, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            print_summary(settings_of(config))
        except Exception as exc:
            log.warning("could not summarise the study: %s", exc)
        if OUTCOME.deaths:
            fail(OUTCOME.summary(), EXIT_WORKERS_DIED)

    @staticmethod
    def _bootstrap(
        config: DictConfig,
        launcher: DictConfig | None,
        slurm: bool = False,
        n_jobs: int | None = None,
    ) -> None:
        try:
            validate_and_bootstrap(config, launcher, slurm=slurm, n_jobs=n_jobs)
        except USER_ERRORS as exc:
            fail(str(exc))


def print_front(study: optuna.Study, settings: Settings) -> None:
    """A multi-objective study's end: its Pareto front (Optuna's ``best_trials``: feasible
    trials only when constrained), one line per cell; ``launch/report.py`` draws it and writes
    ``pareto.json``; then the front cell with the best mean rank over the objectives
    (:func:`cnas_hpc.study.pareto.best_mean_rank`)."""
    names = list(settings.search.values)
    front = sorted(study.best_trials, key=lambda t: t.number)
    rows = [
        [t.number, *(f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.5g}" for v in t.values)] for t in front
    ]
    print(f"\nPareto front of study {study.study_name!r} ({len(front)} cells, {', '.join(names)}):")
    print(tabulate(rows, ["trial", *names], tablefmt="simple", disable_numparse=True))
    view = pareto_view(study)
    ranks = mean_ranks(view) if view is not None else {}
    pick = best_mean_rank(view, ranks) if view is not None else None
    if pick is not None:
        print(
            f"Best mean rank over the objectives: trial {pick.number} "
            f"(mean rank {ranks[pick.number]:.1f} of {len(ranks)} cells)"
        )
    print("Draw it and write pareto.json with: launch/report.py (same study settings)", flush=True)


def print_summary(settings: Settings, k: int = 5) -> Path | None:
    """Print the best trials and write ``<output_dir>/<study>/best_genotype.json``.

    A multi-objective study prints its front first (:func:`print_front`); one of label-free
    objectives only (the default ``[score, naswot]``) then ranks its best trials by their mean
    rank (:func:`cnas_hpc.study.pareto.primary_ranking`); a cost-aware one stops at the front.
    """
    study = load_study(settings, worker=settings.worker).study
    if settings.search.multi_objective:
        print_front(study, settings)
        if not ranks_by_mean(study):
            return None
    ranked = best_trials(study, k)
    if not ranked:
        log.warning("study %r has no COMPLETE trial yet", study.study_name)
        return None
    path = Path(settings.output_dir) / study.study_name / "best_genotype.json"
    write_best_genotypes(ranked, path, study_name=study.study_name)
    best = ranked[0]
    order = settings.search.objective
    if ranks_by_mean(study):
        order = f"mean rank over {', '.join(settings.search.values)}; value: {order}"
    print(f"\nBest trials of study {study.study_name!r} ({order}):")
    print(format_table(ranked, settings.search.objective))
    print(f"\nBest genotype (trial {best.number}):\n{best.genotype}")
    print(f"Written to {path}", flush=True)
    return path


def make_observers(settings: Settings, study: optuna.Study) -> list[TrialObserver]:
    """Rank 0's observers: terminal progress, and with W&B on, trial runs and the study view."""
    observers: list[TrialObserver] = [SearchProgress(settings.search.n_trials)]
    if settings.wandb.enabled:
        observers.append(WandbTracker(settings))
        # The study view ranks one value; a multi-objective study's trial runs log every
        # objective (summary ``objective/<name>``) and launch/report.py draws its front.
        if not settings.search.multi_objective:
            observers.append(StudyViewObserver(settings, study=lambda: study))
    return observers


def run_search_task(cfg: DictConfig) -> int:
    """Body of every worker process. Returns the number of trials this worker completed.

    Ends with one ``error:`` line: status 2 for the user's input (config, study, a broken
    config failing every trial), :data:`EXIT_DATABASE_DOWN` when the database stayed down past
    ``study.retry_deadline_s`` (the line says where the unsent result waits).
    """
    try:
        settings = settings_of(cfg)
        env = DistEnv.from_environment()
        report = run_worker(settings, env, observers=partial(make_observers, settings))
        if env.is_main and HydraConfig.get().mode == RunMode.RUN:
            print_summary(settings)
    except USER_ERRORS as exc:
        fail(str(exc))
    except DatabaseUnavailableError as exc:
        fail(str(exc), EXIT_DATABASE_DOWN)
    except Exception as exc:
        # Not the user's input: keep the traceback in the log, end with one line and a non-zero
        # status (Hydra would otherwise return it as a result and SLURM record COMPLETED 0:0).
        log.exception("worker failed")
        fail(f"worker failed: {type(exc).__name__}: {exc}", EXIT_WORKER_FAILED)
    return report.completed


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="search")
def hydra_main(cfg: DictConfig) -> int:
    """``cnas-search`` (and ``launch/search.py``): every worker (and every rank of it) runs this
    Hydra task."""
    return run_search_task(cfg)


#: The command: overrides checked first (a typo: one ``error:`` line), then the Hydra app.
main = checked_command("search", hydra_main)
