"""Bad input is refused on the submitting side, before anything is queued or written.

Every case runs the real command, ``launch/search.py``, on the local SLURM cluster against a
fresh PostgreSQL database (``-m hydra/launcher=slurm_cpu 'worker=range(2)' study=postgres
study.storage=<fresh>``, or a single run without ``-m``) plus its bad override(s), and checks:
exit status 2, exactly one ``error: `` line whose text is specific to the case, no traceback, no
password in the output, no job of this test in ``squeue`` or ``sacct``, no file under the output
home, and the database's rows unchanged (a fresh database keeps no table at all).

One interpreter for all the cases (:class:`SharedInterpreter`). A new Python process costs ~4
CPU-s before the command reads its first argument (torch, Hydra); the refusal itself costs a
few tenths. So the cases run one after the other in ONE long-lived process that executes
``launch/search.py`` as ``__main__`` (:func:`runpy.run_path`) with the case's ``sys.argv``,
environment and output files (file descriptors 1 and 2), the exit status being the code of the
``SystemExit`` that would end a process. Between two cases it puts back what a new process
starts with: the environment, the working directory, Hydra's global state. Everything the
command does is the command's own code: the override check before Hydra
(:func:`cnas_hpc.cli.overrides.checked_command`), Hydra's composition, the
``BootstrapCallback`` and what it calls. :func:`test_a_fresh_process_refuses_as_the_shared_one`
runs two cases (a multirun and a single run, both refused at the last stage, after every other
check has passed) as new processes too, exactly as a user does.

Stages: the submitting side refuses bad input at one of the stages below, in this order: the
command's override check, then in the ``BootstrapCallback`` the sweep's check and every check
that :func:`cnas_hpc.cli.search.validate_and_bootstrap` calls. Each case names its stage, the
check function that refuses it; the test asserts that this function is in the traceback of the
refused error (the shared interpreter reads it), so the map below cannot drift from the code,
and :func:`test_every_refusing_stage_has_a_case` asserts that every such check has a case.

==========================  ==================================================================
stage (function)            cases
==========================  ==================================================================
``check_overrides``         before Hydra runs: an unknown group option or key (Hydra's own
                            composition, whose errors are caught here): unknown-data,
                            misspelt-model, misspelt-key
``check_sweep``             the multirun's sweep (``on_multirun_start``): no-worker
``check_config_secrets``    a password Hydra would save: literal-password
``settings_of``             each section's schema and the search space: unknown-op,
                            unknown-encoding, zero-channels, zero-cells, zero-nodes,
                            fraction-zero, fraction-above-one, n-trials-zero, n-trials-negative,
                            n-trials-not-a-number
``check_output_dir``        unusable-output-dir
``check_available``         missing-npz, missing-cifar10
``check_readable``          npz-wrong-dtype, npz-wrong-layout, npz-wrong-channels,
                            npz-without-images, folder-with-a-non-image
``check_search_split``      batch-larger-than-split
``check_launcher``          batch-not-divisible, more-gpus-than-tasks, timeout-under-11-minutes
``check_slurm_request``     what SLURM cannot grant: unknown-partition,
                            gpus-on-a-cluster-without, array-over-max-array-size
``check_proxy_memory``      proxy-over-the-allocation
``bootstrap_study``         the database: unreachable-database, wrong-credentials,
                            sqlite-folder-missing; an existing study built or scored otherwise:
                            study-with-another-space, study-with-another-objective,
                            study-scored-with-another-setup
==========================  ==================================================================

Single runs (``on_run_start``, no launcher) go through the same stages but the sweep, launcher
and SLURM ones; :data:`SINGLE_RUN_CASES` has a case of each but the proxy's memory.

The jobs of each command are named by a unique ``hydra.job.name``, so jobs of engineers running
other tests on the same cluster at the same time are never mistaken for ours.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import inspect
import json
import os
import runpy
import select
import subprocess
import sys
import textwrap
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from psycopg2 import sql
from sqlalchemy.engine import make_url

from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.cli.search import BootstrapCallback, check_search_split, validate_and_bootstrap
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.storage_url import PASSWORD_IN_CONFIG
from cnas_hpc.study.lifecycle import bootstrap_study
from tests.helpers import CONFIGS, ROOT, run_search, tiny_settings

STUDY = "validation-test"
#: The multirun every case starts from; the case adds its bad override(s).
MULTIRUN = ("-m", "hydra/launcher=slurm_cpu", "worker=range(2)")
#: Overrides of every command, single runs included.
COMMON = ("debug=tiny", "study=postgres", f"study.name={STUDY}", "search.poll_seconds=1")
WRONG_PASSWORD = "wrong-password"
#: A password written into ``study.storage`` ('@' and ':' are percent-encoded in the URL); no
#: command may print it, in either form (both start with :data:`SECRET_MARK`).
SECRET = "s3cr3t-Pa55@word:x"
SECRET_MARK = "s3cr3t"
#: The command every case runs.
SCRIPT = ROOT / "launch" / "search.py"


@dataclass(frozen=True)
class Case:
    """One bad input: overrides and expected error text, with ``{empty}`` (an empty folder) and
    ``{data}`` (:func:`bad_data`) substituted; ``stage``: the function that refuses it (see the
    module docstring); ``port`` replaces the database port, ``password`` is written into the
    URL; ``bootstrapped`` creates the study first (with the default space and objectives);
    ``env`` is added to the command's environment."""

    overrides: tuple[str, ...]
    needle: str
    stage: str
    port: int | None = None
    password: str | None = None
    bootstrapped: bool = False
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "unknown-op": Case(("space.ops=[conv_9x9]",), "space: unknown op 'conv_9x9'", "settings_of"),
    "unknown-encoding": Case(
        ("space.encoding=bogus",), "space: unknown encoding 'bogus'", "settings_of"
    ),
    "zero-channels": Case(
        ("model.channels=0",), "model.channels must be an integer >= 1, got 0", "settings_of"
    ),
    "zero-cells": Case(
        ("model.cells=0",), "model.cells must be an integer >= 1, got 0", "settings_of"
    ),
    "zero-nodes": Case(
        ("space.n_nodes=0",), "space: n_nodes must be an integer >= 1", "settings_of"
    ),
    "fraction-zero": Case(
        ("data.fraction=0",), "data.fraction must be in (0, 1], got 0", "settings_of"
    ),
    "fraction-above-one": Case(
        ("data.fraction=1.5",), "data.fraction must be in (0, 1], got 1.5", "settings_of"
    ),
    "batch-not-divisible": Case(
        ("hydra.launcher.tasks_per_node=3", "train.batch_size=32"),
        "train.batch_size=32 is not divisible by the world size 3",
        "check_launcher",
    ),
    "more-gpus-than-tasks": Case(
        ("hydra.launcher.gpus_per_node=2",),
        "gpus_per_node=2 exceeds tasks_per_node=1",
        "check_launcher",
    ),
    "n-trials-zero": Case(
        ("search.n_trials=0",), "search.n_trials must be an integer > 0, got 0", "settings_of"
    ),
    "n-trials-negative": Case(
        ("search.n_trials=-3",), "search.n_trials must be an integer > 0, got -3", "settings_of"
    ),
    "missing-npz": Case(
        ("data=npz", "data.path=/nonexistent.npz"),
        "npz file /nonexistent.npz not found",
        "check_available",
    ),
    "missing-cifar10": Case(
        ("data=cifar10", "data.root={empty}"), "CIFAR-10 not found under {empty}", "check_available"
    ),
    "batch-larger-than-split": Case(
        ("train.batch_size=4096",),
        "fewer than one batch (train.batch_size=4096)",
        "check_search_split",
    ),
    "unreachable-database": Case((), "the server is unreachable", "bootstrap_study", port=1),
    "wrong-credentials": Case(
        (),
        "the server refused the credentials",
        "bootstrap_study",
        env={"PGPASSWORD": WRONG_PASSWORD},
    ),
    "study-with-another-space": Case(
        ("space.n_nodes=3",),
        f"study '{STUDY}' was built for another search space",
        "bootstrap_study",
        bootstrapped=True,
    ),
    "study-with-another-objective": Case(
        ("search.objective=train_contrastive_loss",),
        f"study '{STUDY}' was built for objective 'val_contrastive_loss'",
        "bootstrap_study",
        bootstrapped=True,
    ),
    # Seen reaching the queue on main (issue 13): each must be refused up front.
    "npz-wrong-dtype": Case(
        ("data=npz", "data.path={data}/float.npz"),
        "'images' must be uint8, got float32",
        "check_readable",
    ),
    "npz-wrong-layout": Case(
        ("data=npz", "data.path={data}/nchw.npz"),
        "'images' must be NHWC with 1 or 3 channels (or NHW, grey), got shape (40, 3, 8, 8)",
        "check_readable",
    ),
    "npz-wrong-channels": Case(
        ("data=npz", "data.path={data}/rgba.npz"), "got shape (40, 8, 8, 4)", "check_readable"
    ),
    "folder-with-a-non-image": Case(
        ("data=folder", "data.root={data}/images"),
        "{data}/images/b/notes.png is not an image",
        "check_readable",
    ),
    "no-worker": Case(("worker=range(0)",), "worker=range(0) asks for no worker", "check_sweep"),
    "sqlite-folder-missing": Case(
        ("study.storage=sqlite:////nonexistent-cnas/dir/cnas.db",),
        "the folder /nonexistent-cnas/dir of the SQLite file does not exist",
        "bootstrap_study",
    ),
    "timeout-under-11-minutes": Case(
        ("hydra.launcher.timeout_min=5",),
        "hydra.launcher.timeout_min=5 is under 11",
        "check_launcher",
    ),
    "n-trials-not-a-number": Case(
        ("search.n_trials=abc",), "search.n_trials must be an integer, got 'abc'", "settings_of"
    ),
    # Issue 19: Hydra's multi-line errors, SLURM's refusals and traps seen after a study existed.
    "unknown-data": Case(
        ("data=imagenet",), "config group data has no option 'imagenet'", "check_overrides"
    ),
    "misspelt-model": Case(
        ("model=proxy_smal",), "did you mean model=proxy_small?", "check_overrides"
    ),
    "misspelt-key": Case(("search.ntrials=5",), "did you mean search.n_trials?", "check_overrides"),
    "unusable-output-dir": Case(
        ("output_dir=/proc/nope",),
        "output_dir=/proc/nope cannot be created",
        "check_output_dir",
    ),
    "npz-without-images": Case(
        ("data=npz", "data.path={data}/empty.npz"),
        "holds 0 images: nothing to search on",
        "check_readable",
    ),
    "proxy-over-the-allocation": Case(
        ("model.channels=3000",),
        "more than the 1.2 GiB of hydra.launcher.additional_parameters",
        "check_proxy_memory",
    ),
    "unknown-partition": Case(
        ("hydra.launcher.partition=nosuch",),
        "SLURM has no such partition (partitions: ",
        "check_slurm_request",
    ),
    "gpus-on-a-cluster-without": Case(
        ("hydra.launcher.gpus_per_node=1",),
        "gpus_per_node=1: partition debug has no GPU",
        "check_slurm_request",
    ),
    "array-over-max-array-size": Case(
        ("worker=range(5000)",),
        "the sweep asks for 5000 workers, more than SLURM's MaxArraySize",
        "check_slurm_request",
    ),
    "study-scored-with-another-setup": Case(
        ("model.cells=2", "train.epochs=2"),
        f"study '{STUDY}' was scored with another setup: model.cells 3 -> 2, train.epochs 1 -> 2;",
        "bootstrap_study",
        bootstrapped=True,
    ),
    # A password Hydra would save in config.yaml, multirun.yaml and the submitit pickles.
    "literal-password": Case((), PASSWORD_IN_CONFIG, "check_config_secrets", password=SECRET),
}
#: The same refusals as single runs (``python launch/search.py <bad>``, no ``-m``): a case of
#: every stage a single run goes through but the proxy's memory (a single run's limit is this
#: host's memory, which differs from machine to machine).
SINGLE_RUN_CASES = (
    "n-trials-zero", "missing-npz", "npz-wrong-dtype", "batch-larger-than-split",
    "wrong-credentials", "sqlite-folder-missing", "unknown-data", "misspelt-key",
    "unusable-output-dir", "study-scored-with-another-setup", "literal-password",
)  # fmt: skip
#: ``(case, multirun)`` run as new processes as well (see the module docstring).
FRESH_PROCESS_CASES = (
    ("study-scored-with-another-setup", True),
    ("study-scored-with-another-setup", False),
)


@dataclass(frozen=True)
class Outcome:
    """What a command did: its exit status and output, and (run by the shared interpreter) the
    functions in the traceback of the error it refused (the stage: see the module docstring)."""

    returncode: int
    stdout: str
    stderr: str
    frames: tuple[str, ...] | None = None


def _exit_status(code: object) -> int:
    """The status a process ending with ``SystemExit(code)`` exits with (str: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_script(argv: Sequence[str]) -> tuple[int, tuple[str, ...]]:
    """Run :data:`SCRIPT` as ``__main__`` with ``argv``: its exit status, and the functions in
    the traceback of the error that ended it (the ``SystemExit``'s context)."""
    sys.argv = [str(SCRIPT), *argv]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        cause = exc.__context__
        frames = traceback.extract_tb(cause.__traceback__) if cause is not None else []
        return _exit_status(exc.code), tuple(frame.name for frame in frames)
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1, ()
    return 0, ()


def serve() -> None:
    """The loop of the shared interpreter (:class:`SharedInterpreter`): for each request line on
    stdin (JSON: ``argv``, ``env``, ``stdout``, ``stderr``), run the command with the process's
    own environment plus ``env``, file descriptors 1 and 2 on the two files, then answer one
    JSON line (``code``, ``frames``) and put back what the next command must find as a new
    process would: environment, working directory, Hydra's global state, no stray objects."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing but the replies on the pipe (a logger left by a command, say)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    environ, cwd = dict(os.environ), Path.cwd()
    for line in sys.stdin:
        request = json.loads(line)
        os.environ.update(request["env"])
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = Path(request["stdout"]), Path(request["stderr"])
        with stdout.open("w") as out, stderr.open("w") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                code, frames = _run_script(request["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        GlobalHydra.instance().clear()
        gc.collect()  # the refused command's engines: their connections close now
        replies.write(json.dumps({"code": code, "frames": frames}) + "\n")
        replies.flush()


class SharedInterpreter:
    """One Python process that runs :data:`SCRIPT` once per :meth:`run` (see :func:`serve`).

    Started on the first run; a run past its timeout kills it (the next run starts another).
    """

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.process: subprocess.Popen[str] | None = None
        self.n_runs = 0

    def _start(self) -> subprocess.Popen[str]:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from tests.test_validation import serve; serve()"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self.process

    def run(
        self, argv: Sequence[str], *, home: Path, env: dict[str, str], timeout: float
    ) -> Outcome:
        """Run the command with ``argv`` and ``CNAS_HOME=home`` plus ``env``."""
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        self.n_runs += 1
        out, err = (self.scratch / f"{self.n_runs}.{name}" for name in ("stdout", "stderr"))
        request = {"argv": list(argv), "env": {"CNAS_HOME": str(home), **env},
                   "stdout": str(out), "stderr": str(err)}  # fmt: skip
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        reply = process.stdout.readline() if ready else ""
        if not reply:
            died = process.poll()
            self.close(kill=True)
            why = f"ended with status {died}" if died is not None else f"hung for {timeout} s"
            pytest.fail(f"the shared interpreter {why} (see the captured stderr)", pytrace=False)
        answer = json.loads(reply)
        return Outcome(answer["code"], out.read_text(), err.read_text(), tuple(answer["frames"]))

    def close(self, *, kill: bool = False) -> None:
        """End the process: end of input, or ``kill`` (also when it does not end in 30 s)."""
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None
        if kill:
            process.kill()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedInterpreter]:
    """The interpreter the cases of this file share (one per xdist worker: the file is one
    unit of work, see tests/conftest.py)."""
    shared = SharedInterpreter(tmp_path_factory.mktemp("shared-interpreter"))
    yield shared
    shared.close()


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
    case_id: str,
    url: str,
    tmp_path: Path,
    job_name: str,
    *,
    multirun: bool,
    interpreter: SharedInterpreter | None,
) -> None:
    """Run the case's command (by ``interpreter``; None: as a new process) and check it."""
    case = CASES[case_id]
    empty = tmp_path / "empty"
    empty.mkdir()
    data = bad_data(tmp_path / "data")

    def fill(text: str) -> str:  # not str.format: the text may hold ``${oc.env:...}``
        return text.replace("{empty}", str(empty)).replace("{data}", str(data))

    storage = make_url(url)
    if case.port is not None:
        storage = storage.set(port=case.port)
    if case.password is not None:
        storage = storage.set(password=case.password)
    if case.bootstrapped:
        # The study as the commands below would make it: the default's two objectives.
        study = ("study=postgres", f"study.storage={url}", f"study.name={STUDY}",
                 "search.objectives=[score,naswot]")  # fmt: skip
        bootstrap_study(tiny_settings(tmp_path / "bootstrap", *study))
    rows_before = table_rows(url)
    assert bool(rows_before) == case.bootstrapped  # a fresh database has no table at all
    home = tmp_path / "home"
    home.mkdir()
    started = datetime.now() - timedelta(minutes=1)
    own = {o.split("=")[0] for o in case.overrides}
    args = [
        *(o for o in (MULTIRUN if multirun else ()) if o.split("=")[0] not in own),
        *COMMON,
        f"study.storage={storage.render_as_string(hide_password=False)}",
        f"hydra.job.name={job_name}",
        *(fill(o) for o in case.overrides),
    ]
    if interpreter is None:
        ran = run_search(args, home=home, timeout=300, env=case.env)
        result = Outcome(ran.returncode, ran.stdout, ran.stderr)
    else:
        result = interpreter.run(args, home=home, env=case.env, timeout=300)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    assert fill(case.needle) in errors[0], errors[0]
    assert "Traceback" not in output
    assert SECRET_MARK not in output
    if result.frames is not None:
        assert case.stage in result.frames, (case.stage, result.frames)
    assert not jobs_named(job_name, started), "a job was queued"
    assert table_rows(url) == rows_before, "the database was written"
    written = [p for p in home.rglob("*") if p.is_file()]
    assert not written, written  # no saved config, no multirun.yaml, no log


@pytest.mark.cost(2)  # seconds, in the shared interpreter
@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize("case_id", list(CASES))
def test_a_multirun_with_bad_input_queues_and_writes_nothing(
    case_id: str, fresh_pg_url: str, tmp_path: Path, job_name: str, interpreter: SharedInterpreter
) -> None:
    _run_case(case_id, fresh_pg_url, tmp_path, job_name, multirun=True, interpreter=interpreter)


@pytest.mark.cost(2)  # seconds, in the shared interpreter
@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize("case_id", SINGLE_RUN_CASES)
def test_a_single_run_with_bad_input_leaves_no_output_dir(
    case_id: str, fresh_pg_url: str, tmp_path: Path, job_name: str, interpreter: SharedInterpreter
) -> None:
    _run_case(case_id, fresh_pg_url, tmp_path, job_name, multirun=False, interpreter=interpreter)


@pytest.mark.cost(10)  # a new process: ~4 CPU-s before the command starts
@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize(("case_id", "multirun"), FRESH_PROCESS_CASES)
def test_a_fresh_process_refuses_as_the_shared_one(
    case_id: str, multirun: bool, fresh_pg_url: str, tmp_path: Path, job_name: str
) -> None:
    """``python launch/search.py``, a new process as a user starts it: the same checks as in
    the shared interpreter (a case refused at the last stage: every other check passed)."""
    _run_case(case_id, fresh_pg_url, tmp_path, job_name, multirun=multirun, interpreter=None)


def _calls(function: Callable[..., object]) -> set[str]:
    """Names of the functions ``function`` calls by their bare name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


def test_every_refusing_stage_has_a_case() -> None:
    """The stages of the cases are the checks the submitting side calls: the override check
    of the command, the sweep check of a multirun and every check of the bootstrap, so that a
    new check cannot come without a case (or a reason here why it has none)."""
    stages = {"settings_of", "bootstrap_study"}  # the two stages not named check_*
    checks = {name for name in _calls(validate_and_bootstrap)
              if name.startswith("check_") or name in stages}  # fmt: skip
    # Refuses a second array while one works the study: needs a live array, so it is tested
    # where one runs (tests/test_faults.py).
    checks.discard("check_no_live_array")
    assert "check_sweep" in _calls(BootstrapCallback.on_multirun_start)
    assert "check_overrides" in _calls(checked_command)
    checks |= {"check_sweep", "check_overrides"}
    assert {case.stage for case in CASES.values()} == checks


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
