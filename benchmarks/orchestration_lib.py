"""Shared pieces of ``bench_orchestration.py``: scratch databases, study population, statistics.

Nothing here is imported by the package: it exists to measure it.
"""

from __future__ import annotations

import datetime
import json
import random
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import psycopg2
import sqlalchemy
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState
from psycopg2 import sql
from psycopg2.extras import execute_values
from sqlalchemy.engine import make_url

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings, settings_from_config
from cnas_hpc.space.encoding import CellEncoding, compact_hash, encoding_from_config
from cnas_hpc.space.genotype import genotype_to_json
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import KNOWN_SCHEMA_VERSIONS

ROOT = Path(__file__).resolve().parents[1]
#: The dev cluster's server (slurm/dev-cluster.sh); the role may create databases.
PG_URL = "postgresql+psycopg2://cnas@127.0.0.1:5432/cnas"


def _admin(statement: sql.Composable) -> None:
    url = make_url(PG_URL)
    conn = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one measurement, dropped afterwards."""
    name = f"cnas_bench_{uuid.uuid4().hex[:12]}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_settings(url: str, output_dir: Path, *overrides: str) -> Settings:
    """The search's real settings (default sampler) on ``url``, study ``bench``."""
    with initialize_config_dir(config_dir=str(ROOT / "cnas_hpc" / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="search",
            overrides=[
                "study=postgres",
                f"study.storage={url}",
                "study.name=bench",
                "search.n_trials=1000000",
                f"output_dir={output_dir}",
                *overrides,
            ],
        )
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return settings_from_config({str(k): v for k, v in container.items()})


def finished_trial(encoding: CellEncoding, number: int, rng: random.Random) -> FrozenTrial:
    """A COMPLETE trial as a worker leaves it: parameters, value, reports, every attribute."""
    choices = encoding.distributions()
    distributions: dict[str, BaseDistribution] = dict(choices)
    genotype = encoding.from_params({name: rng.choice(d.choices) for name, d in choices.items()})
    params: dict[str, Any] = dict(encoding.to_params(genotype))
    value = rng.uniform(3.0, 4.5)
    user_attrs: dict[str, Any] = {
        attrs.GENOTYPE: genotype_to_json(genotype),
        attrs.ARCH_HASH: compact_hash(genotype),
        attrs.WORKER: f"slurm:1000_{number % 64}",
        attrs.WORKER_INDEX: number % 64,
        attrs.HOST: "node-01",
        attrs.WORLD_SIZE: 1,
        attrs.CPU_THREADS: 8,
        attrs.JOB: f"1000_{number % 64}",
        attrs.ARRAY_JOB: "1000",
        attrs.ARRAY_TASK: number % 64,
        attrs.N_PARAMS: rng.randint(10_000, 90_000),
        attrs.MACS: rng.randint(1_000_000, 9_000_000),
        attrs.WALL_S: rng.uniform(20, 60),
        attrs.EPOCHS_DONE: 2,
        attrs.TRAIN_LOSS: value + 0.4,
        attrs.VAL_LOSS: value,
        attrs.IMAGES_PER_S: rng.uniform(200, 400),
    }
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=value,
        params=params,
        distributions=distributions,
        user_attrs=user_attrs,
        intermediate_values={1: value + 0.1, 2: value},
    )


def populate(handle: StudyHandle, encoding: CellEncoding, up_to: int, seed: int = 0) -> float:
    """Add COMPLETE trials until the study holds ``up_to``; returns the seconds it took.

    Written in bulk straight into Optuna's tables (one transaction per 1,000 trials): Optuna's
    ``add_trials`` takes about half a second per trial on this machine, hours for 10,000. The
    rows are exactly those Optuna writes (the schema revision is checked first).
    """
    engine = handle.engine
    with engine.connect() as check:
        revision = check.execute(
            sqlalchemy.text("SELECT version_num FROM alembic_version")
        ).scalar()
    assert revision in KNOWN_SCHEMA_VERSIONS, revision
    have = len(handle.study.get_trials(deepcopy=False))
    rng = random.Random(seed + have)
    started = time.perf_counter()
    url = make_url(engine.url.render_as_string(hide_password=False))
    conn = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
    )
    try:
        for first in range(have, up_to, 1000):
            trials = [
                finished_trial(encoding, n, rng) for n in range(first, min(up_to, first + 1000))
            ]
            with conn, conn.cursor() as cur:
                _insert(cur, handle.study_id, first, trials)
    finally:
        conn.close()
    return time.perf_counter() - started


def _insert(cur: Any, study_id: int, first: int, trials: list[FrozenTrial]) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    ids = execute_values(
        cur,
        "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
        "VALUES %s RETURNING trial_id",
        [(first + i, study_id, "COMPLETE", now, now) for i in range(len(trials))],
        fetch=True,
    )
    params, values, reports, user_attrs = [], [], [], []
    for (trial_id,), trial in zip(ids, trials, strict=True):
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            internal = dist.to_internal_repr(value)
            params.append((trial_id, name, internal, distribution_to_json(dist)))
        values.append((trial_id, 0, trial.value, "FINITE"))
        reports += [(trial_id, step, v, "FINITE") for step, v in trial.intermediate_values.items()]
        user_attrs += [(trial_id, k, json.dumps(v)) for k, v in trial.user_attrs.items()]
    execute_values(
        cur,
        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES %s",
        params,
    )
    execute_values(
        cur, "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES %s", values
    )
    execute_values(
        cur,
        "INSERT INTO trial_intermediate_values "
        "(trial_id, step, intermediate_value, intermediate_value_type) VALUES %s",
        reports,
    )
    execute_values(
        cur, "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES %s", user_attrs
    )


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max / mean of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] * 1e3

    return {
        "n": len(ordered),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def encoding_of(settings: Settings) -> CellEncoding:
    return encoding_from_config(settings.space)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
