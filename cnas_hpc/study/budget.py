"""The study's trial budget: the ONE free-slot rule and the count it is applied to.

Contract:
    * The budget is ``search.n_trials`` COMPLETE trials over the whole study, not per worker.
    * A trial in one of :data:`SLOT_STATES` (COMPLETE, RUNNING, WAITING) holds a slot; a new
      trial may be created only while :func:`free_slots` is positive
      (``COMPLETE + RUNNING + WAITING < n_trials``). A WAITING trial (a retry of a stale one) is
      always handed out: it already holds its slot.
    * The rule exists once: the claim (:mod:`cnas_hpc.study.claim`, under its lock), the
      one-transaction SQL reservation (which receives :data:`SLOT_STATES` as a parameter) and
      the report's forecast (:mod:`cnas_hpc.analysis.report`) all use these two names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import count_by_state

#: The trial states that hold a slot of the budget. COMPLETE: the slot is spent. RUNNING: the
#: slot is held while the trial runs (it frees it by failing or being pruned). WAITING: a retry
#: of a stale trial, enqueued with the same parameters, holds the slot of the trial it replaces.
#: FAIL and PRUNED trials hold none. The one-transaction SQL reservation counts exactly these
#: states (:func:`~cnas_hpc.study.optuna_internals.reserve_trial_row` takes them as a
#: parameter), so the SQL and the Python rule cannot drift apart.
SLOT_STATES: tuple[str, ...] = ("COMPLETE", "RUNNING", "WAITING")


def free_slots(n_trials: int, by_state: Mapping[str, int]) -> int:
    """The budget's slots nobody holds: ``max(0, n_trials - sum of by_state over SLOT_STATES)``.

    The one budget rule: a claim may create a NEW trial only while this is positive (a WAITING
    trial is handed out regardless: it already holds its slot), and the report forecasts a
    resume's new trials with it. Pure; states missing from ``by_state`` count 0, states outside
    :data:`SLOT_STATES` are ignored.

    Args:
        n_trials: the budget of COMPLETE trials (``search.n_trials``).
        by_state: trials per state name (``"COMPLETE"``, ``"RUNNING"``, ...).
    """
    return max(0, n_trials - sum(by_state.get(state, 0) for state in SLOT_STATES))


@dataclass(frozen=True)
class BudgetCount:
    """Trials by state that matter for the budget."""

    complete: int
    running: int
    waiting: int

    def remaining(self, n_trials: int) -> int:
        """Slots nobody holds yet (:func:`free_slots` of these counts)."""
        return free_slots(
            n_trials, {"COMPLETE": self.complete, "RUNNING": self.running, "WAITING": self.waiting}
        )


def count_budget(handle: StudyHandle) -> BudgetCount:
    """Count COMPLETE, RUNNING and WAITING trials of the study, straight from the database.

    Optuna's in-process trial cache may miss trials other processes created (it only re-reads
    trials newer than the last finished one it saw), so an RDB study is counted with one SQL
    query; this is also O(1) in memory for studies with thousands of trials.
    """
    return budget_of(count_by_state(handle))


def budget_of(by_state: Mapping[str, int]) -> BudgetCount:
    """The budget's counts out of trials per state name (missing states count 0)."""
    return BudgetCount(
        complete=by_state.get("COMPLETE", 0),
        running=by_state.get("RUNNING", 0),
        waiting=by_state.get("WAITING", 0),
    )
