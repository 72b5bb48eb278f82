"""Rank 0's side of a worker: everything that touches the study.

Contract:
    * Only global rank 0 of a worker creates a :class:`TrialOwner`; other ranks never open the
      study.
    * A claimed trial is RUNNING and owned by this worker until it is told. Its identity (worker
      label, SLURM array job and task) is recorded at claim time, so a requeued job finds its
      in-flight trial again (:meth:`TrialOwner.adopt_in_flight`) and resumes it.
    * Every study operation is retried through database outages (:mod:`cnas_hpc.study.retry`).
      A finished result is first written to ``<output_dir>/pending/<study>/trial-<n>.json``, then
      told, then the file is removed: a result computed while the database is down survives the
      worker and is told by the next run (:meth:`TrialOwner.flush_pending`).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.space.encoding import CellEncoding, compact_hash
from cnas_hpc.space.genotype import Genotype, genotype_to_json
from cnas_hpc.study.budget import ClaimStatus, claim_trial
from cnas_hpc.study.lifecycle import load_study
from cnas_hpc.study.optuna_internals import record_heartbeat, storage_of, trial_id_of
from cnas_hpc.study.retry import with_db_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many proposals to skip as duplicates before accepting one (the space may be exhausted).
_MAX_DUPLICATE_SKIPS = 20


@dataclass(frozen=True)
class Assignment:
    """What rank 0 tells the other ranks to do next (broadcast as a picklable object).

    ``checkpoint_key`` is the trial's ORIGINAL number: a retry resumes the dead trial's state.
    """

    kind: Literal["train", "wait", "done"]
    number: int = -1
    genotype_json: str = ""
    checkpoint_key: int = -1


def _is_duplicate(study: optuna.Study, trial: optuna.Trial, arch_hash: str) -> int | None:
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.user_attrs.get(attrs.ARCH_HASH) == arch_hash:
            return other.number
    return None


class TrialOwner:
    """The study handle of one worker (rank 0 only)."""

    def __init__(
        self,
        settings: Settings,
        env: DistEnv,
        encoding: CellEncoding,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.env = env
        self.encoding = encoding
        #: further attributes recorded on every claimed trial (e.g. the worker's threads)
        self.identity = dict(identity or {})
        self.study = self._retry(lambda: load_study(settings, worker=settings.worker), "load")
        self.trial: optuna.Trial | None = None

    @property
    def storage(self) -> BaseStorage:
        """The study's storage (heartbeats and trial reads go straight to it)."""
        return storage_of(self.study)

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        return with_db_retry(operation, what=what, deadline_s=self.settings.study.retry_deadline_s)

    # -- claiming -------------------------------------------------------------------------------

    def adopt_in_flight(self) -> Assignment | None:
        """The RUNNING trial this SLURM job (or array task) owned before a requeue, if any.

        A requeued job keeps its job id, which every claimed trial records (``cnas:job_id``).
        """
        if self.env.job_id is None:
            return None
        running = self._retry(
            lambda: self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
            "look for an in-flight trial",
        )
        for frozen in running:
            mine = (
                frozen.user_attrs.get(attrs.JOB) == self.env.job_id
                and attrs.GENOTYPE in frozen.user_attrs
            )
            if mine:
                trial = optuna.Trial(self.study, trial_id_of(frozen))
                requeues = int(frozen.user_attrs.get(attrs.REQUEUES, 0)) + 1
                self._retry(partial(trial.set_user_attr, attrs.REQUEUES, requeues), "set attr")
                log.info("resuming in-flight trial %d after a requeue", frozen.number)
                self.trial = trial
                return Assignment(
                    "train",
                    frozen.number,
                    str(frozen.user_attrs[attrs.GENOTYPE]),
                    int(frozen.user_attrs.get(attrs.RETRY_OF, frozen.number)),
                )
        return None

    def claim(self) -> tuple[Assignment, int]:
        """Claim the next trial; returns the assignment and the study's COMPLETE count."""
        n_trials = self.settings.search.n_trials
        claim = self._retry(
            lambda: claim_trial(self.study, n_trials, prepare=self._propose), "claim a trial"
        )
        if claim.status is not ClaimStatus.CLAIMED or claim.trial is None:
            kind: Literal["wait", "done"] = "done" if claim.status is ClaimStatus.DONE else "wait"
            return Assignment(kind), claim.count.complete
        trial = claim.trial
        self.trial = trial
        key = int(trial.user_attrs.get(attrs.RETRY_OF, trial.number))
        genotype_json = str(trial.user_attrs[attrs.GENOTYPE])
        return Assignment("train", trial.number, genotype_json, key), claim.count.complete

    def _propose(self, trial: optuna.Trial) -> optuna.Trial:
        """Sample the architecture; skip proposals another RUNNING/COMPLETE trial already has.

        Runs under the claim lock, so two workers cannot both take one architecture.
        """
        for _ in range(_MAX_DUPLICATE_SKIPS):
            genotype = self.encoding.suggest(trial)
            arch_hash = compact_hash(genotype)
            duplicate = _is_duplicate(self.study, trial, arch_hash)
            if duplicate is None:
                break
            trial.set_user_attr(attrs.FAIL_REASON, f"duplicate of trial {duplicate}")
            self.study.tell(trial, state=TrialState.FAIL)
            log.info("trial %d duplicates trial %d: skipped", trial.number, duplicate)
            trial = self.study.ask()
        self._record_identity(trial, genotype, arch_hash)
        return trial

    def _record_identity(self, trial: optuna.Trial, genotype: Genotype, arch_hash: str) -> None:
        # A first heartbeat at once: Optuna never declares a trial without any heartbeat stale,
        # so a trial orphaned between ask and training (e.g. by a database outage) would hold
        # its budget slot forever.
        record_heartbeat(self.storage, trial_id_of(trial))
        trial.set_user_attr(attrs.GENOTYPE, genotype_to_json(genotype))
        trial.set_user_attr(attrs.ARCH_HASH, arch_hash)
        trial.set_user_attr(attrs.WORKER, self.env.worker_label)
        trial.set_user_attr(attrs.WORKER_INDEX, self.settings.worker)
        trial.set_user_attr(attrs.HOST, socket.gethostname())
        trial.set_user_attr(attrs.WORLD_SIZE, self.env.world_size)
        for key, value in self.identity.items():
            trial.set_user_attr(key, value)
        if self.env.job_id is not None:
            trial.set_user_attr(attrs.JOB, self.env.job_id)
        if self.env.array_job_id is not None:
            trial.set_user_attr(attrs.ARRAY_JOB, self.env.array_job_id)
            trial.set_user_attr(attrs.ARRAY_TASK, self.env.array_task_id)

    # -- attributes and results -----------------------------------------------------------------

    def set_attrs(self, values: dict[str, Any]) -> None:
        """Record user attributes of the current trial (retried through outages)."""
        trial = self.trial
        assert trial is not None
        for key, value in values.items():
            if value is not None:
                self._retry(partial(trial.set_user_attr, key, value), f"set {key}")

    def report(self, value: float, epoch: int) -> None:
        """Report an intermediate objective value of the current trial."""
        trial = self.trial
        assert trial is not None
        self._retry(lambda: trial.report(value, epoch), "report")

    def finish(self, state: TrialState, value: float | None, values: dict[str, Any]) -> None:
        """Tell the current trial's result: pending file first, then the study, then cleanup."""
        trial = self.trial
        assert trial is not None
        pending = self._pending_path(trial.number)
        pending.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "number": trial.number,
            "trial_id": trial_id_of(trial),
            "state": state.name,
            "value": value,
            "attrs": {k: v for k, v in values.items() if v is not None},
        }
        tmp = pending.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(pending)
        self._tell(payload)
        pending.unlink(missing_ok=True)
        self.trial = None

    def _pending_path(self, number: int) -> Path:
        return self.settings.pending_dir / f"trial-{number}.json"

    def _tell(self, payload: dict[str, Any]) -> None:
        trial = optuna.Trial(self.study, int(payload["trial_id"]))
        for key, value in payload["attrs"].items():
            self._retry(partial(trial.set_user_attr, key, value), f"set {key}")
        state = TrialState[payload["state"]]
        value = payload["value"] if state == TrialState.COMPLETE else None
        self._retry(
            lambda: self.study.tell(trial, value, state=state, skip_if_finished=True),
            f"tell trial {payload['number']}",
        )

    def flush_pending(self) -> int:
        """Tell results that an earlier run computed while the database was down."""
        folder = self.settings.pending_dir
        told = 0
        for path in sorted(folder.glob("trial-*.json")) if folder.exists() else []:
            payload = json.loads(path.read_text())
            frozen = self._retry(
                partial(self.storage.get_trial, int(payload["trial_id"])),
                "read a pending trial",
            )
            if frozen.state.is_finished():
                # Another worker failed it as stale meanwhile: keep the result, don't lose it.
                path.rename(path.with_suffix(".orphan.json"))
                log.warning("trial %d finished elsewhere; result kept in %s", frozen.number, path)
                continue
            self._tell(payload)
            path.unlink()
            told += 1
            log.info("told the pending result of trial %d", frozen.number)
        return told

    def best_value(self) -> float | None:
        """The study's best value so far (None before the first COMPLETE trial)."""
        try:
            return float(self.study.best_value)
        except ValueError:
            return None
