"""Weights & Biases runs of the evaluation phase: one run per evaluated cell.

A run ``eval-<cell index>-<cell key>`` (``-seg<k>`` when resumed) with ``job_type="evaluation"``
in the group of the source study (so it sits next to the search's ``search-trial`` runs), or of
the evaluation's name for cells that came from files and presets. Config: the evaluation's
name, the cell's identity (key, source study and trial, genotype), the protocol; history: the
per-epoch metrics against ``epoch``; summary: the results (test accuracy and error, probe
accuracies, params, MACs, wall time) and the final state. Offline runs are uploaded later with
``wandb sync``. W&B errors never stop an evaluation (they are logged once).

An adapter of :class:`cnas_hpc.evaluate.observer.EvalObserver`; only global rank 0 makes one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cnas_hpc.config.evaluate import EvalSettings
from cnas_hpc.evaluate.observer import EVALUATION_JOB_TYPE, EvalInfo
from cnas_hpc.space.genotype import genotype_to_dict
from cnas_hpc.tracking.wandb_runs import Guard, init_run, log_row, run_dir, scrub, sync_command

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

log = logging.getLogger(__name__)


def eval_run_name(info: EvalInfo) -> str:
    """``eval-<index>-<key>``, plus ``-seg<k>`` for a resumed segment."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in info.cell_key)
    name = f"eval-{info.cell_index}-{safe}"
    return name if info.segment == 0 else f"{name}-seg{info.segment}"


def eval_config(info: EvalInfo) -> dict[str, Any]:
    """The W&B config of a cell's run (never a secret)."""
    return {
        "evaluation": info.name,
        "cell_index": info.cell_index,
        "cell_key": info.cell_key,
        "study": info.study_name,
        "trial": info.trial_number,
        "method": info.method,
        "protocol": info.protocol_name,
        "segment": info.segment,
        "start_epoch": info.start_epoch,
        "genotype": genotype_to_dict(info.genotype),
        "settings": {str(k): scrub(str(k), v) for k, v in info.settings.items()},
        "worker": {
            "label": info.worker,
            "world_size": info.world_size,
            "host": socket.gethostname(),
        },
    }


class WandbEvalTracker:
    """Writes one W&B run per evaluated cell (see the module docstring)."""

    def __init__(self, settings: EvalSettings) -> None:
        if not settings.wandb.enabled:
            raise ValueError("WandbEvalTracker needs wandb.mode offline or online")
        self.settings = settings
        self._guard = Guard(log)
        self._run: Run | None = None

    def cell_started(self, info: EvalInfo, *, n_params: int, macs: int) -> None:
        """Open the cell's run."""
        if self._run is not None:
            self._guard("finish", self._close, "ABANDONED", {})
        self._run = self._guard("init", self._open, info, n_params, macs)

    def _open(self, info: EvalInfo, n_params: int, macs: int) -> Run:
        cfg = self.settings.wandb
        run = init_run(
            self.settings.output_dir,
            cfg,
            name=eval_run_name(info),
            job_type=EVALUATION_JOB_TYPE,
            group=info.study_name or info.name,
            run_config={**eval_config(info), "n_params": n_params, "macs": macs},
            tags=[*cfg.tags, "evaluation", f"cell-{info.cell_index}"],
        )
        run.define_metric("epoch")
        run.define_metric("epoch/*", step_metric="epoch")
        return run

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Log one epoch's metrics against ``epoch``."""
        if self._run is not None:
            self._guard("log", log_row, self._run, ("epoch", epoch), "epoch/", metrics)

    def cell_finished(self, state: str, summary: Mapping[str, Any]) -> None:
        """Finish the run with the results as its summary."""
        if self._run is not None:
            self._guard("finish", self._close, state, summary)

    def _close(self, state: str, summary: Mapping[str, Any]) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            values = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
            run.summary.update({"state": state, **values})
        finally:
            folder = run_dir(run)
            run.finish(exit_code=1 if state == "FAIL" else 0)
        if self.settings.wandb.mode == "offline":
            log.info("W&B offline run %s: upload with: %s", folder.name, sync_command(folder))

    def close(self) -> None:
        """Finish a run left open (a cell that never reported its end)."""
        if self._run is not None:
            self._guard("finish", self._close, "ABANDONED", {})
