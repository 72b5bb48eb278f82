"""Service fixtures shared by the whole suite: PostgreSQL and the local SLURM cluster.

Both services come from ``bash slurm/dev-cluster.sh up`` (root, Debian). A test that needs one
asks for its fixture (``postgres_server``, ``fresh_pg_url``, ``slurm_cluster``) or carries the
marker ``postgres`` / ``slurm``, which runs the same check before the test. A missing service
skips the test locally, with the command that starts it, and FAILS it in CI (``CI=true``), where a
silent skip would hide a broken set-up.

Passwords never appear in URLs: libpq reads them from ``~/.pgpass`` (written by the dev cluster)
or ``PGPASSWORD``.

Parallel runs (pytest-xdist; ``make test`` runs ``-n 3 --dist loadgroup --no-loadscope-reorder``).
The rules below place every test without special care, new ones included:

* A test file is one unit of work (its tests run in one worker, in file order, sharing its
  module-scoped fixtures), unless the file is ``slow``: its tests are spread one by one.
  ``@pytest.mark.xdist_group("name")`` on a test or file overrides both.
* Units run costliest first, after the units holding a ``slurm_exclusive`` test: a unit's cost is
  the sum of its tests' ``@pytest.mark.cost(seconds)`` (measured on the CI machine; unmarked tests
  count by their markers, :data:`DEFAULT_COST_S`). Mark a new test that takes more than ~20 s.
* Tests must not share state beyond their own: a database from ``fresh_pg_url``, files under
  ``tmp_path``, SLURM job names with a random part, study names inside their own database, ports
  from the kernel (``bind(("127.0.0.1", 0))``) or :func:`tests.helpers.worker_address`.
* SLURM tests run concurrently (the debug partition oversubscribes its cores), except a test marked
  ``slurm_exclusive`` (it preempts the debug partition, or needs all its job slots): it waits until
  no other SLURM test runs and holds the others back while it runs (:func:`_slurm_turn`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
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


#: Seconds a test is expected to take when it carries no ``cost`` marker (CI machine, 2 cores).
DEFAULT_COST_S = {"slow": 60.0, "slurm": 5.0, "postgres": 1.0}


def _cost(item: pytest.Item) -> float:
    """Expected seconds of ``item``: its ``cost(seconds)`` marker, else by its service markers."""
    mark = item.get_closest_marker("cost")
    if mark is not None:
        return float(mark.args[0])
    for name, seconds in DEFAULT_COST_S.items():
        if item.get_closest_marker(name) is not None:
            return seconds
    return 0.3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each quick file into one xdist unit and order the units: costliest first.

    xdist's ``loadgroup`` reads the group from the ``xdist_group`` marker; a unit's place in the
    queue is its first test's place in ``items`` (with ``--no-loadscope-reorder``). Units with a
    ``slurm_exclusive`` test go before all others (they wait for no running SLURM test and hold
    none back for long), then units by their summed cost, most first, so that the long ones
    start at once and the quick ones fill the end. Without xdist the markers are inert and only
    the order changes (a file's tests keep their order).
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        module = item.getparent(pytest.Module)
        if module is not None and module.get_closest_marker("slow") is not None:
            continue  # a slow file: its tests are spread one by one
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    exclusive: set[str] = set()
    cost: dict[str, float] = {}
    for item in items:
        unit = _unit(item)
        cost[unit] = cost.get(unit, 0.0) + _cost(item)
        if item.get_closest_marker("slurm_exclusive") is not None:
            exclusive.add(unit)
    positions = {id(item): n for n, item in enumerate(items)}
    items.sort(
        key=lambda item: (
            _unit(item) not in exclusive,
            -cost[_unit(item)],
            positions[id(item)],
        )
    )


def _unit(item: pytest.Item) -> str:
    """The xdist unit of ``item``: its group, else its own node id."""
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return item.nodeid
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


@pytest.fixture(autouse=True)
def _slurm_turn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Hold a shared (``slurm``) or exclusive (``slurm_exclusive``) turn on the SLURM node.

    A reader-writer lock across xdist workers (``flock`` on files in the run's common temp
    folder): ``slurm`` tests hold it shared, so they run together; a ``slurm_exclusive`` test
    holds it alone. The gate file keeps readers from starving the writer: a waiting exclusive
    test holds the gate, and new shared turns queue behind it. Without xdist it costs two
    uncontended ``flock`` calls.
    """
    exclusive = request.node.get_closest_marker("slurm_exclusive") is not None
    if not exclusive and request.node.get_closest_marker("slurm") is None:
        yield
        return
    # Every worker's basetemp is <run root>/popen-gw<N>: the parent is common to the run.
    root = tmp_path_factory.getbasetemp()
    folder = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    with ExitStack() as stack:
        gate = stack.enter_context(_lock_file(folder / "slurm-turn.gate"))
        turn = stack.enter_context(_lock_file(folder / "slurm-turn.lock"))
        if exclusive:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(turn, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)  # waits while an exclusive test waits or runs
            fcntl.flock(turn, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # the lock files close (and unlock) when the stack exits


@contextmanager
def _lock_file(path: Path) -> Iterator[int]:
    """A descriptor of ``path`` (created if missing) to ``flock``; closing it unlocks."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)
