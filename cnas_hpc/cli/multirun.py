"""What a multirun's launcher tells the submitting side's callbacks: the workers that died.

The launcher (``hydra_plugins.cnas_hpc_launcher``) waits for every worker of the array; a worker
that ended without a result (killed, failed, out of memory) or with a failed one is recorded here
instead of being raised out of the multirun (the other workers finish the study without it).
After Hydra's ``on_multirun_end`` has printed the study's summary,
:func:`cnas_hpc.cli.search.BootstrapCallback.on_multirun_end` names the dead workers and exits
with status :data:`EXIT_WORKERS_DIED` (the launcher and the callbacks share this process; this
module is their only channel). It imports little (no tracker, no plotting): Hydra imports the
launcher plugin, hence this module, in every worker. The callback that the evaluation and the
fidelity study share (plan, record the array, report: :class:`PlanningCallback`) lives here too,
next to the channel it sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnas_hpc.cli.common import USER_ERRORS, fail, is_slurm_launcher, settings_of
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.study.lifecycle import record_array as record_study_array

log = logging.getLogger(__name__)

#: Exit status of a multirun in which at least one worker died.
EXIT_WORKERS_DIED = 1


@dataclass(frozen=True)
class WorkerDeath:
    """One worker that did not end well.

    Attributes:
        index: the worker's index in the sweep (``worker=...``).
        job_id: its SLURM (or local) job id.
        state: the scheduler's last word (``FAILED``, ``CANCELLED``, ``OUT_OF_MEMORY``, ...).
        reason: one line: the worker's own ``error:`` line when it wrote one, else what
            submitit or Hydra reported.
        log: a log file of the worker that exists (or the folder where it should be).
    """

    index: int
    job_id: str
    state: str
    reason: str
    log: str

    def describe(self) -> str:
        """``worker 3 (job 1234_3, FAILED): <reason>; log: <path>``."""
        return (
            f"worker {self.index} (job {self.job_id}, {self.state}): {self.reason}; log: {self.log}"
        )


#: Remembers a submitted SLURM array where the app's rerun guard finds it.
ArrayRecorder = Callable[[str], None]


@dataclass
class MultirunOutcome:
    """The deaths of the current multirun (one per process: a multirun is one launch), and
    how the app records the array it submits (set by the app's callback before the launch:
    the search in its study, the evaluation and fidelity apps in ``cnas_arrays``)."""

    workers: int = 0
    array_job_id: str | None = None
    deaths: list[WorkerDeath] = field(default_factory=list)
    recorder: ArrayRecorder | None = None

    def reset(self, workers: int, array_job_id: str | None) -> None:
        """A new launch starts."""
        self.workers, self.array_job_id, self.deaths = workers, array_job_id, []

    def summary(self) -> str:
        """One line: how many workers died, each named (empty when none did)."""
        if not self.deaths:
            return ""
        named = "; ".join(death.describe() for death in self.deaths)
        return f"{len(self.deaths)} of {self.workers} worker(s) died: {named}"


#: The outcome of this process's multirun.
OUTCOME = MultirunOutcome()


def record_array(cfg: DictConfig, array_job_id: str) -> None:
    """Record in the study that SLURM array ``array_job_id`` works it (called by the launcher;
    a rerun of the command is refused while the array runs).

    Raises:
        StudyError: the database cannot be written.
    """
    record_study_array(settings_of(cfg), array_job_id)


class PlanningCallback(Callback):
    """Hydra callback of an app that plans its rows (the evaluation, the fidelity study): plan
    once in the submitting process, record the submitted array, report at the end.

    A subclass names the app's three steps: :meth:`plan` (validates and plans; a user error
    becomes one ``error:`` line and exit 2), :meth:`record_array` (the launcher calls it through
    :data:`OUTCOME` with the array's id) and :meth:`report` (a failure to report is logged, not
    raised: the work is done).
    """

    #: what :meth:`report` does, for the warning when it fails ("summarise the evaluation").
    report_what = "report"

    @staticmethod
    def plan(config: DictConfig, launcher: DictConfig | None, *, slurm: bool) -> None:
        """Validate and plan ``config``'s rows (``launcher``: the multirun's, when it places
        tasks on nodes)."""
        raise NotImplementedError

    @staticmethod
    def record_array(config: DictConfig, array_job_id: str) -> None:
        """Record the submitted array of ``config``'s rows."""
        raise NotImplementedError

    @staticmethod
    def report(config: DictConfig) -> None:
        """Summarise the rows once the multirun ended."""
        raise NotImplementedError

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A single run may itself be one rank of a torchrun job: only rank 0 plans.
        if DistEnv.from_environment().global_rank != 0:
            return
        self._plan(config, None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher")
        slurm = is_slurm_launcher(launcher)
        self._plan(config, launcher if "tasks_per_node" in launcher else None, slurm=slurm)
        OUTCOME.recorder = partial(self.record_array, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.report(config)
        except Exception as exc:
            log.warning("could not %s: %s", self.report_what, exc)

    def _plan(self, config: DictConfig, launcher: DictConfig | None, slurm: bool = False) -> None:
        try:
            self.plan(config, launcher, slurm=slurm)
        except USER_ERRORS as exc:
            fail(str(exc))
