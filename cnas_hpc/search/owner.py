"""Rank 0's side of a worker: everything that touches the study.

Contract:
    * Only global rank 0 of a worker creates a :class:`TrialOwner`; other ranks never open the
      study.
    * A claimed trial is RUNNING and owned by this worker until it is told. Its identity (worker
      label, SLURM array job and task) is recorded at claim time, so a requeued job finds its
      in-flight trial again (:meth:`TrialOwner.adopt_in_flight`) and resumes it. A worker that
      stops for a requeue marks its trial as waiting for its job (``cnas:held_by_job``).
    * Every blocking study operation (load, claim, tell) is retried through database outages
      (:mod:`cnas_hpc.study.retry`) and gives up early when the worker is asked to stop
      (``should_stop``: SLURM's preemption signal), raising
      :class:`~cnas_hpc.study.retry.RetryStoppedError`.
    * While a trial trains, what it records (its size, each epoch's objective) is NOTED and sent
      with one attempt at a time (:meth:`TrialOwner.flush_notes`): a database outage never stalls
      training, and whatever was not sent goes with the result.
    * A finished result is first written to ``<output_dir>/pending/<study>/trial-<n>.json``, then
      told, then the file is removed (:mod:`cnas_hpc.search.pending`): a result computed while the
      database is down survives the worker and is told by the next run
      (:meth:`TrialOwner.flush_pending`).
"""

from __future__ import annotations

import copy
import functools
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.pending import PendingResults
from cnas_hpc.space.encoding import CellEncoding, compact_hash
from cnas_hpc.space.genotype import Genotype, genotype_to_json
from cnas_hpc.study.claim import (
    Claim,
    ClaimStatus,
    KnownArchitectures,
    claim_trial,
    commit_proposal,
    give_back_duplicate,
    propose,
    sampler_factory,
)
from cnas_hpc.study.lifecycle import load_study
from cnas_hpc.study.optuna_internals import open_trial, set_constraints, write_trial_rows
from cnas_hpc.study.retry import (
    DatabaseUnavailableError,
    describe_failure,
    is_transient,
    with_db_retry,
)
from cnas_hpc.study.storage import release_connections

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many proposals to skip as duplicates before accepting one (the space may be exhausted).
_MAX_DUPLICATE_SKIPS = 20

#: What rank 0 tells the other ranks to do next.
AssignmentKind = Literal["train", "wait", "done", "stop", "abort"]


@dataclass(frozen=True)
class Assignment:
    """What rank 0 tells the other ranks to do next (broadcast as a picklable object).

    ``train``: the trial ``number`` with ``genotype_json``; ``checkpoint_key`` is the trial's
    ORIGINAL number (a retry resumes the dead trial's state). ``wait``: poll again. ``done``: the
    budget is spent. ``stop``: a stop request (preemption) reached rank 0 outside training; every
    rank stops, the job is requeued. ``abort``: rank 0 cannot go on (``error`` says why:
    ``database``, ``study`` or ``bug``; ``message`` is its one line); every rank raises it.
    """

    kind: AssignmentKind
    number: int = -1
    genotype_json: str = ""
    checkpoint_key: int = -1
    error: str = ""
    message: str = ""


P = ParamSpec("P")
R = TypeVar("R")


def _releasing(
    method: Callable[Concatenate[TrialOwner, P], R],
) -> Callable[Concatenate[TrialOwner, P], R]:
    """A burst of database operations: its connections are released when it ends."""

    @functools.wraps(method)
    def burst(self: TrialOwner, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.release()

    return burst


class TrialOwner:
    """The study handle of one worker (rank 0 only).

    Args:
        settings: the search's settings.
        env: this process's place in its job (its job id finds an in-flight trial).
        encoding: the search space's encoding (proposes architectures).
        identity: further attributes recorded on every claimed trial (e.g. its threads).
        should_stop: polled while a database call waits to be retried (preemption).

    Raises:
        DatabaseUnavailableError: the database stayed down past ``study.retry_deadline_s``.
        RetryStoppedError: ``should_stop`` turned True while loading waited for the database.
        StudyError: the study does not exist or was built for another space.
    """

    def __init__(
        self,
        settings: Settings,
        env: DistEnv,
        encoding: CellEncoding,
        identity: Mapping[str, Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.env = env
        self.encoding = encoding
        self.identity = dict(identity or {})
        self.should_stop = should_stop
        cfg = settings.study
        # A claim older than twice the retry deadline belongs to a teller that died.
        self.pending = PendingResults(settings.pending_dir, 2 * cfg.retry_deadline_s + 60)
        self.handle = self._retry(lambda: load_study(settings, worker=settings.worker), "load")
        self.study = self.handle.study
        self.release()
        self.trial: optuna.Trial | None = None
        #: the storage's id of :attr:`trial` (None exactly when it is None)
        self.trial_id: int | None = None
        #: a slot (trial, trial id) reserved by a claim whose architecture is not written yet
        self._reserved: tuple[optuna.Trial, int] | None = None
        self._complete_at_claim = 0
        self._known = KnownArchitectures()
        self._attr_notes: dict[str, Any] = {}
        self._report_notes: dict[int, float] = {}

    def release(self) -> None:
        """Close the connections of the last burst of operations (``study.pool_size=0``): a
        worker holds none while it trains."""
        if self.settings.study.pool_size <= 0:
            release_connections(self.handle.engine)

    @property
    def storage(self) -> RDBStorage:
        """The study's storage (heartbeats and trial reads go straight to it)."""
        return self.handle.storage

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        return with_db_retry(
            operation,
            what=what,
            deadline_s=self.settings.study.retry_deadline_s,
            should_stop=self.should_stop,
        )

    # -- claiming -------------------------------------------------------------------------------

    @_releasing
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
                return self._adopt(frozen)
        return None

    def _adopt(self, frozen: FrozenTrial) -> Assignment:
        trial_id = self._retry(
            lambda: self.storage.get_trial_id_from_study_id_trial_number(
                self.handle.study_id, frozen.number
            ),
            "find a trial",
        )
        requeues = int(frozen.user_attrs.get(attrs.REQUEUES, 0)) + 1
        for key, value in ((attrs.REQUEUES, requeues), (attrs.HELD_BY_JOB, "")):
            self._retry(partial(self.storage.set_trial_user_attr, trial_id, key, value), "set attr")
        log.info("resuming in-flight trial %d after a requeue", frozen.number)
        self.trial = self._retry(lambda: open_trial(self.handle, trial_id), "open trial")
        self.trial_id = trial_id
        return Assignment(
            "train",
            frozen.number,
            str(frozen.user_attrs[attrs.GENOTYPE]),
            int(frozen.user_attrs.get(attrs.RETRY_OF, frozen.number)),
        )

    @_releasing
    def claim(self) -> tuple[Assignment, int]:
        """Claim the next trial; returns the assignment and the study's COMPLETE count.

        Three steps (see :mod:`cnas_hpc.study.claim`): reserve a slot under the claim lock
        (stale trials failed, budget counted, a trial asked with its first heartbeat and this
        worker's identity); propose its architecture OUTSIDE the lock (TPE's cost); write it
        under the lock unless another trial already has it (then the slot is given back as a
        FAIL ``duplicate of N`` and the claim starts over). Each step is retried through
        outages on its own: a reserved slot is never abandoned by a retry.
        """
        genotype: Genotype | None = None
        for _ in range(_MAX_DUPLICATE_SKIPS):
            if self._reserved is None:
                claim = self._retry(self._reserve, "claim a trial")
                claimed = claim.status is ClaimStatus.CLAIMED
                if not claimed or claim.trial is None or claim.trial_id is None:
                    kind: AssignmentKind = "done" if claim.status is ClaimStatus.DONE else "wait"
                    return Assignment(kind), claim.count.complete
                self._reserved = (claim.trial, claim.trial_id)
                self._complete_at_claim = claim.count.complete
            genotype = self._place(*self._reserved)
            if genotype is not None:
                break
            self._reserved = None  # a duplicate: given back, claim another slot
        reserved, self._reserved = self._reserved, None
        assert reserved is not None and genotype is not None
        # The trial's snapshot holds what the claim wrote (remember_rows).
        self.trial, self.trial_id = reserved
        key = int(self.trial.user_attrs.get(attrs.RETRY_OF, self.trial.number))
        assignment = Assignment("train", self.trial.number, genotype_to_json(genotype), key)
        return assignment, self._complete_at_claim

    def _place(self, trial: optuna.Trial, trial_id: int) -> Genotype | None:
        """Propose the reserved trial's architecture and write it; None when it was a duplicate
        (then the trial is told FAIL ``duplicate of N``)."""
        genotype, values = self._retry(partial(self._propose, trial), "propose a trial")
        commit = partial(self._commit, trial, trial_id, genotype, values)
        duplicate = self._retry(commit, "commit a trial")
        if duplicate is None:
            return genotype
        give_back = partial(give_back_duplicate, self.handle, trial, trial_id, duplicate)
        self._retry(give_back, "skip a duplicate")
        return None

    def _reserve(self) -> Claim:
        return claim_trial(
            self.handle,
            self.settings.search.n_trials,
            keep=self._has_pending_result,
            max_retry=self.settings.study.max_retry,
            sampler_for=sampler_factory(
                self.settings.study.sampler, self.settings.worker, self.encoding.distributions()
            ),
            identity=self._identity(),
        )

    def _has_pending_result(self, trial: FrozenTrial) -> bool:
        return self.pending.holds(trial.number)

    def _propose(self, trial: optuna.Trial) -> tuple[Genotype, dict[str, Any]]:
        """The architecture of the reserved trial, proposed without the lock (TPE's cost)."""
        values = propose(self.study, trial, self.encoding.distributions())
        genotype = self.encoding.from_params(values)
        return genotype, self.encoding.to_params(genotype)

    def _commit(
        self, trial: optuna.Trial, trial_id: int, genotype: Genotype, values: dict[str, Any]
    ) -> int | None:
        """Write the proposal under the lock unless it duplicates a COMPLETE or RUNNING trial."""
        distributions = self.encoding.distributions()
        if not self._known.complete:
            self._known.warm(self.handle)
        arch_hash = compact_hash(genotype)
        return commit_proposal(
            self.handle,
            trial,
            trial_id,
            arch_hash=arch_hash,
            params={name: (value, distributions[name]) for name, value in values.items()},
            user_attrs={attrs.GENOTYPE: genotype_to_json(genotype), attrs.ARCH_HASH: arch_hash},
            known=self._known,
        )

    def _identity(self) -> dict[str, Any]:
        """What every claimed trial records about the worker that runs it."""
        identity: dict[str, Any] = {
            attrs.WORKER: self.env.worker_label,
            attrs.WORKER_INDEX: self.settings.worker,
            attrs.HOST: socket.gethostname(),
            attrs.WORLD_SIZE: self.env.world_size,
            **self.identity,
        }
        if self.env.job_id is not None:
            identity[attrs.JOB] = self.env.job_id
        if self.env.array_job_id is not None:
            identity[attrs.ARRAY_JOB] = self.env.array_job_id
            identity[attrs.ARRAY_TASK] = self.env.array_task_id
        return identity

    # -- what a training trial records ----------------------------------------------------------

    def note_attrs(self, values: Mapping[str, Any]) -> None:
        """Record user attributes of the current trial with the next flush (or the result)."""
        self._attr_notes.update({k: v for k, v in values.items() if v is not None})

    def note_report(self, epoch: int, value: float) -> None:
        """Record an intermediate objective value with the next flush (or the result)."""
        self._report_notes[int(epoch)] = float(value)

    @_releasing
    def flush_notes(self) -> bool:
        """Send the notes in one write, one attempt: a database outage must not stall training.

        Returns:
            Whether everything was sent; what was not stays noted and goes with the result.
        """
        trial, trial_id = self.trial, self.trial_id
        if trial is None or trial_id is None or not (self._attr_notes or self._report_notes):
            return True
        attrs_sent, reports_sent = dict(self._attr_notes), dict(self._report_notes)
        try:
            write_trial_rows(
                self.handle, trial_id, user_attrs=attrs_sent, intermediate=reports_sent
            )
        except Exception as exc:  # retried with the result; never raised into training
            level = logging.INFO if is_transient(exc) else logging.WARNING
            log.log(level, "trial %d: sent later (%s)", trial.number, describe_failure(exc))
            return False
        for key in attrs_sent:
            self._attr_notes.pop(key, None)
        for epoch in reports_sent:
            self._report_notes.pop(epoch, None)
        return True

    @_releasing
    def mark_held(self) -> None:
        """Mark the current trial as waiting for its (requeued) job; one attempt, best effort.

        The stale check asks SLURM about any trial of a SLURM job anyway: the mark is what
        ``launch/report.py`` shows.
        """
        if self.trial is None or self.trial_id is None or self.env.job_id is None:
            return
        try:
            self.storage.set_trial_user_attr(self.trial_id, attrs.HELD_BY_JOB, self.env.job_id)
        except Exception as exc:
            log.info("trial %d not marked as held (%s)", self.trial.number, describe_failure(exc))

    @_releasing
    def should_prune(self) -> bool:
        """The study's pruner verdict on the current trial, its noted reports included; one
        attempt, never raised: a database outage must not stall training (nor leave the other
        ranks waiting in the collective that agrees the verdict), so it reads "go on".

        Asked right after an epoch, BEFORE that epoch's report is sent (reports go after the
        checkpoint, see :meth:`flush_notes`, or with the result): the pruner judges the stored
        trial with the unsent reports added, as Optuna's ``Trial.should_prune`` would judge it
        after ``report``.
        """
        trial, trial_id = self.trial, self.trial_id
        assert trial is not None and trial_id is not None
        try:
            frozen = copy.deepcopy(self.storage.get_trial(trial_id))
            frozen.intermediate_values = {**frozen.intermediate_values, **self._report_notes}
            return bool(self.study.pruner.prune(self.study, frozen))
        except Exception as exc:  # the next epoch asks again
            level = logging.INFO if is_transient(exc) else logging.WARNING
            log.log(level, "trial %d: pruner not asked (%s)", trial.number, describe_failure(exc))
            return False

    # -- results --------------------------------------------------------------------------------

    @_releasing
    def finish(
        self,
        state: TrialState,
        value: float | list[float] | None,
        values: dict[str, Any],
        *,
        constraints: list[float] | None = None,
    ) -> None:
        """Tell the current trial's result: pending file first, then the study, then cleanup.

        ``value`` is one value per objective (a list) in a multi-objective study.
        ``constraints`` are Optuna's constraint values of the cell (``search.constraints``),
        written with its attributes before the state, where TPE and ``best_trials`` read them.

        Raises:
            DatabaseUnavailableError: the database stayed down past the deadline; the message
                names the file that keeps the result for the next run.
            RetryStoppedError: a stop request came while the tell waited; the result is kept.
        """
        trial = self.trial
        assert trial is not None and self.trial_id is not None
        payload = {
            "number": trial.number,
            "trial_id": self.trial_id,
            "state": state.name,
            "value": value,
            "attrs": {**self._attr_notes, **{k: v for k, v in values.items() if v is not None}},
            "reports": {str(epoch): v for epoch, v in sorted(self._report_notes.items())},
        }
        if constraints is not None:
            payload["constraints"] = [float(c) for c in constraints]
        path = self.pending.write(payload)
        try:
            self._tell(payload)
        except DatabaseUnavailableError as exc:
            raise DatabaseUnavailableError(
                f"{exc}; the result of trial {trial.number} is kept in {path} "
                "and the next run of the same command tells it"
            ) from None
        self.pending.remove(trial.number)
        self.trial, self.trial_id = None, None
        self._attr_notes, self._report_notes = {}, {}

    def _tell(self, payload: dict[str, Any]) -> bool:
        """Tell one result: its attributes and intermediate values in one write, then its state.

        Returns:
            False when the trial was already finished (by someone else): nothing was written.
        """
        trial_id, number = int(payload["trial_id"]), int(payload["number"])
        reports = {int(epoch): value for epoch, value in payload.get("reports", {}).items()}
        write = partial(
            write_trial_rows,
            self.handle,
            trial_id,
            user_attrs=payload["attrs"],
            intermediate=reports,
        )
        try:
            self._retry(write, f"record trial {number}")
            if payload.get("constraints") is not None:
                constrain = partial(set_constraints, self.storage, trial_id, payload["constraints"])
                self._retry(constrain, f"record the constraints of trial {number}")
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        state = TrialState[payload["state"]]
        value = payload["value"] if state == TrialState.COMPLETE else None
        self._retry(
            lambda: self.study.tell(number, value, state=state, skip_if_finished=True),
            f"tell trial {number}",
        )
        return True

    @_releasing
    def flush_pending(self) -> int:
        """Tell results that an earlier run computed but could not tell (one teller per file)."""
        told = 0
        for claimed, payload in self.pending.claim_all():
            try:
                fresh = self._tell(payload)
            except BaseException:
                self.pending.give_back(claimed)
                raise
            if fresh:
                self.pending.done(claimed)
                told += 1
                log.info("told the pending result of trial %s", payload["number"])
            else:
                # Ended elsewhere meanwhile (e.g. failed as stale by an older version): keep it.
                kept = self.pending.orphan(claimed)
                log.warning(
                    "trial %s finished elsewhere; result kept in %s", payload["number"], kept
                )
        return told

    @_releasing
    def best_value(self) -> float | None:
        """The study's best value so far (None before the first COMPLETE trial, and in a
        multi-objective study, which has a front instead)."""
        if self.settings.search.multi_objective:
            return None
        try:
            return float(self.study.best_value)
        except ValueError:
            return None

    # -- the study's cache of measured costs ------------------------------------------------------

    @_releasing
    def cached_cost(self, key: str) -> dict[str, Any] | None:
        """The costs an earlier trial measured for cache ``key`` (one attempt: None on an
        outage, then the cell is measured again)."""
        try:
            found = self.storage.get_study_user_attrs(self.handle.study_id).get(key)
        except Exception as exc:
            log.info("cost cache not read (%s)", describe_failure(exc))
            return None
        return dict(found) if isinstance(found, dict) else None

    @_releasing
    def cache_cost(self, key: str, cost: Mapping[str, Any]) -> None:
        """Remember measured costs in the study (one attempt, best effort)."""
        try:
            self.storage.set_study_user_attr(self.handle.study_id, key, dict(cost))
        except Exception as exc:
            log.info("cost cache not written (%s)", describe_failure(exc))
