"""Optuna's RDB tables, described once, with only the columns cnas-hpc reads or writes.

Every statement cnas-hpc runs against Optuna's tables is built from these ``Table`` objects
with SQLAlchemy Core (:mod:`cnas_hpc.study.optuna_internals`), except the PostgreSQL scripts
that must run in ONE round trip (see ARCHITECTURE.md, "Optuna hooks"). The columns are left
untyped on purpose: SQLAlchemy then hands back exactly the driver's values (no result
processing per row: the lean read of 10,000 trials reads 400,000 rows), and a string compared
with an enum column (``state``) binds as the plain text both SQLite and PostgreSQL accept.

``tests/test_study_optuna_internals.py`` reflects a database made by the installed Optuna and
checks every table and column named here exists, so a schema change fails there, naming it.
"""

from __future__ import annotations

import sqlalchemy

#: The tables below (never used to create anything: Optuna owns the schema).
METADATA = sqlalchemy.MetaData()


def _table(name: str, *columns: str) -> sqlalchemy.Table:
    return sqlalchemy.Table(name, METADATA, *(sqlalchemy.Column(c) for c in columns))


studies = _table("studies", "study_id")
trials = _table(
    "trials", "trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"
)
trial_heartbeats = _table("trial_heartbeats", "trial_id", "heartbeat")
trial_values = _table("trial_values", "trial_id", "objective", "value", "value_type")
trial_params = _table(
    "trial_params", "param_id", "trial_id", "param_name", "param_value", "distribution_json"
)
trial_user_attributes = _table("trial_user_attributes", "trial_id", "key", "value_json")
trial_system_attributes = _table("trial_system_attributes", "trial_id", "key", "value_json")
trial_intermediate_values = _table(
    "trial_intermediate_values",
    "trial_id",
    "step",
    "intermediate_value",
    "intermediate_value_type",
)
