"""Trial checkpoints: the training state of one candidate, saved atomically and loaded safely.

Contract:
    * A checkpoint belongs to a trial's ORIGINAL number (a retry of a stale trial resumes from
      the dead trial's checkpoint): ``<dir>/<study>/trial-<original number>.pt``.
    * Only global rank 0 writes; every rank reads (ranks of a worker share a file system).
    * Writes go to a temporary file in the same folder and are renamed over the old one, so a
      kill during a write leaves the previous checkpoint intact.
    * A checkpoint is never replaced by an OLDER one of the same architecture (fewer epochs and
      steps done): a second worker that started a cell from scratch while its owner still
      trained cannot throw the owner's progress away. A file of another architecture, or one
      that does not load, is replaced.
    * Loads use ``torch.load(weights_only=True)``: the payload is tensors, numbers, strings,
      lists and dicts only, never pickled objects.
    * The checkpoint of a finished trial (told COMPLETE or FAIL) is removed by its owner.
    * A checkpoint records HOW its steps ran (:attr:`TrainState.plan`), so a resumed run trains
      under the same plan as the interrupted one instead of measuring anew (a busy node may
      measure another one, and a different thread count or layout rounds differently).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnas_hpc.distributed.collectives import any_across_ranks

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything needed to continue training a candidate exactly where it stopped.

    ``epoch`` is the number of completed epochs; ``step_in_epoch`` the steps already done in
    epoch ``epoch`` (0 at an epoch boundary); ``step`` the global step. ``history`` holds the
    completed epochs' metrics as plain dicts. Augmentation randomness is re-derived from
    (seed, rank, epoch, step), so it needs no saved generator state.
    """

    trial: int
    genotype_json: str
    epoch: int
    step_in_epoch: int
    step: int
    loss_sum: float
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    extra: dict[str, torch.Tensor]
    history: list[dict[str, float | None]]
    wall_s: float
    #: the learning-rate scheduler's ``state_dict`` (empty in checkpoints written before it
    #: was saved: the scheduler is then fast-forwarded by ``step`` steps).
    scheduler: dict[str, Any] = field(default_factory=dict)
    #: how the steps ran, in the trainer's own terms (the proxy's
    #: :func:`~cnas_hpc.train.plan.plan_record`, the evaluation network's memory format and
    #: AMP): plain strings, numbers, booleans and ``None``, with the device type it was chosen
    #: on under ``"device"``. Empty in checkpoints written before it was saved: a resumed run
    #: then measures its plan as a fresh one does.
    plan: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """A ``weights_only``-loadable dict."""
        return dict(self.__dict__)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_payload`."""
        return cls(**payload)


class SaveClock:
    """When a trainer's next time-based checkpoint is due, and how long this process trained.

    Shared by both trainers (the contrastive loop and the supervised evaluation): each one
    creates a clock when training (re)starts, asks :meth:`due` before a step (then agrees the
    answer across ranks; the clock itself reads only the host's monotonic time), calls
    :meth:`saved` whenever it reaches a save point (also on ranks that write nothing, so every
    rank's clock restarts together), and records ``prior_wall_s + elapsed_s()`` as a
    checkpoint's ``wall_s``.

    Args:
        every_s: seconds between time-based saves; ``math.inf`` (no checkpointing) never saves
            by time.
    """

    def __init__(self, every_s: float = math.inf) -> None:
        self.every_s = every_s
        self.started = self.last_save = time.perf_counter()

    def due(self) -> bool:
        """Whether ``every_s`` seconds passed since the last save (or the start)."""
        return time.perf_counter() - self.last_save >= self.every_s

    def saved(self) -> None:
        """A save point was reached: the next time-based save is ``every_s`` from now."""
        self.last_save = time.perf_counter()

    def elapsed_s(self) -> float:
        """Seconds since the clock was created (this process's share of the run)."""
        return time.perf_counter() - self.started


def checkpoint_path(root: Path, study_name: str, trial_key: int) -> Path:
    """The checkpoint file of trial ``trial_key`` (an original trial number) of a study."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return root / safe / f"trial-{trial_key}.pt"


def saved_progress(path: Path, genotype_json: str) -> tuple[int, int] | None:
    """``(epoch, step_in_epoch)`` of the checkpoint at ``path`` when it is one of
    ``genotype_json``'s, else None (missing, unreadable, another architecture)."""
    if not path.exists():
        return None
    try:
        # mmap: only the few scalars are read, not the tensors.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or payload.get("genotype_json") != genotype_json:
        return None
    return int(payload.get("epoch", 0)), int(payload.get("step_in_epoch", 0))


def save_checkpoint(state: TrainState, path: Path) -> bool:
    """Atomically write ``state`` to ``path`` (temp file + rename), unless ``path`` holds a
    checkpoint of the same architecture that is further along (then nothing is written).

    Returns:
        Whether ``state`` was written.
    """
    saved = saved_progress(path, state.genotype_json)
    if saved is not None and saved > (state.epoch, state.step_in_epoch):
        log.warning(
            "not replacing %s (epoch %d step %d) with an older checkpoint (epoch %d step %d)",
            path, saved[0], saved[1], state.epoch, state.step_in_epoch,
        )  # fmt: skip
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state.to_payload(), tmp)
    tmp.replace(path)
    log.info(
        "checkpoint at epoch %d step %d: %s",
        state.epoch,
        state.step_in_epoch,
        path,
    )
    return True


def load_checkpoint(path: Path, *, genotype_json: str) -> TrainState | None:
    """The state saved at ``path``, or ``None`` when there is none or it is unusable.

    A checkpoint of another architecture (e.g. a stale file from an older study of the same
    name) is ignored with a warning rather than loaded into the wrong network.
    """
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = TrainState.from_payload(payload)
    except Exception as exc:  # a broken file means "start over", not a crash
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.genotype_json != genotype_json:
        log.warning("ignoring checkpoint %s: it belongs to another architecture", path)
        return None
    return state


def remove_checkpoint(path: Path) -> None:
    """Delete a finished trial's checkpoint (missing is fine)."""
    path.unlink(missing_ok=True)


def reuse_agreed(
    why_not: str | None, device: torch.device, logger: logging.Logger, run: str, what: str
) -> bool:
    """Whether EVERY rank reuses the ``what`` a resumed ``run``'s checkpoint recorded:
    ``why_not`` is this rank's reason against it (None: it fits here). Agreed in one collective,
    so either all ranks measure anew (and meet in its broadcasts) or none does; why not goes to
    the caller's ``logger``. Every rank must call it.
    """
    if any_across_ranks(why_not is not None, device):
        logger.info(
            "resumed %s: measuring its %s again, not reusing the checkpoint's: %s",
            run,
            what,
            why_not or "it does not fit on another rank",
        )
        return False
    return True
