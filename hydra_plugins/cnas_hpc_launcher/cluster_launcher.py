"""Hydra launchers for SLURM clusters, on top of hydra-submitit-launcher.

The presets keep the plugin's names: ``hydra/launcher=submitit_slurm`` and ``submitit_local`` are
structured configs registered here in Hydra's ConfigStore (:class:`ClusterSlurmConf`,
:class:`ClusterLocalConf`), subclasses of the plugin's schemas that carry our GPU-cluster
defaults and point ``_target_`` at the launchers below; they replace the plugin's own entries of
the same name (this module imports the plugin's config first, so its registration is always the
later one). No YAML file shares a schema's name, so nothing relies on Hydra's deprecated
automatic schema matching; ``slurm_cpu.yaml`` extends ``submitit_slurm`` through its defaults
list. One multirun submits ONE SLURM array
(``executor.map_array``) whose tasks are the workers.

Differences from the plugin:

* The plugin waits for ``job.results()`` of every array task and the first failed task (a worker
  that was SIGKILLed, say) raises out of the whole multirun, although the other workers finish
  the study without it. Here every worker is waited for; one that died (killed, failed, or ended
  with a failed result) is logged with its reason and a log file that exists, and recorded in
  :data:`cnas_hpc.cli.multirun.OUTCOME`: after the study's summary the multirun names the dead
  workers in one ``error:`` line and exits with status 1. Waiting relies on submitit's job
  states, which need SLURM accounting (``sacct``; the dev cluster runs slurmdbd) to see a killed
  job: without it ``job.done()`` would stay False forever.
* The array's id is recorded by the app's callback (:attr:`cnas_hpc.cli.multirun.OUTCOME`'s
  ``recorder``: the search in its study, the evaluation and fidelity apps in ``cnas_arrays``):
  running the same command again while the array still works is refused with one line instead
  of submitting a second array.
* Ctrl-C (SIGINT) or SIGTERM while waiting ends the launcher with one line saying that the
  array keeps running and how to follow or stop it, instead of a traceback (or nothing).

submitit also takes any state outside its short list of live ones for the end of a job, and
remembers that verdict: a SUSPENDED worker, or one read in a passing state while it is being
requeued, would be reported failed although SLURM still holds it and it will finish. So before
a worker without a result counts as failed, ``squeue`` is asked; while the job is still queued,
running or suspended there, the launcher waits on.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf

from cnas_hpc.cli.multirun import OUTCOME, WorkerDeath
from cnas_hpc.distributed.jobs import HELD_STATES, job_state
from hydra_plugins.cnas_hpc_launcher._presets import register_presets

log = logging.getLogger(__name__)


class _TolerantLaunch(BaseSubmititLauncher):
    """The plugin's ``launch`` with per-worker failure handling (see the module docstring)."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        params = dict(self.params)
        init_params: dict[str, Any] = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init_params[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in baseparams else f"{self._EXECUTOR}_{key}": value
                for key, value in params.items()
                if key not in ("max_num_timeout", "submitit_folder")
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        array = jobs[0].job_id.split("_")[0] if jobs else None
        OUTCOME.reset(len(jobs), array)
        if array is not None:
            log.info("submitted array %s with %d workers", array, len(jobs))
            self._record(array)
        with _interruptible(self._follow_hint(array, len(jobs))):
            return self._collect(jobs, job_overrides, initial_job_idx)

    def _follow_hint(self, array: str | None, workers: int) -> str:
        """What keeps running when the launcher is interrupted, and how to follow or stop it."""
        return (
            f"the {workers} local worker process(es) keep running and finish the study; "
            "stop them with kill"
        )

    def _record(self, array: str) -> None:
        """Remember the array where the app looks: a rerun while it runs is refused, not
        doubled."""
        recorder = OUTCOME.recorder
        if not self.records_array or recorder is None:
            return  # an app without a rerun guard on this launcher
        try:
            recorder(array)
        except Exception as exc:  # the workers run anyway; only the rerun guard is weaker
            log.warning("could not record array %s in the study: %s", array, exc)

    #: Seconds between looks at a job that submitit saw end without a result while the
    #: cluster still holds it.
    held_poll_s: float = 5.0
    #: Whether the array's id means something to SLURM (recorded in the study for reruns).
    records_array: bool = False

    def _state_if_held(self, job: Any) -> str | None:
        """The cluster's state of ``job`` while it still holds it (pending, running, ...).

        ``None`` means the job is gone and submitit's verdict stands. Local jobs have no
        cluster to ask.
        """
        return None

    def _result(self, job: Any) -> JobReturn:
        """Wait for one worker's result; raise its failure only once it really ended."""
        import submitit

        while True:
            try:
                result: JobReturn = job.results()[0]
                return result
            except submitit.core.utils.UncompletedJobError:
                state = self._state_if_held(job)
                if state is None:
                    raise
                log.warning(
                    "worker job %s has no result yet but SLURM still holds it (%s): waiting",
                    job.job_id,
                    state,
                )
                # submitit caches a job's end for good: forget it, or results() would
                # not look at the job again.
                job.watcher.clear()
                time.sleep(self.held_poll_s)

    def _collect(
        self, jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], first_index: int
    ) -> list[JobReturn]:
        returns: list[JobReturn] = []
        for index, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True)):
            try:
                result = self._result(job)
            except Exception as exc:  # one dead worker must not sink the others' study
                self._died(first_index + index, job, exc)
                result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            if result.status == JobStatus.FAILED:
                # The task function raised (Hydra caught it): SLURM saw a clean exit.
                self._died(first_index + index, job, result._return_value)
                result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            returns.append(result)
        return returns

    def _died(self, index: int, job: Any, exc: object) -> None:
        death = WorkerDeath(
            index=index,
            job_id=str(job.job_id),
            state=self._final_state(job),
            reason=_error_line(job) or _first_line(exc),
            log=str(_existing_log(job)),
        )
        OUTCOME.deaths.append(death)
        log.error("%s", death.describe())

    def _final_state(self, job: Any) -> str:
        try:
            return str(job.state)
        except Exception:
            return "UNKNOWN"


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _existing_log(job: Any) -> Path:
    """The worker's log that exists: stderr, or stdout when stderr goes there (the presets)."""
    for path in (job.paths.stderr, job.paths.stdout):
        if Path(path).exists():
            return Path(path)
    return Path(job.paths.folder)


def _error_line(job: Any) -> str | None:
    """The last ``error: ...`` line the worker wrote (its own one-line reason), if any."""
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            with Path(path).open(errors="replace") as handle:
                lines = [line.strip() for line in handle if line.startswith("error: ")]
        except OSError:
            continue
        if lines:
            return lines[-1].removeprefix("error: ")
    return None


class LauncherInterruptedError(BaseException):
    """SIGINT or SIGTERM reached the launcher while it waited for the array.

    A ``BaseException`` (as ``KeyboardInterrupt``): the per-worker ``except Exception`` of the
    wait must not take it for a dead worker.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interruptible(follow_hint: str) -> Iterator[None]:
    """While waiting: SIGINT/SIGTERM end the launcher with one line, the workers keep running."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise LauncherInterruptedError(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except LauncherInterruptedError as exc:
        print(f"interrupted ({exc}): {follow_hint}", file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["HELD_STATES", "ClusterLocalLauncher", "ClusterSlurmLauncher"]


class ClusterSlurmLauncher(_TolerantLaunch, SlurmLauncher):
    """SLURM: one array per multirun, every task one worker."""

    records_array = True

    def _follow_hint(self, array: str | None, workers: int) -> str:
        return (
            f"the launcher stops waiting, but the {workers} worker(s) of SLURM array {array} "
            f"keep running and finish the study. Follow them with `squeue -j {array}` or "
            f"`python launch/report.py` (same overrides); stop them with `scancel {array}`. "
            "Running the same command again is refused while the array runs."
        )

    def _state_if_held(self, job: Any) -> str | None:
        # No answer from the controller (None): submitit's verdict is all there is.
        state = job_state(str(job.job_id))
        return state if state in HELD_STATES else None


class ClusterLocalLauncher(_TolerantLaunch, LocalLauncher):
    """Workers as local subprocesses through submitit, for trying the multirun path."""


class LauncherPresets(SearchPathPlugin):
    """Registers the launcher presets (:mod:`hydra_plugins.cnas_hpc_launcher._presets`).

    Hydra asks every search-path plugin for its paths after it has scanned all plugin modules
    and before it loads any config: the one moment at which our ``submitit_slurm`` and
    ``submitit_local`` entries are sure to replace the submitit plugin's (which its scan
    re-registers). The search path itself is left as it is.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register_presets()
