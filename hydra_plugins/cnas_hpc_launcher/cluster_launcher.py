"""Hydra launchers for SLURM clusters, on top of hydra-submitit-launcher.

The presets are YAML files in ``configs/hydra/launcher/`` named like the plugin's structured
configs (``submitit_slurm``, ``submitit_local``), so Hydra validates them against the plugin's
schema and ``hydra/launcher=submitit_slurm`` gives our GPU-cluster defaults; they point
``_target_`` at the launchers below. One multirun submits ONE SLURM array
(``executor.map_array``) whose tasks are the workers.

Difference from the plugin: the plugin waits for ``job.results()`` of every array task and the
first failed task (a worker that was SIGKILLed, say) raises out of the whole multirun, although
the other workers finish the study without it. Here each worker's failure is logged with its
log file and the multirun only fails when every worker failed. Waiting relies on submitit's
job states, which need SLURM accounting (``sacct``; the dev cluster runs slurmdbd) to see a
killed job: without it ``job.done()`` would stay False forever.

submitit also takes any state outside its short list of live ones for the end of a job, and
remembers that verdict: a SUSPENDED worker, or one read in a passing state while it is being
requeued, would be reported failed although SLURM still holds it and it will finish. So before
a worker without a result counts as failed, ``squeue`` is asked; while the job is still queued,
running or suspended there, the launcher waits on.
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf

# Same-named YAML over a plugin schema is Hydra's "automatic schema matching": supported by the
# pinned hydra-core 1.3, which warns about it on every run. Here it is deliberate.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")

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
        if jobs:
            log.info("submitted array %s with %d workers", jobs[0].job_id.split("_")[0], len(jobs))
        return self._collect(jobs, job_overrides)

    #: Seconds between looks at a job that submitit saw end without a result while the
    #: cluster still holds it.
    held_poll_s: float = 5.0

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
        self, jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]]
    ) -> list[JobReturn]:
        returns: list[JobReturn] = []
        failures: list[BaseException] = []
        for job, overrides in zip(jobs, job_overrides, strict=True):
            try:
                returns.append(self._result(job))
            except Exception as exc:  # one dead worker must not sink the others' study
                failures.append(exc)
                log.error(
                    "worker job %s failed (%s); its log: %s",
                    job.job_id,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    job.paths.stderr,
                )
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED))
        if failures and len(failures) == len(jobs):
            raise failures[0]
        return returns


#: squeue/sacct states of a job that SLURM still holds and may yet run to its end.
HELD_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    }
)


class ClusterSlurmLauncher(_TolerantLaunch, SlurmLauncher):
    """SLURM: one array per multirun, every task one worker."""

    def _state_if_held(self, job: Any) -> str | None:
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", str(job.job_id), "-o", "%T"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            # No answer from the controller: submitit's verdict is all there is.
            return None
        return out[0] if out and out[0] in HELD_STATES else None


class ClusterLocalLauncher(_TolerantLaunch, LocalLauncher):
    """Workers as local subprocesses through submitit, for trying the multirun path."""
