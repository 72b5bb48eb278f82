"""Database passwords never reach a file, a log, a W&B config or an error message.

Policy (see :mod:`cnas_hpc.search.study`): the password comes from ``PGPASSWORD``, ``~/.pgpass``
or an ``${oc.env:VAR}`` interpolation inside ``study.storage``; a literal password in the URL is
refused on the submitting side before Hydra saves anything: end to end, as a multirun and as a
single run, by the case ``literal-password`` of tests/test_validation.py (with every other
refusal: exit 2, one line without the password, nothing queued, written or created). The
end-to-end test here runs a real multirun on the local SLURM cluster with the real password of
role ``cnas`` supplied through ``${oc.env:CNAS_DB_PASSWORD}`` (``~/.pgpass`` switched off, so the
run can only have logged in with it) and then greps every byte written under the output home
for the password.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from cnas_hpc.common.errors import StudyError
from cnas_hpc.common.storage_url import PASSWORD_IN_CONFIG, check_storage_secret
from cnas_hpc.config import StudyConfig
from cnas_hpc.study.storage import describe_db_error, make_storage
from tests.helpers import compose_config, run_search

SECRET = "s3cr3t-Pa55@word:x"  # '@' and ':' must be percent-encoded in a URL
ENCODED = "s3cr3t-Pa55%40word%3Ax"
ENV_PASSWORD = "${oc.env:CNAS_DB_PASSWORD}"
ENV_URL = f"postgresql+psycopg2://cnas:{ENV_PASSWORD}@127.0.0.1:5432/db"


# ------------------------------------------------------------------------------ error messages
@pytest.mark.parametrize(
    ("driver_message", "why"),
    [
        (f'FATAL:  password authentication failed for user "cnas" (password {SECRET})', "refused"),
        (f"could not connect: dsn postgresql://cnas:{ENCODED}@db-host:5432/db", "unreachable"),
        (f"weird failure with {SECRET} and {ENCODED} inside", "weird failure"),
    ],
)
def test_a_database_error_never_names_the_password(driver_message: str, why: str) -> None:
    url = f"postgresql+psycopg2://cnas:{ENCODED}@db-host:5432/db"
    message = describe_db_error(RuntimeError(driver_message), url)
    assert SECRET not in message and ENCODED not in message, message
    assert "s3cr3t" not in message, message
    assert message.startswith("cannot use study storage postgresql+psycopg2://cnas:***@db-host")
    assert why in message


def test_a_failed_connection_with_a_password_reports_it_masked() -> None:
    url = f"postgresql+psycopg2://cnas:{ENCODED}@127.0.0.1:1/db"
    with pytest.raises(StudyError) as raised:
        make_storage(StudyConfig(storage=url, connect_timeout=3), create_tables=True)
    message = str(raised.value)
    assert "s3cr3t" not in message and "the server is unreachable" in message, message
    assert "cnas:***@127.0.0.1:1/db" in message


@pytest.mark.postgres
def test_refused_credentials_in_the_url_are_reported_without_them(postgres_server: str) -> None:
    url = make_url(postgres_server).set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(StudyError) as raised:
        make_storage(StudyConfig(storage=url, connect_timeout=5), create_tables=False)
    message = str(raised.value)
    assert "s3cr3t" not in message and "refused the credentials" in message, message


# ------------------------------------------------------------------------- what is accepted
@pytest.mark.parametrize(
    "written",
    [
        "postgresql+psycopg2://cnas@127.0.0.1:5432/db",  # PGPASSWORD / ~/.pgpass
        ENV_URL,
        "postgresql://cnas:${oc.env:PW}@${oc.env:DB_HOST}:${oc.env:DB_PORT}/db",
        "${oc.env:CNAS_STORAGE,postgresql+psycopg2://cnas@127.0.0.1:5432/cnas}",
        "sqlite:///${output_dir}/cnas.db",
    ],
)
def test_urls_whose_password_is_never_saved_are_accepted(written: str) -> None:
    check_storage_secret(written)


@pytest.mark.parametrize(
    "written",
    [
        f"postgresql://cnas:{ENCODED}@127.0.0.1:5432/db",
        "postgresql://cnas:pre${oc.env:PW}@h/db",  # half literal
        "postgresql://cnas:${oc.env:PW,fallback}@h/db",  # the default is saved
        "postgresql://cnas:${db.password}@h/db",  # the key's value is saved
    ],
)
def test_urls_with_a_saved_password_are_refused(written: str) -> None:
    with pytest.raises(StudyError) as raised:
        check_storage_secret(written)
    assert str(raised.value) == PASSWORD_IN_CONFIG


def test_a_password_reaching_the_url_from_saved_text_is_refused() -> None:
    resolved = f"postgresql://cnas:{ENCODED}@h/db"
    # The whole URL comes from an env default or from another key: both are saved text.
    with pytest.raises(StudyError, match="contains a password"):
        check_storage_secret(f"${{oc.env:NOT_SET,{resolved}}}", resolved)
    with pytest.raises(StudyError, match="contains a password"):
        check_storage_secret("${site.url}", resolved, saved=f"site:\n  url: {resolved}\n")
    # The user name equal to the password is not a password written in the config.
    check_storage_secret(
        "postgresql://cnas:${oc.env:PW}@h/db", "postgresql://cnas:cnas@h/db", saved="cnas"
    )


# ------------------------------------------------------------------------------- end to end
def cnas_password(url: str) -> str:
    """The password of the URL's role: the dev cluster's state file, else ``~/.pgpass``."""
    parsed = make_url(url)
    state = Path(os.environ.get("CNAS_DEV_CLUSTER_DIR", "/var/lib/cnas-dev-cluster"))
    candidate = state / f"pg-{parsed.username}.password"
    try:
        text = candidate.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text
    pgpass = Path(os.environ.get("PGPASSFILE", Path.home() / ".pgpass"))
    try:
        lines = pgpass.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = [f.replace("\\:", ":").replace("\\\\", "\\") for f in re.split(r"(?<!\\):", line)]
        if len(fields) == 5 and fields[0] in (parsed.host, "*") and fields[3] == parsed.username:
            return fields[4]
    reason = f"no password for role {parsed.username!r} in {candidate} or {pgpass}"
    if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def files_holding(root: Path, needle: bytes) -> tuple[list[Path], int]:
    """Files under ``root`` whose bytes contain ``needle``, and how many files were read."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return [p for p in files if needle in p.read_bytes()], len(files)


@pytest.mark.postgres
@pytest.mark.slurm
@pytest.mark.slow
def test_a_multirun_with_an_env_password_writes_it_nowhere(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    password = cnas_password(fresh_pg_url)
    assert len(password) >= 8, "too short to grep for without false hits"
    database = make_url(fresh_pg_url).database
    home = tmp_path / "home"
    name = f"cnas-secrets-{uuid.uuid4().hex[:10]}"
    overrides = [
        "-m",
        "hydra/launcher=slurm_cpu",
        # One worker: every file a worker writes is written (.hydra/*.yaml, submitit pickles and
        # logs, W&B runs); a second worker would write the same kinds again.
        "worker=range(1)",
        "debug=tiny",
        "study=postgres",
        "study.name=secrets-test",
        f"study.storage=postgresql+psycopg2://cnas:{ENV_PASSWORD}@127.0.0.1:5432/{database}",
        "search.n_trials=1",
        "search.poll_seconds=1",
        "train.num_threads=1",
        f"hydra.job.name={name}",
    ]
    with_wandb = "wandb" in compose_config()  # the W&B group, where the search config has it
    if with_wandb:
        overrides.append("wandb=offline")
    env = {
        "CNAS_DB_PASSWORD": password,
        # No ~/.pgpass: the workers can only log in with the interpolated password.
        "PGPASSFILE": str(tmp_path / "no-pgpass"),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(home / "wandb"),
        "WANDB_SILENT": "true",
    }
    result = run_search(overrides, home=home, timeout=900, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert password not in output
    assert "cnas:***@127.0.0.1:5432" in output  # the URL is printed, masked

    study = optuna.load_study(study_name="secrets-test", storage=fresh_pg_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    accounted = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", name, "-S", "now-1hours", "-o", "JobID,State"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert len(accounted) == 1, accounted  # the array ran under our job name (test_validation)

    # Hydra keeps the interpolation unresolved in every file it saves (the launcher escapes it
    # in the overrides it hands the jobs: ``$\{oc.env\:CNAS_DB_PASSWORD\}``).
    interpolation = re.compile(r"\$\\?\{oc\.env\\?:CNAS_DB_PASSWORD\\?\}")
    saved = {
        "multirun.yaml": list(home.rglob("multirun.yaml")),
        "config.yaml": list(home.rglob(".hydra/config.yaml")),
        "overrides.yaml": list(home.rglob(".hydra/overrides.yaml")),
        "hydra.yaml": list(home.rglob(".hydra/hydra.yaml")),
    }
    for kind, paths in saved.items():
        assert len(paths) == 1, (kind, paths)  # one multirun, one job
        for path in paths:
            assert interpolation.search(path.read_text()), path
    assert list(home.rglob(".submitit/*/*.pkl")), "submitit pickles were not where expected"
    if with_wandb:
        # The trial runs' configs carry the storage URL, masked.
        masked = f"cnas:***@127.0.0.1:5432/{database}".encode()
        assert files_holding(home / "wandb", masked)[0], "no W&B run holds the masked URL"

    holding, n_files = files_holding(home, password.encode())
    assert n_files > 10, n_files
    assert not holding, holding
