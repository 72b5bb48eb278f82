"""The worker loop: claim → decode → build → train → score → tell, until the budget is spent.

Contract:
    * A worker is one process per rank (``DistEnv.world_size`` ranks, e.g. one SLURM array task
      with ``tasks_per_node=G``). Global rank 0 owns the worker's trials: it alone claims, sets
      attributes, records heartbeats and tells; it broadcasts each assignment to the other ranks,
      which build the same network and train it with DDP.
    * A claimed trial is RUNNING and owned by exactly this worker until it is told (or until its
      heartbeat goes stale, when another worker fails it and re-enqueues its parameters).
    * A trial that raises is told PRUNED (non-finite loss, out of memory: bad architectures TPE
      should learn to avoid) or FAIL (anything else), with its reason in ``cnas:fail_reason``;
      memory is released and the worker goes on.
      ``search.max_consecutive_failures`` failures in a row stop the worker with
      :class:`WorkerError` (a broken config must not loop forever).
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
from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config import Settings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import SearchData, make_search_data
from cnas_hpc.distributed.collectives import broadcast_object
from cnas_hpc.distributed.env import (
    CpuBudget,
    DistEnv,
    apply_cpu_budget,
    cpu_budget,
    distributed_session,
    select_device,
)
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.search.observer import TrialObserver
from cnas_hpc.search.owner import Assignment, TrialOwner
from cnas_hpc.search.trial import TrialRunner
from cnas_hpc.space.encoding import encoding_from_config

log = logging.getLogger(__name__)

#: Builds rank 0's observers once the worker has loaded the study (given to them).
ObserverFactory = Callable[[optuna.Study], Sequence[TrialObserver]]


class WorkerError(RuntimeError):
    """The worker cannot go on (e.g. too many consecutive failures); one-line message."""


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
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
        StudyError: the study cannot be loaded.
    """
    env = env or DistEnv.from_environment()
    device = select_device(env, settings.device)
    # Threads from the allocation (SLURM_CPUS_PER_TASK, CPU affinity), not from the cores the
    # process sees: four one-CPU workers with a thread per core oversubscribe a node 4x.
    budget = cpu_budget(env, settings.train.num_threads)
    apply_cpu_budget(budget)
    with distributed_session(env, device):
        return _Worker(settings, env, device, observers, budget).run()


class _Worker:
    """The claim -> train -> tell loop of one worker, on every rank (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        env: DistEnv,
        device: torch.device,
        observers: ObserverFactory | None,
        budget: CpuBudget,
    ) -> None:
        self.settings, self.env, self.device = settings, env, device
        encoding = encoding_from_config(settings.space)
        self.data: SearchData = make_search_data(load_images(settings.data), settings.data)
        identity = {attrs.CPU_THREADS: budget.intra_op}
        self.owner = TrialOwner(settings, env, encoding, identity) if env.is_main else None
        made = observers(self.owner.study) if observers and self.owner is not None else ()
        self.observers = ObserverGroup(made)
        self.report = WorkerReport()
        self.failures_in_a_row = 0

    def run(self) -> WorkerReport:
        in_flight = None
        if self.owner is not None:
            self.owner.flush_pending()
            in_flight = self.owner.adopt_in_flight()
        with Preemption() as preemption:
            try:
                while True:
                    assignment = broadcast_object(self._next(in_flight))
                    in_flight = None
                    if assignment.kind == "done":
                        break
                    if assignment.kind == "wait":
                        time.sleep(self.settings.search.poll_seconds)
                        continue
                    self._train(assignment, preemption)
            finally:
                self.observers.notify("close")
        return self.report

    def _next(self, in_flight: Assignment | None) -> Assignment:
        """Rank 0: the adopted in-flight trial, else a fresh claim. Other ranks: a placeholder."""
        if self.owner is None:
            return Assignment("wait")
        if in_flight is not None:
            return in_flight
        assignment, complete = self.owner.claim()
        self.report.study_complete = complete
        self.observers.notify("study_updated", complete, self.owner.best_value())
        return assignment

    def _train(self, assignment: Assignment, preemption: Preemption) -> None:
        runner = TrialRunner(
            assignment,
            self.settings,
            self.env,
            self.device,
            self.data,
            self.owner,
            self.observers,
            preemption,
        )
        outcome = runner.run()
        if outcome == "stopped":
            # Checkpointed; the trial stays RUNNING for the requeued job (or its retry).
            if self.env.is_main:
                preemption.hand_over()
            raise SystemExit(0)
        if outcome is None:
            self.report.completed += 1
            self.failures_in_a_row = 0
            return
        self.report.failed += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.settings.search.max_consecutive_failures:
            raise WorkerError(
                f"{self.failures_in_a_row} consecutive trials failed, last: {outcome}"
            )
