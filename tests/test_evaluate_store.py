"""The evaluations table: planned once, resumed by reruns, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from cnas_hpc.common.errors import StudyError
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.evaluate import store


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'eval.db'}"  # the folder is created
    else:
        url = request.getfixturevalue("fresh_pg_url")
    with store.opened(StudyConfig(storage=url)) as engine:
        yield engine


CELLS = [
    store.PlannedCell("study:trial-3", "study", "{}", "aaa", study_name="study", trial_number=3),
    store.PlannedCell("DARTS_V2", "preset", "{}", "bbb"),
]


def _plan(
    engine: sqlalchemy.Engine, cells: list[store.PlannedCell], digest: str = "h1"
) -> list[store.Row]:
    return store.plan(
        engine, "ev", cells, method="supervised", protocol_name="debug",
        protocol={"epochs": 3}, protocol_hash=digest, seed=0, epochs=3,
    )  # fmt: skip


def test_a_plan_is_made_once_and_a_rerun_keeps_it(engine: sqlalchemy.Engine) -> None:
    rows = _plan(engine, CELLS)
    assert [(r.cell_index, r.cell_key, r.state) for r in rows] == [
        (0, "study:trial-3", "PENDING"),
        (1, "DARTS_V2", "PENDING"),
    ]
    assert [r.cell_key for r in _plan(engine, CELLS[:1])] == ["study:trial-3", "DARTS_V2"]
    with pytest.raises(StudyError, match="planned with other settings"):
        _plan(engine, CELLS, digest="h2")


def test_a_row_goes_running_then_complete_with_its_results(engine: sqlalchemy.Engine) -> None:
    _plan(engine, CELLS)
    store.start(engine, "ev", 1, worker="slurm:7_1")
    store.progress(engine, "ev", 1, epochs_done=2)
    assert store.rows(engine, "ev")[1].state == "RUNNING"
    store.finish(engine, "ev", 1, state=store.COMPLETE, test_accuracy=0.9, test_error=0.1, params=5)
    row = store.rows(engine, "ev")[1]
    assert (row.state, row.test_accuracy, row.params, row.epochs_done) == ("COMPLETE", 0.9, 5, 2)
    assert row.worker == "slurm:7_1"
    with pytest.raises(ValueError, match="not result columns"):
        store.finish(engine, "ev", 0, state=store.FAIL, colour="red")


def test_a_claimed_row_is_its_worker_s_until_released(engine: sqlalchemy.Engine) -> None:
    _plan(engine, CELLS)
    assert store.claim(engine, "ev", 0, worker="slurm:7_0", grace_s=60).claimed
    other = store.claim(engine, "ev", 0, worker="slurm:8_0", grace_s=60)
    assert not other.claimed and other.owner == "slurm:7_0"
    # The rerun guard sees the array of a RUNNING row.
    assert store.running_arrays(engine, "ev") == ["7"]
    store.progress(engine, "ev", 0, epochs_done=1)
    # Only its worker hands it back; progress stays for the resume.
    store.release(engine, "ev", 0, worker="slurm:8_0")
    assert store.rows(engine, "ev")[0].state == "RUNNING"
    store.release(engine, "ev", 0, worker="slurm:7_0")
    row = store.rows(engine, "ev")[0]
    assert (row.state, row.epochs_done) == ("PENDING", 1)
    assert store.claim(engine, "ev", 0, worker="slurm:8_0", grace_s=60).claimed
