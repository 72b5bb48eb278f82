"""Service fixtures shared by the whole suite: PostgreSQL and the local SLURM cluster.

Both services come from ``bash slurm/dev-cluster.sh up`` (root, Debian). A test that needs one
asks for its fixture (``postgres_server``, ``fresh_pg_url``, ``slurm_cluster``) or carries the
marker ``postgres`` / ``slurm``, which runs the same check before the test. A missing service
skips the test locally, with the command that starts it, and FAILS it in CI (``CI=true``), where a
silent skip would hide a broken set-up.

Passwords never appear in URLs: libpq reads them from ``~/.pgpass`` (written by the dev cluster)
or ``PGPASSWORD``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import psycopg2
import pytest
from psycopg2 import sql
from sqlalchemy.engine import URL, make_url

DEFAULT_PG_URL = "postgresql+psycopg2://cnas@127.0.0.1:5432/cnas"
START_HINT = "bash slurm/dev-cluster.sh up"
#: Node states in which a node accepts jobs (sinfo's short forms; "comp" = finishing a job).
USABLE_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp", "plnd"})
#: sinfo's state suffixes that leave a node usable ("*", not responding, is not among them).
HARMLESS_STATE_FLAGS = "~#!%$@^-+"


def in_ci() -> bool:
    """Whether the suite runs in CI (env ``CI`` is ``true`` or ``1``): missing services fail."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def _unavailable(reason: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the current test because a service is missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: service tests must not skip)", pytrace=False)
    pytest.skip(reason)


def _connect(url: URL, database: str | None = None) -> psycopg2.extensions.connection:
    """Open an autocommit psycopg2 connection for a SQLAlchemy-style ``url``.

    Args:
        url: A parsed ``postgresql+psycopg2://`` URL; its password, if any, is used.
        database: Database to connect to instead of the URL's.

    Raises:
        psycopg2.OperationalError: The server is unreachable or refuses the login.
    """
    conn = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=database or url.database,
        connect_timeout=3,
    )
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a reachable PostgreSQL database (env ``CNAS_TEST_PG_URL`` or the dev cluster's).

    The URL's role must be allowed to CREATE DATABASE (``fresh_pg_url`` needs it).
    Skips (locally) or fails (CI) when the server cannot be reached.
    """
    url_text = os.environ.get("CNAS_TEST_PG_URL", DEFAULT_PG_URL)
    url = make_url(url_text)
    if url.password is not None:
        pytest.fail(
            "CNAS_TEST_PG_URL holds a password: put it in ~/.pgpass or PGPASSWORD instead",
            pytrace=False,
        )
    try:
        conn = _connect(url)
    except psycopg2.OperationalError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _unavailable(f"PostgreSQL not running: {START_HINT} ({first_line})")
    conn.close()
    return url_text


@pytest.fixture
def fresh_pg_url(postgres_server: str) -> Iterator[str]:
    """URL (without password) of a brand-new empty database, dropped after the test.

    The database is named ``cnas_test_<random hex>`` and created on the server of
    ``postgres_server``; the drop uses ``WITH (FORCE)`` so connections the test leaked (worker
    processes, pools) do not keep it alive.
    """
    base = make_url(postgres_server)
    name = sql.Identifier(f"cnas_test_{uuid.uuid4().hex[:16]}")
    _admin(base, sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield base.set(database=name.string).render_as_string(hide_password=False)
    finally:
        _admin(base, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def _admin(url: URL, statement: sql.Composable) -> None:
    """Run one statement that may not run in a transaction (CREATE/DROP DATABASE) on ``url``."""
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests learn about the running SLURM cluster.

    Attributes:
        nodes: Names of the nodes that accept jobs.
        partitions: Partition names; the default one first.
    """

    nodes: tuple[str, ...]
    partitions: tuple[str, ...]


def _slurm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a SLURM client command with a timeout; never raises for a non-zero exit."""
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local SLURM cluster, checked usable: sinfo, squeue and sacct answer and a node is up.

    sacct is checked too because submitit polls it for the state of finished jobs.
    Skips (locally) or fails (CI) otherwise.
    """
    if shutil.which("sinfo") is None:
        _unavailable(f"SLURM not installed: {START_HINT}")
    try:
        nodes_out = _slurm_cmd("sinfo", "-h", "-N", "-o", "%N %t")
        parts_out = _slurm_cmd("sinfo", "-h", "-o", "%P")
        queue_out = _slurm_cmd("squeue", "-h")
        acct_out = _slurm_cmd("sacct", "-n", "-X", "-S", "now")
    except subprocess.TimeoutExpired:
        _unavailable(f"SLURM not answering: {START_HINT}")
    for name, out in (("sinfo", nodes_out), ("squeue", queue_out), ("sacct", acct_out)):
        if out.returncode != 0:
            _unavailable(f"SLURM not running ({name}: {out.stderr.strip()}): {START_HINT}")
    nodes = tuple(
        sorted(
            {
                line.split()[0]
                for line in nodes_out.stdout.splitlines()
                if len(line.split()) == 2
                and line.split()[1].rstrip(HARMLESS_STATE_FLAGS) in USABLE_NODE_STATES
            }
        )
    )
    if not nodes:
        _unavailable(f"no SLURM node up ({nodes_out.stdout.strip()!r}): {START_HINT}")
    # sinfo marks the default partition with a trailing '*'.
    raw = [p.strip() for p in parts_out.stdout.splitlines() if p.strip()]
    default = [p.rstrip("*") for p in raw if p.endswith("*")]
    others = [p for p in raw if not p.endswith("*")]
    return SlurmCluster(nodes=nodes, partitions=tuple(default + others))


@pytest.fixture(autouse=True)
def _service_markers(request: pytest.FixtureRequest) -> None:
    """Run the service check of a test's ``postgres`` / ``slurm`` marker before the test."""
    if request.node.get_closest_marker("postgres") is not None:
        request.getfixturevalue("postgres_server")
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
