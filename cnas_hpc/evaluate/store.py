"""The ``evaluations`` table: every evaluated cell and its result, in the study's own database.

One row per (evaluation ``name``, planned ``cell_index``). The submitting side plans the rows
once (:func:`plan`): the list of cells is frozen in the database, so every array task (and
every rerun of the same command) evaluates exactly the cells of the first submission, even
while the source study keeps changing. A row goes ``PENDING -> RUNNING -> COMPLETE`` (or
``FAIL``); a rerun evaluates every row that is not COMPLETE, resuming from its checkpoint.
A worker trains a row only after claiming it (:func:`claim`): a RUNNING row belongs to its
``worker`` while that worker's heartbeat (``updated_at``) is fresh or its SLURM job is held
(:mod:`cnas_hpc.study.row_claims`), so no cell is ever trained by two workers at once.

Contract: only global rank 0 of an evaluation task (and the submitting process) opens the
database. Works on SQLite and PostgreSQL (SQLAlchemy Core; the table is created if missing,
next to Optuna's tables). URLs are shown only masked.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from cnas_hpc.common.errors import StudyError
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.study.row_claims import Claim, RowHeartbeat, array_of_worker, claim_row
from cnas_hpc.study.storage import connect_engine, describe_db_error

METADATA = MetaData()

EVALUATIONS = Table(
    "evaluations",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("cell_index", Integer, nullable=False),
    Column("cell_key", String(255), nullable=False),
    Column("source", String(16), nullable=False),
    Column("study_name", String(512)),
    Column("trial_number", Integer),
    Column("genotype", Text, nullable=False),
    Column("genotype_hash", String(64), nullable=False),
    Column("method", String(16), nullable=False),
    Column("protocol_name", String(64), nullable=False),
    Column("protocol_hash", String(32), nullable=False),
    Column("protocol", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("test_accuracy", Float),
    Column("test_error", Float),
    Column("test_loss", Float),
    Column("probe_knn_accuracy", Float),
    Column("probe_linear_accuracy", Float),
    Column("params", BigInteger),
    Column("macs", BigInteger),
    Column("epochs", Integer),
    Column("epochs_done", Integer),
    Column("wall_s", Float),
    Column("images_per_s", Float),
    Column("fail_reason", Text),
    Column("worker", String(255)),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    UniqueConstraint("name", "cell_index", name="uq_evaluations_name_cell"),
)

#: States of a row.
PENDING, RUNNING, COMPLETE, FAIL = "PENDING", "RUNNING", "COMPLETE", "FAIL"
#: The results also recorded on a study cell's source trial (its ``cnas:eval/<name>`` user
#: attribute, see ``evaluate.runner``), in the order they are written there.
TRIAL_RESULT_COLUMNS = (
    "test_accuracy",
    "test_error",
    "probe_knn_accuracy",
    "probe_linear_accuracy",
    "params",
    "macs",
    "epochs_done",
    "wall_s",
)
#: Result columns a finished row fills (see :func:`finish`).
RESULT_COLUMNS = (*TRIAL_RESULT_COLUMNS, "test_loss", "images_per_s", "fail_reason", "worker")


@dataclass(frozen=True)
class PlannedCell:
    """A cell to evaluate, before it has a row."""

    cell_key: str
    source: str
    genotype_json: str
    genotype_hash: str
    study_name: str | None = None
    trial_number: int | None = None


@dataclass(frozen=True)
class Row:
    """One row of the ``evaluations`` table."""

    name: str
    cell_index: int
    cell_key: str
    source: str
    study_name: str | None
    trial_number: int | None
    genotype: str
    genotype_hash: str
    method: str
    protocol_name: str
    protocol_hash: str
    protocol: str
    seed: int
    state: str
    test_accuracy: float | None
    test_error: float | None
    test_loss: float | None
    probe_knn_accuracy: float | None
    probe_linear_accuracy: float | None
    params: int | None
    macs: int | None
    epochs: int | None
    epochs_done: int | None
    wall_s: float | None
    images_per_s: float | None
    fail_reason: str | None
    worker: str | None

    @classmethod
    def of(cls, mapping: Any) -> Row:
        """From a SQLAlchemy row mapping."""
        return cls(**{name: mapping[name] for name in cls.__dataclass_fields__})


def connect(cfg: StudyConfig) -> sqlalchemy.Engine:
    """An engine on the study's database, with the ``evaluations`` table created if missing.

    Raises:
        StudyError: the database is unreachable or refuses the credentials (one line, masked).
    """
    engine = connect_engine(cfg)
    try:
        METADATA.create_all(engine, checkfirst=True)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise StudyError(describe_db_error(exc, cfg.storage)) from None
    return engine


@contextmanager
def opened(cfg: StudyConfig) -> Iterator[sqlalchemy.Engine]:
    """:func:`connect`, disposed of on exit."""
    engine = connect(cfg)
    try:
        yield engine
    finally:
        engine.dispose()


def _now() -> datetime.datetime:
    return datetime.datetime.now()


def rows(engine: sqlalchemy.Engine, name: str) -> list[Row]:
    """The rows of evaluation ``name``, by cell index (empty when it was never planned)."""
    query = sqlalchemy.select(EVALUATIONS).where(EVALUATIONS.c.name == name)
    with engine.connect() as conn:
        found = [
            Row.of(r) for r in conn.execute(query.order_by(EVALUATIONS.c.cell_index)).mappings()
        ]
    return found


def all_rows(engine: sqlalchemy.Engine) -> list[Row]:
    """Every row of every evaluation (for tables that compare evaluations)."""
    query = sqlalchemy.select(EVALUATIONS).order_by(EVALUATIONS.c.name, EVALUATIONS.c.cell_index)
    with engine.connect() as conn:
        return [Row.of(r) for r in conn.execute(query).mappings()]


def plan(
    engine: sqlalchemy.Engine,
    name: str,
    cells: Sequence[PlannedCell],
    *,
    method: str,
    protocol_name: str,
    protocol: dict[str, Any],
    protocol_hash: str,
    seed: int,
    epochs: int,
) -> list[Row]:
    """Insert the rows of evaluation ``name`` unless it exists; return its rows.

    An existing evaluation keeps its cells (a rerun resumes it) but must have been planned with
    the same protocol: evaluating other settings under the same name is refused.

    Raises:
        StudyError: ``name`` exists with another protocol (one line).
    """
    existing = rows(engine, name)
    if existing:
        if existing[0].protocol_hash != protocol_hash:
            raise StudyError(
                f"evaluation {name!r} was planned with other settings "
                f"(protocol {existing[0].protocol_name}, {existing[0].protocol_hash}): "
                "choose another eval.name"
            )
        return existing
    now = _now()
    values = [
        {
            "name": name,
            "cell_index": index,
            "cell_key": cell.cell_key,
            "source": cell.source,
            "study_name": cell.study_name,
            "trial_number": cell.trial_number,
            "genotype": cell.genotype_json,
            "genotype_hash": cell.genotype_hash,
            "method": method,
            "protocol_name": protocol_name,
            "protocol_hash": protocol_hash,
            "protocol": json.dumps(protocol, sort_keys=True, default=str),
            "seed": seed,
            "state": PENDING,
            "epochs": epochs,
            "created_at": now,
            "updated_at": now,
        }
        for index, cell in enumerate(cells)
    ]
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.insert(EVALUATIONS), values)
    except sqlalchemy.exc.IntegrityError:
        pass  # planned concurrently by another submission: theirs stands
    return rows(engine, name)


def _update(engine: sqlalchemy.Engine, name: str, cell_index: int, **values: Any) -> None:
    statement = (
        sqlalchemy.update(EVALUATIONS)
        .where(EVALUATIONS.c.name == name, EVALUATIONS.c.cell_index == cell_index)
        .values(updated_at=_now(), **values)
    )
    with engine.begin() as conn:
        conn.execute(statement)


def _key(name: str, cell_index: int) -> sqlalchemy.ColumnElement[bool]:
    return sqlalchemy.and_(EVALUATIONS.c.name == name, EVALUATIONS.c.cell_index == cell_index)


def claim(
    engine: sqlalchemy.Engine, name: str, cell_index: int, *, worker: str, grace_s: float
) -> Claim:
    """Claim row ``cell_index`` of ``name`` for ``worker`` (see
    :func:`cnas_hpc.study.row_claims.claim_row`): RUNNING, its worker, a fresh heartbeat."""
    return claim_row(
        engine, EVALUATIONS, _key(name, cell_index), worker=worker, grace_s=grace_s,
        what=f"cell {cell_index} of {name!r}", fail_reason=None,
    )  # fmt: skip


def heartbeat(
    engine: sqlalchemy.Engine, name: str, cell_index: int, *, worker: str, interval: float
) -> RowHeartbeat:
    """The heartbeat of ``worker``'s claimed row, to run while it trains (a context manager)."""
    return RowHeartbeat(
        engine, EVALUATIONS, _key(name, cell_index), worker=worker, interval=interval,
        what=f"cell {cell_index} of {name!r}",
    )  # fmt: skip


def release(engine: sqlalchemy.Engine, name: str, cell_index: int, *, worker: str) -> None:
    """Hand ``worker``'s RUNNING row back (PENDING, progress kept): the next run of the same
    command resumes it at once, from its checkpoint (an interrupted local run)."""
    statement = (
        sqlalchemy.update(EVALUATIONS)
        .where(_key(name, cell_index), EVALUATIONS.c.state == RUNNING,
               EVALUATIONS.c.worker == worker)
        .values(state=PENDING, updated_at=_now())
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(statement)


def start(engine: sqlalchemy.Engine, name: str, cell_index: int, *, worker: str) -> None:
    """Mark a row RUNNING by ``worker`` unconditionally (tests and tools; workers :func:`claim`)."""
    _update(engine, name, cell_index, state=RUNNING, worker=worker, fail_reason=None)


def running_arrays(engine: sqlalchemy.Engine, name: str) -> list[str]:
    """The SLURM arrays whose tasks hold RUNNING rows of ``name`` (for the rerun guard)."""
    found = [array_of_worker(row.worker) for row in rows(engine, name) if row.state == RUNNING]
    return [array for array in dict.fromkeys(found) if array is not None]


def progress(engine: sqlalchemy.Engine, name: str, cell_index: int, *, epochs_done: int) -> None:
    """Record how many epochs a running row has finished."""
    _update(engine, name, cell_index, epochs_done=epochs_done)


def finish(
    engine: sqlalchemy.Engine, name: str, cell_index: int, *, state: str, **results: Any
) -> None:
    """Mark a row COMPLETE or FAIL with its results (see :data:`RESULT_COLUMNS`)."""
    unknown = sorted(set(results) - set(RESULT_COLUMNS))
    if unknown:
        raise ValueError(f"not result columns: {', '.join(unknown)}")
    _update(engine, name, cell_index, state=state, **results)
