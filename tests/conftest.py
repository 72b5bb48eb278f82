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
  ``@pytest.mark.xdist_group("name")`` on a test or file overrides both. The ``slurm_exclusive``
  tests form one unit of their own.
* Units run costliest first, after the ``slurm_exclusive`` unit and, beside it, the costliest
  units without SLURM tests (one per other worker): a unit's cost is the sum of its
  tests' ``@pytest.mark.cost(seconds)`` (measured on the CI machine; unmarked tests count by their
  markers, :data:`DEFAULT_COST_S`). Mark a new test that takes more than ~20 s.
* Tests must not share state beyond their own: a database from ``fresh_pg_url``, files under
  ``tmp_path``, SLURM job names with a random part, study names inside their own database, ports
  from the kernel (``bind(("127.0.0.1", 0))``) or :func:`tests.helpers.worker_address`.
* SLURM tests run concurrently (the debug partition oversubscribes its cores), except those marked
  ``slurm_exclusive`` (one preempts the debug partition, one needs most of its job slots): they
  run first, one at a time, in one worker, and every other SLURM test waits until they are done
  (:func:`_slurm_turn`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
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


#: The xdist unit of every ``slurm_exclusive`` test: one worker runs them first, one at a time.
EXCLUSIVE_GROUP = "slurm-exclusive"
#: Node ids of the session's ``slurm_exclusive`` tests (set once collection is final).
EXCLUSIVE_TESTS = pytest.StashKey[frozenset[str]]()
#: How long a SLURM test waits for the exclusive tests before it fails (they take ~2 minutes).
EXCLUSIVE_WAIT_S = 1200.0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test its xdist unit and order the units: exclusive first, then costliest first.

    xdist's ``loadgroup`` reads a test's unit from its ``xdist_group`` marker (none: the test is
    a unit alone); a unit's place in the queue is its first test's place in ``items`` (with
    ``--no-loadscope-reorder``). The ``slurm_exclusive`` tests form one unit, queued first, so
    that one worker runs them before anything else and no other worker's SLURM test can hold them
    up (:func:`_slurm_turn`); then, one for each other worker, the costliest units that need no
    SLURM (a SLURM test would only wait while the exclusive ones run); then units by their summed
    cost, most first, so that the long ones start at once and the quick ones fill the end.
    Without xdist the markers are inert and only the order changes (a file's tests keep their
    order).
    """
    for item in items:
        if item.get_closest_marker("slurm_exclusive") is not None:
            item.add_marker(pytest.mark.xdist_group(EXCLUSIVE_GROUP))
            continue
        if item.get_closest_marker("xdist_group") is not None:
            continue
        module = item.getparent(pytest.Module)
        if module is not None and module.get_closest_marker("slow") is not None:
            continue  # a slow file: its tests are spread one by one
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    exclusive: set[str] = set()
    needs_slurm: set[str] = set()
    for n, item in enumerate(items):
        unit = _unit(item)
        cost[unit] = cost.get(unit, 0.0) + _cost(item)
        first.setdefault(unit, n)
        if item.get_closest_marker("slurm_exclusive") is not None:
            exclusive.add(unit)
        if item.get_closest_marker("slurm") is not None:
            needs_slurm.add(unit)
    # While the exclusive unit runs, a SLURM test elsewhere would only wait (_slurm_turn): each
    # other worker starts on one of the costliest units that need no SLURM.
    others = getattr(config, "workerinput", {}).get("workercount", 1) - 1 if exclusive else 0
    free = sorted((u for u in cost if u not in needs_slurm), key=lambda u: (-cost[u], first[u]))
    early = set(free[:others])
    positions = {id(item): n for n, item in enumerate(items)}
    items.sort(
        key=lambda item: (
            _unit(item) not in exclusive,
            _unit(item) not in early,
            -cost[_unit(item)],
            first[_unit(item)],
            positions[id(item)],
        )
    )


class _GroupNodeIds:
    """Put each test's xdist group into its node id, as ``--dist loadgroup`` expects.

    pytest-xdist (3.8) tells the controller a test's group by rewriting ``item._nodeid`` to
    ``<nodeid>@<group>``; pytest 9 keeps the id in ``item._id`` and never reads ``_nodeid``, so
    the groups were silently lost: every test was a unit of its own, spread over the workers,
    and a module-scoped fixture was set up again on each worker that ran one of its tests
    (test_launch_evaluate's 60-90 s search up to three times). Runs after xdist's own hook and
    does nothing where that one worked.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            unit = _unit(item)
            if unit == item.nodeid or item.nodeid.endswith(f"@{unit}"):
                continue
            try:
                from _pytest.nodeid import NodeId  # pytest >= 9
            except ImportError:  # pragma: no cover - older pytest: xdist's rewrite works
                return
            item._id = NodeId.parse(f"{item.nodeid}@{unit}")


def pytest_configure(config: pytest.Config) -> None:
    """Every process of the session waits for OpenMP work without spinning; in an xdist worker
    of ``--dist loadgroup``: :class:`_GroupNodeIds`.

    The suite oversubscribes its machine by design (three workers, their commands, DDP ranks and
    SLURM jobs on two cores): an OpenMP thread that spins at a barrier (libgomp's default) burns
    the core that the thread it waits for needs. ``OMP_WAIT_POLICY=PASSIVE`` makes it sleep: 12 %
    less CPU for the same training tests (benchmarks/RESULTS.md, issue 20 item 9). Set here,
    before any test module imports torch (libgomp reads it when loaded); the commands, ranks and
    SLURM jobs the tests start inherit it. A value the caller set is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if getattr(config.option, "loadgroup", False) and hasattr(config, "workerinput"):
        config.pluginmanager.register(_GroupNodeIds(), "cnas-group-node-ids")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the session's ``slurm_exclusive`` tests (after ``-k``/``-m`` deselection)."""
    session.config.stash[EXCLUSIVE_TESTS] = frozenset(
        item.nodeid for item in session.items if item.get_closest_marker("slurm_exclusive")
    )


def _unit(item: pytest.Item) -> str:
    """The xdist unit of ``item`` as ``--dist loadgroup`` forms it: its groups, else its node id."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) if names else item.nodeid


def _turns() -> Path | None:
    """The folder where this xdist run's workers note finished exclusive tests (None: no xdist)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    folder = Path(tempfile.gettempdir()) / f"cnas-slurm-turns-{run}"
    folder.mkdir(exist_ok=True)
    return folder


def _done_file(folder: Path, nodeid: str) -> Path:
    return folder / hashlib.sha256(nodeid.encode()).hexdigest()[:24]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Note a ``slurm_exclusive`` test as finished, however it ended (skipped by a mark too)."""
    try:
        return (yield)
    finally:
        folder = _turns()
        if folder is not None and item.get_closest_marker("slurm_exclusive") is not None:
            _done_file(folder, item.nodeid).touch()


@pytest.fixture(autouse=True)
def _slurm_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep a SLURM test from running beside a ``slurm_exclusive`` one (xdist runs only).

    The exclusive tests run first (one unit, queued first: :func:`pytest_collection_modifyitems`)
    and one at a time (``flock``); every other ``slurm`` test waits until the session's exclusive
    tests have all finished. No worker can hold a waiting test ahead of an exclusive one, since
    those are queued before any other, so the wait always ends.
    """
    folder = _turns()
    exclusive = request.node.get_closest_marker("slurm_exclusive") is not None
    if folder is None or (not exclusive and request.node.get_closest_marker("slurm") is None):
        yield
        return
    if exclusive:
        fd = os.open(folder / "exclusive.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # only if run without --dist loadgroup
            yield
        finally:
            os.close(fd)
        return
    waiting = request.config.stash.get(EXCLUSIVE_TESTS, frozenset())
    deadline = time.monotonic() + EXCLUSIVE_WAIT_S
    while not all(_done_file(folder, nodeid).exists() for nodeid in waiting):
        if time.monotonic() > deadline:
            pytest.fail(f"the slurm_exclusive tests did not finish in {EXCLUSIVE_WAIT_S:.0f} s")
        time.sleep(1.0)
    yield
