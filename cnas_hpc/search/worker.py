"""The worker loop: claim → decode → build → train → score → tell, until the budget is spent.

Contract:
    * A worker is one process per rank (``DistEnv.world_size`` ranks, e.g. one SLURM array task
      with ``tasks_per_node=G``). Global rank 0 owns the worker's trials: it alone claims, sets
      attributes, records heartbeats and tells; it broadcasts each assignment to the other ranks,
      which build the same network and train it with DDP.
    * A claimed trial is RUNNING and owned by exactly this worker until it is told (or until its
      worker is gone for good: then another worker fails it and re-enqueues its parameters, see
      :mod:`cnas_hpc.study.stale`).
    * A trial that raises is told PRUNED (non-finite loss, out of memory: bad architectures TPE
      should learn to avoid) or FAIL (anything else), with its reason in ``cnas:fail_reason``;
      memory is released and the worker goes on.
      ``search.max_consecutive_failures`` failures in a row stop the worker with
      :class:`WorkerError` (a broken config must not loop forever).
    * Rank 0's own troubles are AGREED by every rank through the next broadcast assignment, never
      left for the others to discover in a collective's 30-minute timeout: the database gone past
      ``study.retry_deadline_s`` (every rank raises
      :class:`~cnas_hpc.study.retry.DatabaseUnavailableError`), a study that cannot be used, a
      bug, or a stop request that reached rank 0 while it waited for the database (every rank
      stops; rank 0 hands over to submitit, which requeues the job).
    * The loop ends when the study holds ``search.n_trials`` COMPLETE trials.
    * Trackers reach the worker only as :class:`~cnas_hpc.search.observer.TrialObserver` s made by
      the caller's factory (rank 0 only): the worker imports no tracker and no study analysis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
import torch

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError, WorkerError
from cnas_hpc.common.heap import freeze_startup_heap
from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config import Settings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import SearchData, make_search_data
from cnas_hpc.distributed.collectives import broadcast_object
from cnas_hpc.distributed.env import (
    CpuBudget,
    DistEnv,
    distributed_session,
    select_device,
    size_cpu_threads,
)
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.search.observer import TrialObserver
from cnas_hpc.search.owner import Assignment, TrialOwner
from cnas_hpc.search.trial import TrialRunner
from cnas_hpc.space.encoding import CellEncoding, encoding_from_config
from cnas_hpc.study.retry import DatabaseUnavailableError, RetryStoppedError

log = logging.getLogger(__name__)

__all__ = ["ObserverFactory", "WorkerError", "WorkerReport", "run_worker"]

#: Builds rank 0's observers once the worker has loaded the study (given to them).
ObserverFactory = Callable[[optuna.Study], Sequence[TrialObserver]]


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    pruned: int = 0
    study_complete: int = 0


def run_worker(
    settings: Settings,
    env: DistEnv | None = None,
    *,
    observers: ObserverFactory | None = None,
) -> WorkerReport:
    """Run one worker (all its ranks call this) until the study's budget is spent.

    Args:
        settings: validated settings (the study must already be bootstrapped).
        env: the process's distributed identity (default: read from the environment).
        observers: makes rank 0's observers from the loaded study (default: none).

    Returns:
        What this worker did (the same counts on every rank).

    Raises:
        WorkerError: too many consecutive failed trials.
        StudyError: the study cannot be used.
        DatabaseUnavailableError: the database stayed down past ``study.retry_deadline_s``.
    """
    env = env or DistEnv.from_environment()
    device = select_device(env, settings.device)
    # Threads from the allocation (SLURM_CPUS_PER_TASK, CPU affinity), not from the cores the
    # process sees: four one-CPU workers with a thread per core oversubscribe a node 4x.
    budget = size_cpu_threads(env, settings.train.num_threads)
    # The USR2 flag is up before the first database call: a preemption while the worker waits
    # for the database at start-up is honoured too.
    with Preemption() as preemption, distributed_session(env, device):
        worker = _Worker(settings, env, device, observers, budget, preemption)
        # Imports, images and the study's first read live as long as the worker: keep the
        # cyclic collector from walking them again inside every later claim and step.
        freeze_startup_heap()
        return worker.run()


class _Worker:
    """The claim -> train -> tell loop of one worker, on every rank (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        env: DistEnv,
        device: torch.device,
        observers: ObserverFactory | None,
        budget: CpuBudget,
        preemption: Preemption,
    ) -> None:
        self.settings, self.env, self.device = settings, env, device
        self.preemption = preemption
        self.budget = budget
        encoding = encoding_from_config(settings.space)
        self.data: SearchData = make_search_data(load_images(settings.data), settings.data)
        self.report = WorkerReport()
        self.failures_in_a_row = 0
        self.owner: TrialOwner | None = None
        #: rank 0: what to broadcast next instead of a claim (an in-flight trial, a stop, ...)
        self.next_up: Assignment | None = None
        self._bug: BaseException | None = None
        if env.is_main:
            self._rank0(lambda: self._open(encoding, budget))
        made = observers(self.owner.study) if observers and self.owner is not None else ()
        self.observers = ObserverGroup(made)

    # -- rank 0's study operations, turned into assignments every rank agrees on ------------------

    def _open(self, encoding: CellEncoding, budget: CpuBudget) -> None:
        identity = {attrs.CPU_THREADS: budget.intra_op}
        self.owner = TrialOwner(
            self.settings, self.env, encoding, identity, lambda: self.preemption.requested
        )
        self.owner.flush_pending()
        self.next_up = self.owner.adopt_in_flight()

    def _rank0(self, action: Callable[[], None]) -> None:
        """Run a rank-0-only study operation; its failure becomes the next assignment."""
        try:
            action()
        except RetryStoppedError as exc:
            log.warning("%s: stopping", exc)
            self.next_up = Assignment("stop")
        except DatabaseUnavailableError as exc:
            self.next_up = Assignment("abort", error="database", message=str(exc))
        except StudyError as exc:
            self.next_up = Assignment("abort", error="study", message=str(exc))
        except Exception as exc:  # a bug: the other ranks must not wait for it in a collective
            self._bug = exc
            message = f"rank 0 failed: {type(exc).__name__}: {exc}".splitlines()[0]
            self.next_up = Assignment("abort", error="bug", message=message)

    def _next(self) -> Assignment:
        """Rank 0: a deferred assignment, a stop, or a claim. Other ranks: a placeholder."""
        owner = self.owner
        if not self.env.is_main:
            return Assignment("wait")
        if self.next_up is not None:
            assignment, self.next_up = self.next_up, None
            return assignment
        if owner is None:  # opening failed and its assignment was already broadcast
            return Assignment("abort", error="bug", message="no study")
        if self.preemption.requested:
            return Assignment("stop")
        claimed: list[Assignment] = []

        def claim() -> None:
            assignment, complete = owner.claim()
            self.report.study_complete = complete
            self.observers.notify("study_updated", complete, owner.best_value())
            claimed.append(assignment)

        self._rank0(claim)
        if self.next_up is not None:
            return self._next()
        return claimed[0]

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> WorkerReport:
        try:
            while True:
                assignment = broadcast_object(self._next())
                if assignment.kind == "done":
                    break
                if assignment.kind == "wait":
                    time.sleep(self.settings.search.poll_seconds)
                    continue
                if assignment.kind in ("stop", "abort"):
                    self._end(assignment)
                self._train(assignment)
        finally:
            self.observers.notify("close")
        return self.report

    def _end(self, assignment: Assignment) -> None:
        """Stop every rank the same way (see the module docstring); never returns."""
        if assignment.kind == "stop":
            if self.env.is_main:
                if self.owner is not None:
                    self.owner.mark_held()
                self.preemption.hand_over()
            raise SystemExit(0)
        if assignment.error == "database":
            raise DatabaseUnavailableError(assignment.message)
        if assignment.error == "study":
            raise StudyError(assignment.message)
        if self._bug is not None:
            raise self._bug
        raise RuntimeError(assignment.message)

    def _train(self, assignment: Assignment) -> None:
        runner = TrialRunner(
            assignment,
            self.settings,
            self.env,
            self.device,
            self.data,
            self.owner,
            self.observers,
            self.preemption,
            max_threads=self.budget.intra_op,
        )
        outcomes: list[str | None] = []
        if self.env.is_main:
            # Rank 0's tell may outlive the database: the others learn it from the next broadcast.
            self._rank0(lambda: outcomes.append(runner.run()))
            if self.next_up is not None:
                return
        else:
            outcomes.append(runner.run())
        self._count(outcomes[0])

    def _count(self, outcome: str | None) -> None:
        if outcome == "stopped":
            # Checkpointed; the trial stays RUNNING for the requeued job (or its retry).
            self._end(Assignment("stop"))
        if outcome is None or outcome == "pruned":
            if outcome is None:
                self.report.completed += 1
            else:
                self.report.pruned += 1
            self.failures_in_a_row = 0
            return
        self.report.failed += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.settings.search.max_consecutive_failures:
            raise WorkerError(
                f"{self.failures_in_a_row} consecutive trials failed, last: {outcome}"
            )
