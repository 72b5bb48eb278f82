"""Bad input is refused on the submitting side, before anything is queued or written.

Every case runs the real multirun command on the local SLURM cluster against a fresh PostgreSQL
database (``-m hydra/launcher=slurm_cpu 'worker=range(2)' study=postgres study.storage=<fresh>``)
plus one bad override, and checks: exit status 2, exactly one ``error: `` line whose text is
specific to the case, no traceback, no job of this test in ``squeue`` or ``sacct``, no file under
the output home, and the database's rows unchanged (a fresh database keeps no table at all).

The jobs of each command are named by a unique ``hydra.job.name``, so jobs of engineers running
other tests on the same cluster at the same time are never mistaken for ours.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from psycopg2 import sql
from sqlalchemy.engine import make_url

from cnas_hpc.cli.search import check_search_split
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.study.lifecycle import bootstrap_study
from tests.helpers import CONFIGS, run_search, tiny_settings

STUDY = "validation-test"
#: The multirun every case starts from; the case adds its bad override(s).
MULTIRUN = ("-m", "hydra/launcher=slurm_cpu", "worker=range(2)")
#: Overrides of every command, single runs included.
COMMON = ("debug=tiny", "study=postgres", f"study.name={STUDY}", "search.poll_seconds=1")
WRONG_PASSWORD = "wrong-password"


@dataclass(frozen=True)
class Case:
    """One bad input: overrides and expected error text, with ``{empty}`` (an empty folder)
    substituted; ``port`` replaces the database port; ``bootstrapped`` creates the study first
    (with the default space and objective); ``env`` is added to the command's environment."""

    overrides: tuple[str, ...]
    needle: str
    port: int | None = None
    bootstrapped: bool = False
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "unknown-op": Case(("space.ops=[conv_9x9]",), "space: unknown op 'conv_9x9'"),
    "unknown-encoding": Case(("space.encoding=bogus",), "space: unknown encoding 'bogus'"),
    "zero-channels": Case(("model.channels=0",), "model.channels must be an integer >= 1, got 0"),
    "zero-cells": Case(("model.cells=0",), "model.cells must be an integer >= 1, got 0"),
    "zero-nodes": Case(("space.n_nodes=0",), "space: n_nodes must be an integer >= 1"),
    "fraction-zero": Case(("data.fraction=0",), "data.fraction must be in (0, 1], got 0"),
    "fraction-above-one": Case(("data.fraction=1.5",), "data.fraction must be in (0, 1], got 1.5"),
    "batch-not-divisible": Case(
        ("hydra.launcher.tasks_per_node=3", "train.batch_size=32"),
        "train.batch_size=32 is not divisible by the world size 3",
    ),
    "more-gpus-than-tasks": Case(
        ("hydra.launcher.gpus_per_node=2",), "gpus_per_node=2 exceeds tasks_per_node=1"
    ),
    "n-trials-zero": Case(("search.n_trials=0",), "search.n_trials must be an integer > 0, got 0"),
    "n-trials-negative": Case(
        ("search.n_trials=-3",), "search.n_trials must be an integer > 0, got -3"
    ),
    "missing-npz": Case(
        ("data=npz", "data.path=/nonexistent.npz"), "npz file /nonexistent.npz not found"
    ),
    "missing-cifar10": Case(
        ("data=cifar10", "data.root={empty}"), "CIFAR-10 not found under {empty}"
    ),
    "batch-larger-than-split": Case(
        ("train.batch_size=4096",), "fewer than one batch (train.batch_size=4096)"
    ),
    "unreachable-database": Case((), "the server is unreachable", port=1),
    "wrong-credentials": Case(
        (), "the server refused the credentials", env={"PGPASSWORD": WRONG_PASSWORD}
    ),
    "study-with-another-space": Case(
        ("space.n_nodes=3",),
        f"study '{STUDY}' was built for another search space",
        bootstrapped=True,
    ),
    "study-with-another-objective": Case(
        ("search.objective=train_contrastive_loss",),
        f"study '{STUDY}' was built for objective 'val_contrastive_loss'",
        bootstrapped=True,
    ),
    # Seen reaching the queue on main (issue 13): each must be refused up front.
    "npz-wrong-dtype": Case(
        ("data=npz", "data.path={data}/float.npz"), "'images' must be uint8, got float32"
    ),
    "npz-wrong-layout": Case(
        ("data=npz", "data.path={data}/nchw.npz"),
        "'images' must be NHWC with 1 or 3 channels (or NHW, grey), got shape (40, 3, 8, 8)",
    ),
    "npz-wrong-channels": Case(
        ("data=npz", "data.path={data}/rgba.npz"), "got shape (40, 8, 8, 4)"
    ),
    "folder-with-a-non-image": Case(
        ("data=folder", "data.root={data}/images"), "{data}/images/b/notes.png is not an image"
    ),
    "no-worker": Case(("worker=range(0)",), "worker=range(0) asks for no worker"),
    "sqlite-folder-missing": Case(
        ("study.storage=sqlite:////nonexistent-cnas/dir/cnas.db",),
        "the folder /nonexistent-cnas/dir of the SQLite file does not exist",
    ),
    "timeout-under-11-minutes": Case(
        ("hydra.launcher.timeout_min=5",), "hydra.launcher.timeout_min=5 is under 11"
    ),
    "n-trials-not-a-number": Case(
        ("search.n_trials=abc",), "search.n_trials must be an integer, got 'abc'"
    ),
    # Issue 19: Hydra's multi-line errors, SLURM's refusals and traps seen after a study existed.
    "unknown-data": Case(("data=imagenet",), "config group data has no option 'imagenet'"),
    "misspelt-model": Case(("model=proxy_smal",), "did you mean model=proxy_small?"),
    "misspelt-key": Case(("search.ntrials=5",), "did you mean search.n_trials?"),
    "unusable-output-dir": Case(
        ("output_dir=/proc/nope",), "output_dir=/proc/nope cannot be created"
    ),
    "npz-without-images": Case(
        ("data=npz", "data.path={data}/empty.npz"), "holds 0 images: nothing to search on"
    ),
    "proxy-over-the-allocation": Case(
        ("model.channels=3000",), "more than the 1.2 GiB of hydra.launcher.additional_parameters"
    ),
    "unknown-partition": Case(
        ("hydra.launcher.partition=nosuch",), "SLURM has no such partition (partitions: "
    ),
    "gpus-on-a-cluster-without": Case(
        ("hydra.launcher.gpus_per_node=1",), "gpus_per_node=1: partition debug has no GPU"
    ),
    "array-over-max-array-size": Case(
        ("worker=range(5000)",), "the sweep asks for 5000 workers, more than SLURM's MaxArraySize"
    ),
    "study-scored-with-another-setup": Case(
        ("model.cells=2", "train.epochs=2"),
        f"study '{STUDY}' was scored with another setup: model.cells 3 -> 2, train.epochs 1 -> 2;",
        bootstrapped=True,
    ),
}
#: The same refusals as single runs (``python launch/search.py <bad>``, no ``-m``).
SINGLE_RUN_CASES = (
    "n-trials-zero", "missing-npz", "batch-larger-than-split", "wrong-credentials",
    "unknown-data", "misspelt-key", "unusable-output-dir", "study-scored-with-another-setup",
)  # fmt: skip


def table_rows(url: str) -> dict[str, int]:
    """Rows of every table of the database at ``url`` (``schema.table -> count``)."""
    parsed = make_url(url)
    conn = psycopg2.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        dbname=parsed.database,
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            counts: dict[str, int] = {}
            for schema, table in cur.fetchall():
                cur.execute(
                    sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                )
                row = cur.fetchone()
                assert row is not None
                counts[f"{schema}.{table}"] = int(row[0])
    finally:
        conn.close()
    return counts


def _slurm_lines(*args: str) -> list[str]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def jobs_named(name: str, since: datetime) -> set[str]:
    """Ids of jobs named ``name``: queued or running (squeue) or accounted since ``since``."""
    queued = _slurm_lines("squeue", "-h", "--name", name, "-o", "%i")
    start = since.strftime("%Y-%m-%dT%H:%M:%S")
    accounted = _slurm_lines("sacct", "-n", "-X", "-P", "--name", name, "-S", start, "-o", "JobID")
    return set(queued) | set(accounted)


@pytest.fixture
def job_name() -> Iterator[str]:
    """A SLURM job name unique to this test; any job left under it is cancelled, by id."""
    name = f"cnas-validation-{uuid.uuid4().hex[:10]}"
    yield name
    leftover = _slurm_lines("squeue", "-h", "--name", name, "-o", "%i")
    if leftover:
        subprocess.run(["scancel", *leftover], timeout=60, check=False)


def test_the_job_name_reaches_the_slurm_launcher() -> None:
    """The no-job check below looks jobs up by ``hydra.job.name``: the launcher must use it."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            config_name="search",
            overrides=["hydra/launcher=slurm_cpu", "hydra.job.name=cnas-validation-x"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher.name == "cnas-validation-x"


@pytest.mark.postgres
def test_the_server_requires_a_password_on_127_0_0_1(postgres_server: str) -> None:
    """Premise of the wrong-credentials case: pg_hba asks 127.0.0.1 for a password."""
    parsed = make_url(postgres_server)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            dbname=parsed.database,
            password=WRONG_PASSWORD,
            connect_timeout=5,
        )


def bad_data(folder: Path) -> Path:
    """Data the loader would refuse in every worker: npz files of the wrong dtype, layout and
    channels, and an image folder with a text file named like an image."""
    folder.mkdir()
    np.savez(folder / "float.npz", images=np.zeros((40, 8, 8, 3), dtype=np.float32))
    np.savez(folder / "nchw.npz", images=np.zeros((40, 3, 8, 8), dtype=np.uint8))
    np.savez(folder / "rgba.npz", images=np.zeros((40, 8, 8, 4), dtype=np.uint8))
    np.savez(folder / "empty.npz", images=np.zeros((0, 8, 8, 3), dtype=np.uint8))
    for name in ("a", "b"):
        (folder / "images" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(
            folder / "images" / name / "0.png"
        )
    (folder / "images" / "b" / "notes.png").write_text("not an image")
    return folder


def _run_case(
    case_id: str, url: str, home: Path, tmp_path: Path, job_name: str, *, multirun: bool
) -> None:
    case = CASES[case_id]
    empty = tmp_path / "empty"
    empty.mkdir()
    data = bad_data(tmp_path / "data")
    storage = make_url(url)
    if case.port is not None:
        storage = storage.set(port=case.port)
    if case.bootstrapped:
        # The study as the commands below would make it: the default's two objectives.
        overrides = ("study=postgres", f"study.storage={url}", f"study.name={STUDY}",
                     "search.objectives=[score,naswot]")  # fmt: skip
        bootstrap_study(tiny_settings(tmp_path / "bootstrap", *overrides))
    rows_before = table_rows(url)
    assert bool(rows_before) == case.bootstrapped  # a fresh database has no table at all
    home.mkdir()
    started = datetime.now() - timedelta(minutes=1)
    own = {o.split("=")[0] for o in case.overrides}
    args = [
        *(o for o in (MULTIRUN if multirun else ()) if o.split("=")[0] not in own),
        *COMMON,
        f"study.storage={storage.render_as_string(hide_password=False)}",
        f"hydra.job.name={job_name}",
        *(o.format(empty=empty, data=data) for o in case.overrides),
    ]
    result = run_search(args, home=home, timeout=300, env=case.env)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    assert case.needle.format(empty=empty, data=data) in errors[0], errors[0]
    assert "Traceback" not in output
    assert not jobs_named(job_name, started), "a job was queued"
    assert table_rows(url) == rows_before, "the database was written"
    written = [p for p in home.rglob("*") if p.is_file()]
    assert not written, written  # no saved config, no multirun.yaml, no log


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize("case_id", list(CASES))
def test_a_multirun_with_bad_input_queues_and_writes_nothing(
    case_id: str, fresh_pg_url: str, tmp_path: Path, job_name: str
) -> None:
    _run_case(case_id, fresh_pg_url, tmp_path / "home", tmp_path, job_name, multirun=True)


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize("case_id", SINGLE_RUN_CASES)
def test_a_single_run_with_bad_input_leaves_no_output_dir(
    case_id: str, fresh_pg_url: str, tmp_path: Path, job_name: str
) -> None:
    _run_case(case_id, fresh_pg_url, tmp_path / "home", tmp_path, job_name, multirun=False)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_the_search_split_of_an_npz_is_sized_from_its_header(
    save: Callable[..., None], tmp_path: Path
) -> None:
    path = tmp_path / "tiny.npz"
    save(path, images=np.zeros((40, 8, 8, 3), dtype=np.uint8))
    npz = ("data=npz", f"data.path={path}", "data.fraction=1.0", "data.val_fraction=0.1")
    # 40 images, 4 held out: 36 to train on.
    check_search_split(tiny_settings(tmp_path, *npz, "train.batch_size=36"))
    with pytest.raises(ConfigError, match="the search split has 36 images, fewer than one batch"):
        check_search_split(tiny_settings(tmp_path, *npz, "train.batch_size=37"))
    with pytest.raises(ConfigError, match="has 18 images"):
        check_search_split(
            tiny_settings(tmp_path, *npz, "data.max_images=20", "train.batch_size=32")
        )
    with pytest.raises(ValueError, match="needs labels"):
        check_search_split(tiny_settings(tmp_path, *npz, "data.labeled_fraction=0.5"))


def test_a_file_that_is_not_an_npz_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.npz"
    np.save(path.with_suffix(".npy"), np.zeros((4, 8, 8, 3), dtype=np.uint8))
    path.with_suffix(".npy").rename(path)
    with pytest.raises(ValueError, match=r"is not an \.npz archive"):
        check_search_split(tiny_settings(tmp_path, "data=npz", f"data.path={path}"))
