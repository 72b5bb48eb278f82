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

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

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


@dataclass(frozen=True)
class Checkpointing:
    """How a trainer saves and resumes (rank 0 saves, every rank resumes): one shape for both
    trainers (``train.loop.train_candidate`` and ``train.supervised.train_supervised``).

    Attributes:
        save: called on rank 0 with the state to persist (None on other ranks: nothing to do).
        every_s: also save within an epoch when this many seconds passed since the last save.
        resume: the state to continue from (loaded by every rank), or None for a fresh start.
        trial: the number recorded in saved states (:attr:`TrainState.trial`): a search trial's
            original number, or a cell's index in its evaluation.
        genotype_json: the architecture recorded in saved states.
    """

    save: Callable[[TrainState], None] | None
    every_s: float
    resume: TrainState | None
    trial: int
    genotype_json: str


#: The type of a trainer's per-epoch metrics record (a dataclass, stored as a dict).
MetricsT = TypeVar("MetricsT")


@dataclass
class TrainPosition(Generic[MetricsT]):
    """Where a trainer stands: the next epoch and step, and what the run did so far.

    ``loss_sum`` is the current epoch's partial loss sum of a trainer that keeps it on the host
    (the contrastive loop; the supervised trainer keeps its sums in ``TrainState.extra`` and
    leaves it 0).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    prior_wall_s: float = 0.0
    history: list[MetricsT] = field(default_factory=list)
    resumed_from: int | None = None

    @classmethod
    def of(cls, resume: TrainState, metrics: Callable[..., MetricsT]) -> Self:
        """The position ``resume`` was saved at; ``metrics(**entry)`` rebuilds each history
        entry (the inverse of ``dataclasses.asdict``)."""
        return cls(
            epoch=resume.epoch,
            step_in_epoch=resume.step_in_epoch,
            step=resume.step,
            loss_sum=resume.loss_sum,
            prior_wall_s=resume.wall_s,
            history=[metrics(**h) for h in resume.history],
            resumed_from=resume.epoch,
        )

    def totals(self, images_seen: int, elapsed_s: float) -> dict[str, Any]:
        """The fields both trainers' results report of the run: ``epochs_done``, ``steps``,
        ``wall_s`` (every session's, the resumed ones' included), ``images_per_s`` (this
        session's ``images_seen`` over its ``elapsed_s``), ``history`` and
        ``resumed_from_epoch``."""
        return {
            "epochs_done": len(self.history),
            "steps": self.step,
            "wall_s": self.prior_wall_s + elapsed_s,
            "images_per_s": images_seen / max(elapsed_s, 1e-9),
            "history": self.history,
            "resumed_from_epoch": self.resumed_from,
        }


class PositionSaver:
    """Saves a trainer's position (rank 0) at the save points the trainer agrees on.

    Shared by both trainers: owns the :class:`SaveClock` of ``checkpointing.every_s`` (never
    due without checkpointing) and builds the :class:`TrainState` from a position.

    Args:
        checkpointing: where states go and how often, or None (nothing is saved).
        model: the network whose weights are saved (copied to the CPU).
        parts: the trainer's own entries of the state (``optimizer``, ``scaler``, ``extra``,
            ``scheduler``, ``plan``); called only on the rank that writes, since it may copy
            tensors from the device.
    """

    def __init__(
        self,
        checkpointing: Checkpointing | None,
        model: torch.nn.Module,
        parts: Callable[[], dict[str, Any]],
    ) -> None:
        self.checkpointing = checkpointing
        self.model = model
        self.parts = parts
        self.clock = SaveClock(checkpointing.every_s if checkpointing is not None else math.inf)

    def due(self) -> bool:
        """Whether a time-based save is due (this rank's clock; the trainer agrees it)."""
        return self.clock.due()

    def save(self, position: TrainPosition[Any]) -> None:
        """Persist ``position`` (the state BEFORE its next step) through ``checkpointing.save``.

        Every rank calls it (its clock restarts); only a rank with a ``save`` callable writes.
        """
        self.clock.saved()
        ckpt = self.checkpointing
        if ckpt is None or ckpt.save is None:
            return
        ckpt.save(
            TrainState(
                trial=ckpt.trial,
                genotype_json=ckpt.genotype_json,
                epoch=position.epoch,
                step_in_epoch=position.step_in_epoch,
                step=position.step,
                loss_sum=position.loss_sum,
                model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                history=[dataclasses.asdict(h) for h in position.history],
                wall_s=position.prior_wall_s + self.clock.elapsed_s(),
                **self.parts(),
            )
        )


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
