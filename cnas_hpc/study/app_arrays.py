"""Which SLURM arrays work an evaluation or a fidelity study: a rerun during one is refused.

The search remembers its arrays in the Optuna study (:func:`cnas_hpc.study.lifecycle.record_array`);
the evaluation and fidelity apps have no study of their own, so their arrays go to the small
``cnas_arrays`` table next to their rows: ``(app, name, array_job_id)``. The launcher records
an array right after submitting it; the submitting side of a rerun asks SLURM whether any
recorded array still holds tasks (:func:`live_arrays`) and refuses to submit a second one.

Contract: SQLite and PostgreSQL (SQLAlchemy Core, created if missing). Only the submitting
process uses it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

from cnas_hpc.distributed.jobs import array_tasks_held

METADATA = MetaData()

ARRAYS = Table(
    "cnas_arrays",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(32), nullable=False),
    Column("name", String(512), nullable=False),
    Column("array_job_id", String(64), nullable=False),
    Column("created_at", DateTime),
)

#: How many arrays a rerun looks at (the newest).
ARRAYS_KEPT = 20


def record_array(engine: sqlalchemy.Engine, app: str, name: str, array_job_id: str) -> None:
    """Remember that SLURM array ``array_job_id`` works ``app``'s ``name``."""
    METADATA.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.insert(ARRAYS).values(
                app=app, name=name, array_job_id=array_job_id, created_at=datetime.datetime.now()
            )
        )


def recorded_arrays(engine: sqlalchemy.Engine, app: str, name: str) -> list[str]:
    """The arrays recorded for ``app``'s ``name``, newest first (at most :data:`ARRAYS_KEPT`)."""
    METADATA.create_all(engine, checkfirst=True)
    query = (
        sqlalchemy.select(ARRAYS.c.array_job_id)
        .where(ARRAYS.c.app == app, ARRAYS.c.name == name)
        .order_by(ARRAYS.c.id.desc())
        .limit(ARRAYS_KEPT)
    )
    with engine.connect() as conn:
        return [str(row[0]) for row in conn.execute(query)]


def live_arrays(arrays: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``(array, its held tasks)`` for each of ``arrays`` that SLURM still holds tasks of."""
    found = []
    for array in dict.fromkeys(arrays):
        held = array_tasks_held(array)
        if held:
            found.append((array, held))
    return found
