"""The ``fidelity_measurements`` table: one row per measurement of one cell, reused by reruns.

A measurement is ``(kind, config_hash, genotype_hash, seed)``: the label-free score of a cell
under one search config and seed (``kind="score"``), its zero-cost proxies under one network
shape, batch and seed (``kind="zero_cost"``), or its accuracy under one short protocol or one
ground-truth file (``kind="accuracy"``). A fidelity study only plans the measurements that are
missing: a rerun with a larger ``fidelity.n_random`` computes the new cells alone, and a study
with another search config (another objective, loss, proxy size) reuses every accuracy already
measured.

A unit is measured only by the worker that claimed it (:func:`claim`, see
:mod:`cnas_hpc.study.row_claims`): never by two workers at once.

Contract: only global rank 0 of a task (and the submitting process) opens the database; SQLite
or PostgreSQL (SQLAlchemy Core, created if missing next to Optuna's tables).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
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

from cnas_hpc.study.row_claims import Claim, RowHeartbeat, array_of_worker, claim_row

METADATA = MetaData()

MEASUREMENTS = Table(
    "fidelity_measurements",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("config_hash", String(32), nullable=False),
    Column("config", Text, nullable=False),
    Column("genotype_hash", String(64), nullable=False),
    Column("genotype", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("value", Float),
    Column("extra", Text),
    Column("params", BigInteger),
    Column("macs", BigInteger),
    Column("wall_s", Float),
    Column("worker", String(255)),
    Column("fail_reason", Text),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    UniqueConstraint("kind", "config_hash", "genotype_hash", "seed", name="uq_fidelity_unit"),
)

SCORE, ACCURACY, ZERO_COST = "score", "accuracy", "zero_cost"
PENDING, RUNNING, COMPLETE, FAIL = "PENDING", "RUNNING", "COMPLETE", "FAIL"


@dataclass(frozen=True)
class Unit:
    """A measurement to make (before it has a row)."""

    kind: str
    config_hash: str
    config: str
    genotype_hash: str
    genotype: str
    seed: int


@dataclass(frozen=True)
class Measurement:
    """One row of ``fidelity_measurements``."""

    id: int
    kind: str
    config_hash: str
    genotype_hash: str
    genotype: str
    seed: int
    state: str
    value: float | None
    extra: dict[str, Any]
    params: int | None
    macs: int | None
    wall_s: float | None
    fail_reason: str | None

    @classmethod
    def of(cls, row: Any) -> Measurement:
        """From a SQLAlchemy row mapping."""
        return cls(
            id=int(row["id"]),
            kind=str(row["kind"]),
            config_hash=str(row["config_hash"]),
            genotype_hash=str(row["genotype_hash"]),
            genotype=str(row["genotype"]),
            seed=int(row["seed"]),
            state=str(row["state"]),
            value=row["value"],
            extra=json.loads(row["extra"]) if row["extra"] else {},
            params=row["params"],
            macs=row["macs"],
            wall_s=row["wall_s"],
            fail_reason=row["fail_reason"],
        )

    @property
    def key(self) -> tuple[str, str, str, int]:
        """``(kind, config_hash, genotype_hash, seed)``: what identifies the measurement."""
        return (self.kind, self.config_hash, self.genotype_hash, self.seed)


def create_table(engine: sqlalchemy.Engine) -> None:
    """Create the table if it is missing."""
    METADATA.create_all(engine, checkfirst=True)


def _now() -> datetime.datetime:
    return datetime.datetime.now()


def plan(engine: sqlalchemy.Engine, units: Sequence[Unit]) -> list[Measurement]:
    """Insert the missing units; return the rows of ``units``, in their order."""
    existing = {m.key: m for m in find(engine, units)}
    missing = [u for u in units if (u.kind, u.config_hash, u.genotype_hash, u.seed) not in existing]
    now = _now()
    for unit in missing:  # one by one: a concurrent planner may insert the same unit
        try:
            with engine.begin() as conn:
                conn.execute(
                    sqlalchemy.insert(MEASUREMENTS).values(
                        kind=unit.kind,
                        config_hash=unit.config_hash,
                        config=unit.config,
                        genotype_hash=unit.genotype_hash,
                        genotype=unit.genotype,
                        seed=unit.seed,
                        state=PENDING,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except sqlalchemy.exc.IntegrityError:
            continue
    found = {m.key: m for m in find(engine, units)}
    return [found[(u.kind, u.config_hash, u.genotype_hash, u.seed)] for u in units]


def find(engine: sqlalchemy.Engine, units: Sequence[Unit]) -> list[Measurement]:
    """The rows that exist for ``units`` (any order)."""
    if not units:
        return []
    configs = sorted({u.config_hash for u in units})
    query = sqlalchemy.select(MEASUREMENTS).where(MEASUREMENTS.c.config_hash.in_(configs))
    wanted = {(u.kind, u.config_hash, u.genotype_hash, u.seed) for u in units}
    with engine.connect() as conn:
        rows = [Measurement.of(r) for r in conn.execute(query).mappings()]
    return [m for m in rows if m.key in wanted]


def get(engine: sqlalchemy.Engine, unit_id: int) -> Measurement | None:
    """The row with id ``unit_id``."""
    query = sqlalchemy.select(MEASUREMENTS).where(MEASUREMENTS.c.id == unit_id)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else Measurement.of(row)


def _update(engine: sqlalchemy.Engine, unit_id: int, **values: Any) -> None:
    statement = (
        sqlalchemy.update(MEASUREMENTS)
        .where(MEASUREMENTS.c.id == unit_id)
        .values(updated_at=_now(), **values)
    )
    with engine.begin() as conn:
        conn.execute(statement)


def claim(engine: sqlalchemy.Engine, unit_id: int, *, worker: str, grace_s: float) -> Claim:
    """Claim unit ``unit_id`` for ``worker`` (:func:`cnas_hpc.study.row_claims.claim_row`)."""
    return claim_row(
        engine, MEASUREMENTS, MEASUREMENTS.c.id == unit_id, worker=worker, grace_s=grace_s,
        what=f"measurement {unit_id}", fail_reason=None,
    )  # fmt: skip


def heartbeat(
    engine: sqlalchemy.Engine, unit_id: int, *, worker: str, interval: float
) -> RowHeartbeat:
    """The heartbeat of ``worker``'s claimed unit while it is measured (a context manager)."""
    return RowHeartbeat(
        engine, MEASUREMENTS, MEASUREMENTS.c.id == unit_id, worker=worker, interval=interval,
        what=f"measurement {unit_id}",
    )  # fmt: skip


def running_arrays(engine: sqlalchemy.Engine, unit_ids: Sequence[int]) -> list[str]:
    """The SLURM arrays whose tasks hold RUNNING units among ``unit_ids`` (the rerun guard)."""
    query = sqlalchemy.select(MEASUREMENTS.c.worker).where(
        MEASUREMENTS.c.id.in_(list(unit_ids)), MEASUREMENTS.c.state == RUNNING
    )
    with engine.connect() as conn:
        found = [array_of_worker(row[0]) for row in conn.execute(query)]
    return [array for array in dict.fromkeys(found) if array is not None]


def finish(
    engine: sqlalchemy.Engine,
    unit_id: int,
    *,
    value: float,
    extra: dict[str, Any],
    params: int | None,
    macs: int | None,
    wall_s: float,
) -> None:
    """Record a unit's result (COMPLETE)."""
    _update(
        engine,
        unit_id,
        state=COMPLETE,
        value=value,
        extra=json.dumps(extra),
        params=params,
        macs=macs,
        wall_s=wall_s,
    )


def fail(engine: sqlalchemy.Engine, unit_id: int, *, reason: str, wall_s: float) -> None:
    """Record a unit's failure (FAIL, with its reason); a rerun tries it again."""
    _update(engine, unit_id, state=FAIL, fail_reason=reason, wall_s=wall_s)
