"""Opening the study's database: connection pools sized for many workers, and one-line errors.

Contract:
    * Only global rank 0 of a worker (and the submitting process) opens a storage; other ranks
      never touch the database.
    * Only a bootstrap creates the schema (``create_tables=True``), holding
      :func:`bootstrap_lock`: two bootstraps started together (two single-run workers on a new
      SQLite file, two launchers on a fresh PostgreSQL database) take turns, so the second finds
      the schema and the study made by the first instead of racing to create them (``table
      study_directions already exists``, ``alembic_version``). Workers never create tables.
    * Every message built here names the URL through
      :func:`~cnas_hpc.common.storage_url.mask_url` only.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.pool import QueuePool

from cnas_hpc.common.errors import StudyError, StudyUnreachableError
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.study.retry import describe_failure, is_transient, root_cause
from cnas_hpc.study.stale import RequeueStaleTrial

#: Connections a worker's operations share within one burst (the claim lock's and one more).
BURST_CONNECTIONS = 2


def release_connections(engine: sqlalchemy.Engine) -> None:
    """Close the connections ``engine`` kept since the last burst (``study.pool_size=0``).

    Connections checked out right now (another thread's operation) are closed when returned.
    """
    if engine.dialect.name != "sqlite":
        engine.dispose()


def engine_kwargs(url: URL, cfg: StudyConfig) -> dict[str, Any]:
    """SQLAlchemy engine options for the study's database (pools sized for many workers)."""
    if url.get_backend_name() == "sqlite":
        # Several local processes may share one file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {
        "connect_args": {"connect_timeout": cfg.connect_timeout},
        "pool_pre_ping": True,
    }
    if cfg.pool_size <= 0:
        # A worker talks to the database in short bursts (a claim, a tell) and not at all while
        # it trains. Within a burst its operations reuse up to BURST_CONNECTIONS connections (a
        # new connection costs ~8 ms of authentication: 17 of them made a claim); between
        # bursts it holds none (the owner calls release_connections), so hundreds of workers
        # share max_connections (see README, "PostgreSQL sizing").
        kwargs.update(poolclass=QueuePool, pool_size=BURST_CONNECTIONS, max_overflow=1)
    else:
        kwargs.update(pool_size=cfg.pool_size, max_overflow=1, pool_recycle=300)
    return kwargs


def check_sqlite_folder(url: str, may_create: Path | None = None) -> None:
    """Refuse a SQLite file whose folder does not exist (a typo would create a study elsewhere).

    Args:
        url: a normalised storage URL (anything but SQLite passes).
        may_create: the one folder that may be created for it (the search's ``output_dir``,
            where the default ``cnas.db`` lives).

    Raises:
        StudyError: one line naming the missing folder.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    folder = Path(parsed.database or "").expanduser().absolute().parent
    if folder.is_dir():
        return
    if may_create is not None and folder == may_create.expanduser().absolute():
        return
    raise StudyError(
        f"study.storage: the folder {folder} of the SQLite file does not exist: "
        "create it first, or fix the path"
    )


#: The PostgreSQL advisory lock key of bootstraps (any fixed bigint; claims use per-study keys).
_BOOTSTRAP_LOCK_KEY = 0x636E61735F626F6F  # "cnas_boo"


@contextlib.contextmanager
def bootstrap_lock(cfg: StudyConfig, url: str, may_create: Path | None = None) -> Iterator[None]:
    """Hold the database-wide bootstrap lock (blocking) while the schema and study are made.

    SQLite: a file lock on ``<file>.bootstrap.lock`` beside the database (the kernel releases
    it when its holder dies; the folder is checked as :func:`check_sqlite_folder` and created
    only where allowed). PostgreSQL: a session advisory lock, released when the session ends.

    Raises:
        StudyUnreachableError: the database is down or unreachable.
        StudyError: it refuses the credentials; the SQLite folder is missing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        check_sqlite_folder(url, may_create)
        database = Path(parsed.database or "").expanduser()
        database.parent.mkdir(parents=True, exist_ok=True)
        with Path(f"{database}.bootstrap.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by close, or by the holder's death
            yield
        return
    engine = sqlalchemy.create_engine(url, **engine_kwargs(parsed, cfg))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(_BOOTSTRAP_LOCK_KEY)))
            try:
                yield
            finally:
                unlock = sqlalchemy.func.pg_advisory_unlock(_BOOTSTRAP_LOCK_KEY)
                conn.execute(sqlalchemy.select(unlock))
                conn.commit()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, url) from None
    finally:
        engine.dispose()


def make_storage(
    cfg: StudyConfig,
    *,
    create_tables: bool,
    may_create: Path | None = None,
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats enabled and pools sized for many workers.

    Args:
        cfg: study settings (URL, normalised when ``cfg`` was built; heartbeat, pool).
        create_tables: True only for the one bootstrapping process.
        may_create: with ``create_tables``, the folder of a SQLite file that may be created
            (see :func:`check_sqlite_folder`); any other missing folder is refused.

    Raises:
        StudyUnreachableError: the database is down or unreachable (transient: workers retry).
        StudyError: it refuses the credentials, lacks the schema, or the SQLite folder is missing.
    """
    url = cfg.storage
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and create_tables:
        check_sqlite_folder(url, may_create)
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(parsed, cfg),
            skip_table_creation=not create_tables,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period,
            heartbeat_stale_trial_callback=RequeueStaleTrial(cfg.max_retry),
        )
    except Exception as exc:
        raise db_error(exc, url) from None


def db_error(exc: BaseException, url: str) -> StudyError:
    """The one-line error of a database failure: :class:`StudyUnreachableError` when it is
    transient (:func:`~cnas_hpc.study.retry.is_transient`), else :class:`StudyError`."""
    if is_transient(exc):
        return StudyUnreachableError(describe_db_error(exc, url), detail=describe_failure(exc))
    return StudyError(describe_db_error(exc, url))


def describe_db_error(exc: BaseException, url: str) -> str:
    """One line explaining a database failure, naming the masked URL and never the password.

    The driver's message is scrubbed of the URL's password (raw and percent-encoded) before any
    of it is used: drivers do not normally echo it, but a DSN in an exception would. Optuna wraps
    some driver errors (``StorageInternalError: An exception is raised during the commit``), so
    the chain of causes is searched for the driver's own error.
    """
    text = str(root_cause(exc))
    masked = mask_url(url)
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        secret = str(password)
        for form in sorted({secret, quote(secret, safe=""), quote_plus(secret)}, key=len)[::-1]:
            text = text.replace(form, "***")
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        why = "the server refused the credentials (check PGPASSWORD or ~/.pgpass)"
    elif "does not exist" in lowered and "database" in lowered:
        why = "the database does not exist (create it first)"
    elif "could not connect" in lowered or "connection refused" in lowered or "timeout" in lowered:
        why = "the server is unreachable"
    elif "no such table" in lowered or "undefinedtable" in lowered or "relation" in lowered:
        why = "the database has no Optuna schema: bootstrap the study first"
    else:
        why = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot use study storage {masked}: {why}"


def connect_engine(cfg: StudyConfig) -> sqlalchemy.Engine:
    """A SQLAlchemy engine on the study's database, for cnas-hpc's own tables next to Optuna's.

    Pools as for the study (see :func:`engine_kwargs`); a SQLite file's folder is created
    (presets alone need no search, so an evaluation may start the file). The connection is
    tried once, so a bad URL or an unreachable server fails here, in one line.

    Raises:
        StudyError: unreachable database or refused credentials (the URL masked).
    """
    url = cfg.storage
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url, **engine_kwargs(parsed, cfg))
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise StudyError(describe_db_error(exc, url)) from None
    return engine
