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
import warnings
from collections.abc import Iterable
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from cnas_hpc.common.errors import ConfigError, StudyError, WorkerError
from cnas_hpc.common.storage_url import check_storage_secret
from cnas_hpc.config import Settings, settings_from_config
from cnas_hpc.config.evaluate import EvalSettings
from cnas_hpc.config.train import check_global_batch
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.app_arrays import live_arrays

#: Where every command's Hydra configs live: inside the package, so an installed
#: ``cnas-hpc`` runs from any directory (a clone's ``launch/*.py`` read the same files).
CONFIG_PATH = "pkg://cnas_hpc.configs"

# Same-named YAML over a plugin schema (cnas_hpc/configs/hydra/launcher/) is Hydra's
# "automatic schema matching": supported by the pinned hydra-core 1.3, which warns about it
# on every run.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")

#: Errors that are the user's input, reported as one line (no traceback).
USER_ERRORS = (ConfigError, StudyError, WorkerError, FileNotFoundError, ValueError)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (first line only) to stderr and exit with ``code``."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The composed config without its ``hydra`` node, resolved to plain values.

    Raises:
        ConfigError: a missing mandatory value or an interpolation that does not resolve
            (one line naming the key).
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
    return {str(k): v for k, v in container.items()}


def check_space(settings: Settings) -> None:
    """Check the ``space`` section against the search space itself (ops, encodings).

    Raises:
        ConfigError: ``space: <why>`` (one line).
    """
    try:
        encoding_from_config(settings.space)
    except ValueError as exc:
        raise ConfigError(f"space: {exc}") from None


def settings_of(cfg: DictConfig) -> Settings:
    """Resolve and validate the composed search config (without the ``hydra`` node).

    Every section is checked by its schema (:mod:`cnas_hpc.config`), and the search space by
    the space itself (:func:`~cnas_hpc.space.encoding.encoding_from_config`).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    settings = settings_from_config(resolved(cfg))
    check_space(settings)
    return settings


def written_storage(cfg: DictConfig) -> str | None:
    """``study.storage`` as written in the composed config, interpolations unresolved."""
    study = cfg.get("study")
    if not isinstance(study, DictConfig):
        return None
    container = OmegaConf.to_container(study, resolve=False)
    raw = container.get("storage") if isinstance(container, dict) else None
    return raw if isinstance(raw, str) else None


def check_config_secrets(cfg: DictConfig, settings: Settings | EvalSettings | None = None) -> None:
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


#: submitit counts every signal as a timeout below this job time limit (minutes).
MIN_TIMEOUT_MIN = 11


def check_launcher(launcher: DictConfig | None, batch_size: int) -> None:
    """Refuse launcher requests that cannot work, before anything is queued.

    Args:
        launcher: the ``hydra.launcher`` node of a multirun (None: a local run, nothing to check).
        batch_size: the GLOBAL batch the app trains with.

    Raises:
        ConfigError: more GPUs per node than tasks per node (ranks are one per GPU), a global
            batch that the world size does not divide, or a time limit under
            :data:`MIN_TIMEOUT_MIN` minutes.
    """
    if launcher is None:
        return
    tasks = int(launcher.get("tasks_per_node") or 1)
    nodes = int(launcher.get("nodes") or 1)
    gpus = launcher.get("gpus_per_node")
    if gpus is not None and not isinstance(gpus, int):
        gpus = int(str(gpus).split(":")[-1])
    if gpus is not None and gpus > tasks:
        raise ConfigError(
            f"hydra.launcher.gpus_per_node={gpus} exceeds tasks_per_node={tasks}: "
            "one rank drives one GPU, set tasks_per_node to the number of GPUs"
        )
    timeout = launcher.get("timeout_min")
    if timeout is not None and (not isinstance(timeout, int) or timeout < MIN_TIMEOUT_MIN):
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout} is under {MIN_TIMEOUT_MIN}: submitit then "
            "takes every signal for a timeout (its cut-off is min(0.8 L, L - 10 min)) and a "
            f"preempted worker is not requeued as such; ask for at least {MIN_TIMEOUT_MIN} minutes"
        )
    check_global_batch(batch_size, tasks * nodes, hint=" (tasks_per_node x nodes)")


def is_slurm_launcher(launcher: DictConfig | None) -> bool:
    """Whether a multirun's launcher submits a SLURM array (not local processes)."""
    return launcher is not None and "Slurm" in str(launcher.get("_target_", ""))


def refuse_live_arrays(arrays: Iterable[str], what: str) -> None:
    """Refuse to submit a second array while one of ``arrays`` still works ``what``.

    Raises:
        StudyError: one line naming the array, how to follow it and how to stop it.
    """
    for array, held in live_arrays(arrays):
        raise StudyError(
            f"{what} is still being worked by SLURM array {array} ({len(held)} task(s) pending "
            f"or running): no second array is submitted. Wait for it (`squeue -j {array}`), or "
            f"stop it with `scancel {array}` and run the command again"
        )
