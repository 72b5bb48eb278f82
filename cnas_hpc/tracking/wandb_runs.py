"""Weights & Biases plumbing shared by every run cnas-hpc writes (trials, evaluations, views).

Modes (``wandb.mode``): ``disabled`` (wandb is never imported), ``offline`` (the cluster default:
compute nodes usually have no internet; runs are written under ``<output_dir>/wandb`` and
uploaded later with ``wandb sync``) and ``online``. This module never changes the environment.

Secrets: run configs go through :func:`safe_hparams` / :func:`scrub` (URL passwords masked,
secret-looking keys hidden), and wandb's own system metadata is turned off because it records
``sys.argv`` (a Hydra override can carry a storage URL with its password) and the git remote
(which can embed a token).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config.settings import Settings
from cnas_hpc.config.wandb import WandbConfig

if TYPE_CHECKING:
    # wandb is imported only when a run is actually written.
    from wandb.sdk.wandb_run import Run

log = logging.getLogger(__name__)

T = TypeVar("T")

TRIAL_JOB_TYPE = "search-trial"


STUDY_JOB_TYPE = "search-study"


#: Rows of the study view's top-k table.
TOP_K = 10


# Keys whose values are never logged, whatever they hold.
_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)


def wandb_config_of(settings: Settings) -> WandbConfig:
    """The W&B settings of a search (disabled when the settings carry none)."""
    cfg = getattr(settings, "wandb", None)
    return cfg if isinstance(cfg, WandbConfig) else WandbConfig()


def wandb_root(output_dir: str, config: WandbConfig) -> Path:
    """The ``dir`` handed to ``wandb.init``: ``wandb.dir`` or ``<output_dir>/wandb``."""
    return Path(config.dir or Path(output_dir) / "wandb").expanduser()


def sync_command(path: str | Path) -> str:
    """The command line that uploads offline runs (a run folder or a glob of them)."""
    return f"wandb sync {path}"


def scrub(key: str, value: Any) -> Any:
    """``value`` safe to log: secret-looking keys hidden, URL passwords masked (recursively)."""
    if _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, Mapping):
        return {str(k): scrub(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(key, item) for item in value]
    return value


def safe_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``section.key`` hyper-parameters, masked again and nested by section for W&B.

    ``{"train.lr": 0.1, "study.storage": "postgresql://u:pw@h/db"}`` becomes
    ``{"train": {"lr": 0.1}, "study": {"storage": "postgresql://u:***@h/db"}}``; W&B shows nested
    keys as ``train.lr`` again, and nesting keeps them apart from the run's own config keys.
    """
    nested: dict[str, Any] = {}
    for flat_key, value in hparams.items():
        *sections, leaf = str(flat_key).split(".")
        node = nested
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):  # a scalar and a section share a name: keep both
                child = node.setdefault(f"{section}_", {})
            node = child
        node[leaf] = scrub(str(flat_key), value)
    return nested


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(
        # No banners, no progress bars, no carriage returns in SLURM logs.
        silent=True,
        # The worker's stdout/stderr already go to the job's log; capturing them per run would
        # also wrap the streams again for every trial of a long-lived process.
        console="off",
        # System metadata records sys.argv and the git remote: both can hold credentials.
        x_disable_meta=True,
        disable_git=True,
        save_code=False,
    )


def init_run(
    output_dir: str,
    config: WandbConfig,
    *,
    name: str,
    job_type: str,
    group: str,
    run_config: dict[str, Any],
    tags: Sequence[str],
) -> Run:
    """Start one W&B run (several may exist in one process). Raises what wandb raises."""
    import wandb

    root = wandb_root(output_dir, config)
    root.mkdir(parents=True, exist_ok=True)
    mode: Literal["online", "offline"] = "online" if config.mode == "online" else "offline"
    return wandb.init(
        project=config.project,
        entity=config.entity,
        dir=str(root),
        mode=mode,
        name=name,
        group=group,
        job_type=job_type,
        config=run_config,
        tags=list(tags),
        reinit="create_new",
        settings=_wandb_settings(),
    )


def run_dir(run: Run) -> Path:
    """The run's own folder (``.../offline-run-<time>-<id>``): what ``wandb sync`` takes."""
    return Path(run.dir).parent


def log_row(run: Run, x: tuple[str, int], prefix: str, metrics: Mapping[str, float | None]) -> None:
    """Log ``metrics`` (None values left out) as ``<prefix><name>`` in one row with ``x``."""
    row: dict[str, Any] = {x[0]: x[1]}
    row.update({f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None})
    run.log(row)


class Guard:
    """Calls into wandb that never raise: W&B is best effort (rate limits, network, disk).

    The first failure of each kind of call is logged as a warning, later ones at debug level,
    on ``logger`` (the caller's, so a failure is reported where it happened).
    """

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._warned: set[str] = set()

    def __call__(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn``; on any error log it and return None."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # W&B is best effort by contract
            first = what not in self._warned
            self._warned.add(what)
            self._log.log(
                logging.WARNING if first else logging.DEBUG,
                "W&B %s failed (%s: %s); tracking goes on without it%s",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                f" (further {what} failures are logged at debug level)" if first else "",
                exc_info=not first,
            )
            return None
