"""The ``study`` config group: where the shared Optuna study lives and how TPE samples."""

from __future__ import annotations

import re
import typing
from dataclasses import field
from typing import Literal

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.storage_url import normalize_storage_url
from cnas_hpc.config.build import section

#: A study name: it names folders (``<output_dir>/<name>/``, Hydra's run folders), so one
#: plain path component: letters, digits, ``.``, ``_``, ``-``, not starting with a dot.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

#: ``study.sampler.kind``: Optuna's TPE (the method's), or uniform random sampling (a baseline).
SamplerKind = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = typing.get_args(SamplerKind)


@section("study.sampler")
class SamplerConfig:
    """The sampler: TPE with every setting explicit (their defaults changed between Optuna 4.x
    and 5.x), or ``kind: random`` (the baseline TPE should beat; the TPE settings are unused)."""

    kind: SamplerKind = "tpe"
    n_startup_trials: int = 4
    n_ei_candidates: int = 24
    multivariate: bool = True
    group: bool = False
    constant_liar: bool = True
    seed: int | None = 0
    #: TPE reads at most this many finished trials (the best quarter and the most recent
    #: others); None reads them all. TPE's cost grows with the history: see README.
    max_history: int | None = None

    def __post_init__(self) -> None:
        if self.max_history is not None and self.max_history < max(4 * self.n_startup_trials, 40):
            raise ConfigError(
                f"study.sampler.max_history must be null or >= "
                f"{max(4 * self.n_startup_trials, 40)}, got {self.max_history}"
            )


@section("study")
class StudyConfig:
    """Where the study lives. ``storage`` is an SQLAlchemy URL (sqlite or postgresql).

    ``storage`` is normalised once, when the section is built (:func:`normalize_storage_url`:
    an explicit ``postgresql+psycopg2`` driver, an absolute SQLite path against the current
    directory), so every reader gets the URL it may open as is; an unsupported URL raises
    :class:`~cnas_hpc.common.errors.StudyError` here, before anything is queued.
    """

    name: str = "cnas"
    # repr=False: a resolved URL may hold a password; never let a log of the settings show it.
    storage: str = field(default="sqlite:///runs/cnas.db", repr=False)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    heartbeat_interval: int = 30
    grace_period: int = 180
    max_retry: int = 2
    pool_size: int = 0
    connect_timeout: int = 10
    #: keep retrying a failing database operation this long before the worker gives up
    retry_deadline_s: float = 600.0

    def __post_init__(self) -> None:
        if not STUDY_NAME.fullmatch(self.name):
            raise ConfigError(
                f"study.name={self.name!r} is not a plain name: use letters, digits, '.', '_' "
                "and '-' (it names folders: no '/', no leading '.', at most 128 characters)"
            )
        # Idempotent: a section rebuilt from a normalised one keeps the same URL.
        object.__setattr__(self, "storage", normalize_storage_url(self.storage))
