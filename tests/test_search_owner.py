"""Rank 0's study handle on a real SQLite study: reproducible proposals, pending results."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from tests.helpers import tiny_settings


def owner(settings: Settings, worker: int) -> TrialOwner:
    s = tiny_settings(
        Path(settings.output_dir), f"worker={worker}", f"study.storage={settings.study.storage}"
    )
    return TrialOwner(s, DistEnv(), encoding_from_config(s.space))


def claim_and_tell(who: TrialOwner) -> dict[str, object]:
    assignment, _ = who.claim()
    assert assignment.kind == "train"
    who.finish(TrialState.COMPLETE, float(assignment.number), {})
    return dict(load_study(who.settings, worker=0).study.trials[assignment.number].params)


def test_proposals_do_not_depend_on_when_a_worker_loaded_the_study(tmp_path: Path) -> None:
    """Two runs of the same events, with worker 1 loading the study before or after worker 0's
    first trial (starts race on a cluster): worker 1 proposes the same architecture."""
    proposals = []
    for run, late in (("a", False), ("b", True)):
        s = tiny_settings(tmp_path / run, "study.sampler.n_startup_trials=10")
        bootstrap_study(s)
        first = owner(s, 0)
        second = None if late else owner(s, 1)
        claim_and_tell(first)
        second = second or owner(s, 1)
        proposals.append(claim_and_tell(second))
    assert proposals[0] == proposals[1]


def test_a_restarted_worker_does_not_replay_its_proposals(tmp_path: Path) -> None:
    s = tiny_settings(tmp_path, "study.sampler.n_startup_trials=10")
    bootstrap_study(s)
    before = [claim_and_tell(owner(s, 0)) for _ in range(3)]  # a fresh owner each time
    study = load_study(s, worker=0).study
    assert len({json.dumps(p, sort_keys=True) for p in before}) == 3
    assert not [t for t in study.trials if t.state == TrialState.FAIL]  # no duplicate skipped


def test_a_pending_result_is_told_by_the_next_owner_exactly_once(tmp_path: Path) -> None:
    s = tiny_settings(tmp_path)
    bootstrap_study(s)
    first = owner(s, 0)
    assignment, _ = first.claim()
    assert first.trial is not None
    # The worker computed its result, wrote it down, and died before telling it.
    path = first.pending.write(
        {
            "number": assignment.number,
            "trial_id": first.trial_id,
            "state": "COMPLETE",
            "value": 1.25,
            "attrs": {attrs.WALL_S: 3.0},
            "reports": {"1": 0.5},
        }
    )
    assert first.pending.holds(assignment.number)
    told = [owner(s, 1).flush_pending(), owner(s, 2).flush_pending()]
    assert told == [1, 0] and not path.exists()
    trial = load_study(s, worker=0).study.trials[assignment.number]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 1.25)
    assert trial.intermediate_values == {1: 0.5} and trial.user_attrs[attrs.WALL_S] == 3.0


def _flush(settings: Settings, worker: int, told: multiprocessing.Queue[int]) -> None:
    told.put(owner(settings, worker).flush_pending())


def test_workers_flushing_together_tell_each_pending_result_once(tmp_path: Path) -> None:
    """Seen on main: two workers flushed the same file and one died (FileNotFoundError)."""
    s = tiny_settings(tmp_path, "search.n_trials=8")
    bootstrap_study(s)
    first = owner(s, 0)
    numbers = []
    for value in range(6):
        assignment, _ = first.claim()
        assert first.trial is not None
        first.pending.write(
            {
                "number": assignment.number,
                "trial_id": first.trial_id,
                "state": "COMPLETE",
                "value": float(value),
                "attrs": {},
            }
        )
        first.trial, first.trial_id = None, None
        numbers.append(assignment.number)
    context = multiprocessing.get_context("fork")
    told: multiprocessing.Queue[int] = context.Queue()
    flushers = [context.Process(target=_flush, args=(s, w, told)) for w in range(1, 5)]
    for process in flushers:
        process.start()
    for process in flushers:
        process.join(120)
    assert [p.exitcode for p in flushers] == [0, 0, 0, 0]
    assert sum(told.get(timeout=5) for _ in flushers) == len(numbers)
    assert not list(s.pending_dir.iterdir())
    study = load_study(s, worker=0).study
    assert [study.trials[n].state for n in numbers] == [TrialState.COMPLETE] * len(numbers)


def test_the_pruner_judges_unsent_reports_and_an_outage_reads_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports wait for the checkpoint (flush_notes), but the pruner must see the epoch's value
    at once; asked while the database is down it answers "go on", without raising."""
    s = tiny_settings(tmp_path, "search.pruner=median", "search.pruner_startup_trials=1")
    bootstrap_study(s)
    who = TrialOwner(s, DistEnv(), encoding_from_config(s.space))
    for value in (1.0, 2.0):  # two finished trials, with epoch-1 values 1.0 and 2.0 (minimised)
        who.claim()
        who.note_report(1, value)
        who.finish(TrialState.COMPLETE, value, {})
    who.claim()
    who.note_report(1, 9.0)  # noted, not sent: worse than the median at epoch 1
    assert who.should_prune()
    assert who.trial_id is not None
    assert not who.storage.get_trial(who.trial_id).intermediate_values  # not written
    who.note_report(1, 0.5)
    assert not who.should_prune()

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(who.storage, "get_trial", down)
    who.note_report(1, 9.0)
    assert not who.should_prune()
