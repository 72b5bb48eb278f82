"""The ``study`` config group: where the shared Optuna study lives and how TPE samples."""

from __future__ import annotations

from dataclasses import dataclass, field

#: ``study.sampler.kind``: Optuna's TPE (the method's), or uniform random sampling (a baseline).
SAMPLERS: tuple[str, ...] = ("tpe", "random")


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler: TPE with every setting explicit (their defaults changed between Optuna 4.x
    and 5.x), or ``kind: random`` (the baseline TPE should beat; the TPE settings are unused)."""

    kind: str = "tpe"
    n_startup_trials: int = 4
    n_ei_candidates: int = 24
    multivariate: bool = True
    group: bool = False
    constant_liar: bool = True
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(
                f"study.sampler.kind must be one of {', '.join(SAMPLERS)}, got {self.kind!r}"
            )


@dataclass(frozen=True)
class StudyConfig:
    """Where the study lives. ``storage`` is an SQLAlchemy URL (sqlite or postgresql)."""

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
