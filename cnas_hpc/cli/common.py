"""What every command-line entry point shares: one-line errors and the validated settings.

The ``cli`` package is the top floor (see ARCHITECTURE.md): it composes the apps, the trackers
and the study analysis, turns a Hydra ``DictConfig`` into typed settings, and turns the user's
errors into one ``error:`` line with exit status 2.

Secrets: the database password comes from ``PGPASSWORD``, ``~/.pgpass`` or an
``${oc.env:VAR}`` interpolation inside the URL; never from text Hydra saves. A literal password
is refused before it reaches a file (see
:func:`cnas_hpc.common.storage_url.check_storage_secret`); the URL is only ever printed masked.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from cnas_hpc.common.errors import ConfigError, StudyError, WorkerError
from cnas_hpc.common.storage_url import check_storage_secret
from cnas_hpc.config import Settings, settings_from_config
from cnas_hpc.space.encoding import encoding_from_config

#: Errors that are the user's input, reported as one line (no traceback).
USER_ERRORS = (ConfigError, StudyError, WorkerError, FileNotFoundError, ValueError)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (first line only) to stderr and exit with ``code``."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def settings_of(cfg: DictConfig) -> Settings:
    """Resolve and validate the composed search config (without the ``hydra`` node).

    Every section is checked by its schema (:mod:`cnas_hpc.config`), and the search space by
    the space itself (:func:`~cnas_hpc.space.encoding.encoding_from_config`).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    # The hydra node holds values only set inside a job (e.g. hydra_help): leave it out.
    keys = [str(key) for key in cfg if key != "hydra"]
    try:
        container = OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=True
        )
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required: set {exc.full_key}=...") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{exc.full_key}: {exc.msg}") from None
    assert isinstance(container, dict)
    settings = settings_from_config({str(k): v for k, v in container.items()})
    try:
        encoding_from_config(settings.space)
    except ValueError as exc:
        raise ConfigError(f"space: {exc}") from None
    return settings


def written_storage(cfg: DictConfig) -> str | None:
    """``study.storage`` as written in the composed config, interpolations unresolved."""
    study = cfg.get("study")
    if not isinstance(study, DictConfig):
        return None
    container = OmegaConf.to_container(study, resolve=False)
    raw = container.get("storage") if isinstance(container, dict) else None
    return raw if isinstance(raw, str) else None


def check_config_secrets(cfg: DictConfig, settings: Settings | None = None) -> None:
    """Refuse a database password that Hydra would save (see the module docstring).

    Args:
        cfg: The composed config, hydra node included, UNRESOLVED (as Hydra saves it).
        settings: The validated settings, when known: then the resolved URL's password is also
            looked for in everything Hydra saves.

    Raises:
        StudyError: ``study.storage contains a password: ...`` (one line, no secret).
    """
    written = written_storage(cfg)
    if written is None:
        return
    if settings is None:
        check_storage_secret(written)
    else:
        # to_yaml does not resolve: the same text Hydra writes to config/hydra/multirun.yaml.
        check_storage_secret(written, settings.study.storage, saved=OmegaConf.to_yaml(cfg))
