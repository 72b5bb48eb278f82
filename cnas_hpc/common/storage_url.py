"""Storage URLs: normalisation, masking, and the refusal of passwords written into configs.

Pure helpers (no database is contacted): the ground floor of the project, used by the
settings, the study plumbing, the reports and the trackers alike.

Secrets. The database password comes from the environment, never from text that is saved:

    * ``PGPASSWORD`` or a ``~/.pgpass`` line (libpq reads both; the URL then has no password);
    * or the URL names an environment variable, ``postgresql://me:${oc.env:CNAS_DB_PASSWORD}@host/db``:
      Hydra saves configs (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``,
      ``multirun.yaml``) and re-composes every job's config from the command line UNRESOLVED,
      so only the interpolation text is ever written; the resolved URL lives in memory only.

A password written literally in ``study.storage`` (or reaching it from another config key) would be
saved in all those files and pickled into every job's submission: :func:`check_storage_secret`
refuses it on the submitting side, before Hydra writes anything. URLs are printed and stored only
through :func:`mask_url` (the password becomes ``***``).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url

from cnas_hpc.common.errors import StudyError


def normalize_storage_url(url: str, *, base_dir: Path | None = None) -> str:
    """Return ``url`` with an explicit, installed driver and absolute SQLite paths.

    * ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg2://``: SQLAlchemy 2.1 maps a
      bare ``postgresql://`` to psycopg 3, which is not a dependency, and the failure would only
      show inside every array task.
    * A relative SQLite path is made absolute against ``base_dir`` (default: the current
      directory) so that a worker started elsewhere opens the same file.

    Raises:
        StudyError: unparsable URL or unsupported backend/driver.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise StudyError(
            f"study.storage is not a valid database URL: {url.split('@')[-1]!r}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg2"):
            raise StudyError(
                f"study.storage uses driver {driver!r}; cnas-hpc ships psycopg2: "
                "use postgresql+psycopg2://user@host:port/db"
            )
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise StudyError("study.storage: an in-memory SQLite study cannot be shared or resumed")
        path = Path(database).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        parsed = parsed.set(database=str(path))
    else:
        raise StudyError(
            f"study.storage backend {backend!r} is not supported (use sqlite:/// or postgresql://)"
        )
    return parsed.render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to log, print and save).

    An unparsable URL is never echoed (it could hold a password SQLAlchemy failed to split off).
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable storage URL>"


#: The one line that refuses a password written into the config.
PASSWORD_IN_CONFIG = (
    "study.storage contains a password: put it in PGPASSWORD or ~/.pgpass, "
    "or write it as ${oc.env:VAR}"
)
#: The only interpolation accepted as a password: an environment variable without a default
#: (a default would be a literal password saved with the config).
_ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:\s*[A-Za-z_][A-Za-z0-9_]*\s*\}")


def _split_interpolations(written: str) -> tuple[str, list[str]]:
    """Replace each top-level ``${...}`` of ``written`` by a placeholder ``cnasinterp<k>x``.

    Returns:
        The text with placeholders (no ``:``, ``@`` or ``/`` left inside interpolations, so the
        URL's user-info can be cut out of it) and the interpolations, in order. An unclosed
        ``${`` is kept as literal text.
    """
    text: list[str] = []
    found: list[str] = []
    i = 0
    while i < len(written):
        if not written.startswith("${", i) or (i > 0 and written[i - 1] == "\\"):
            text.append(written[i])
            i += 1
            continue
        depth, j = 0, i + 1
        # Nested interpolations and dict arguments both open braces: count every one.
        while j < len(written):
            if written[j] == "{":
                depth += 1
            elif written[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if j >= len(written):
            text.append(written[i:])
            break
        text.append(f"cnasinterp{len(found)}x")
        found.append(written[i : j + 1])
        i = j + 1
    return "".join(text), found


def _written_password(templated: str) -> str | None:
    """The password part of a URL's user-info (``scheme://user:password@host/...``), if any."""
    _, sep, rest = templated.partition("://")
    if not sep:
        return None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2] or None


def check_storage_secret(written: str, resolved: str | None = None, *, saved: str = "") -> None:
    """Refuse a storage URL whose password would be written into saved configs or job pickles.

    Accepted: no password in the URL (``PGPASSWORD`` / ``~/.pgpass``), or a password made only
    of ``${oc.env:VAR}`` interpolations. Refused: any literal character in the password, any
    other interpolation there (``${db.password}`` reads a config key, which is saved; an
    ``oc.env`` default is literal text), and a resolved password that appears as ``:<password>@``
    in ``written`` or in ``saved`` (e.g. a whole URL with its password taken from another key).

    Args:
        written: ``study.storage`` as written, before OmegaConf resolves it.
        resolved: The resolved URL, when known (the second check needs it).
        saved: Text Hydra will save (the unresolved composed config, overrides included).

    Raises:
        StudyError: :data:`PASSWORD_IN_CONFIG` (one line, naming no secret).
    """
    templated, interpolations = _split_interpolations(written)
    password = _written_password(templated)
    if password is not None:
        for k, interpolation in enumerate(interpolations):
            token = f"cnasinterp{k}x"
            if token in password:
                if not _ENV_INTERPOLATION.fullmatch(interpolation):
                    raise StudyError(PASSWORD_IN_CONFIG)
                password = password.replace(token, "")
        if password:
            raise StudyError(PASSWORD_IN_CONFIG)
    if resolved is None:
        return
    try:
        secret = make_url(resolved).password
    except Exception:
        return
    if not secret:
        return
    secret = str(secret)
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    if any(f":{form}@" in text for form in forms for text in (written, saved)):
        raise StudyError(PASSWORD_IN_CONFIG)
