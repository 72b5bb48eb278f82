"""Weights & Biases runs of search trials: one run per trial (per segment of a resumed trial).

What is written (group = the study's name, so one W&B group holds a whole search): a run
``trial-<n>`` with ``job_type="search-trial"``. Its config holds the trial's identity
(``study``, ``trial``, ``segment``, ``start_epoch``), its ``genotype``, its ``params``, the masked
``hparams`` (nested by section) and the ``worker`` / array-task identity. The history holds the
per-step metrics (``train/loss``, ``train/lr``, ``train/images_per_s``, ``train/memory_mb``
against ``train/step``) and the per-epoch ones (``epoch/objective``, ``epoch/train_loss`` ...
against ``epoch``). The summary holds ``state``, ``value``, ``n_params``, ``macs``, ``wall_s`` and
the worker's result fields. The run is always finished, also when the trial fails (``state``
FAIL, W&B exit code 1) or is preempted (``state`` INTERRUPTED). The study-level snapshots
(``search-study`` runs) are written by :mod:`cnas_hpc.analysis.study_view`.

Requeued and resumed trials. W&B cannot resume an offline run (wandb issues #2423, #4624), so a
trial resumed from a checkpoint (``TrialInfo.segment`` k > 0) gets a NEW run,
``trial-<n>-seg<k>``, tied to its trial by config (``trial``, ``segment``, ``start_epoch``) and
by the tag ``trial-<n>`` every segment carries. Epochs and steps are logged with their true
numbers (``epoch`` continues at ``start_epoch + 1``), so the segments of one trial together hold
every epoch once.

Failure policy: many concurrent workers can hit W&B's rate limits (HTTP 429) or a flaky network.
Every wandb call is wrapped (:class:`~cnas_hpc.tracking.wandb_runs.Guard`) and the worker goes on.
A trial whose run failed to start is not tracked.

This module is an adapter: it implements the search worker's observer protocol
(:class:`cnas_hpc.search.observer.TrialObserver`). Only global rank 0 of a worker creates one.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cnas_hpc.config.settings import Settings
from cnas_hpc.config.wandb import WandbConfig
from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.space.genotype import genotype_to_dict
from cnas_hpc.tracking.wandb_runs import (
    TRIAL_JOB_TYPE,
    Guard,
    init_run,
    log_row,
    run_dir,
    safe_hparams,
    scrub,
    sync_command,
    wandb_config_of,
    wandb_root,
)

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

log = logging.getLogger(__name__)


def trial_run_name(number: int, segment: int = 0) -> str:
    """``trial-<n>`` for a fresh trial, ``trial-<n>-seg<k>`` for its k-th resumed segment."""
    return f"trial-{number}" if segment == 0 else f"trial-{number}-seg{segment}"


def trial_config(info: TrialInfo) -> dict[str, Any]:
    """The W&B config of a trial's run (never a secret: see the module docstring)."""
    return {
        "study": info.study_name,
        "trial": info.number,
        "segment": info.segment,
        "start_epoch": info.start_epoch,
        "genotype": genotype_to_dict(info.genotype),
        "params": {str(k): scrub(str(k), v) for k, v in info.params.items()},
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


class WandbTracker:
    """A :class:`~cnas_hpc.search.observer.TrialObserver` that writes one W&B run per trial.

    Never raises from an observer method: W&B errors are logged (a warning for the first
    failure of each kind of call, debug after) and tracking goes on without them.

    Args:
        settings: the search's settings (``output_dir``, the hyper-parameters).
        config: W&B settings; default ``settings.wandb``. Must not be disabled.

    Raises:
        ValueError: ``config.mode`` is ``disabled``.
    """

    def __init__(
        self,
        settings: Settings,
        config: WandbConfig | None = None,
    ) -> None:
        self.config = config or wandb_config_of(settings)
        if not self.config.enabled:
            raise ValueError("WandbTracker needs wandb.mode offline or online, got 'disabled'")
        self._settings = settings
        self._guard = Guard(log)
        self._run: Run | None = None
        self._info: TrialInfo | None = None
        self._n_params: int | None = None
        self._macs: int | None = None
        self._started = 0.0
        self.root = wandb_root(settings.output_dir, self.config)
        if self.config.mode == "offline":
            log.info(
                "W&B offline: runs are written under %s; upload them later with: %s",
                self.root / "wandb",
                sync_command(self.root / "wandb" / "offline-run-*"),
            )
        else:
            log.info("W&B online: project %s", self.config.project)

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
        self._guard("log", log_row, run, ("train/step", step), "train/", metrics)

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Log per-epoch metrics against ``epoch`` (the true, 1-based epoch number)."""
        run = self._run
        if run is None:
            return
        self._guard("log", log_row, run, ("epoch", epoch), "epoch/", metrics)

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        """Finish the trial's run with its summary."""
        run = self._run
        self._run = self._info = None
        if run is not None:
            self._guard("finish", self._close_run, run, state, value, summary)

    def study_updated(self, complete: int, best: float | None) -> None:
        """Nothing: the study-level view is :mod:`cnas_hpc.analysis.study_view`'s."""

    def close(self) -> None:
        """Nothing to release: every run is finished with its trial."""

    # ---- trial runs ---------------------------------------------------------------------

    def _open_trial_run(self, info: TrialInfo) -> Run:
        run = init_run(
            self._settings.output_dir,
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
            folder = run_dir(run)
            # A failed trial ends as a failed W&B run, so W&B's own state filters find it.
            run.finish(exit_code=1 if state == "FAIL" else 0)
        if self.config.mode == "offline":
            log.info("W&B offline run %s: upload with: %s", folder.name, sync_command(folder))
