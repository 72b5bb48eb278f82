"""Typed settings of a search, built once from the composed Hydra config.

Library code never reads a ``DictConfig``: :func:`settings_from_config` turns the composed config
into frozen dataclasses (each owned by the module that uses it), validating every value on the
way. A bad value raises :class:`ConfigError` with one line naming the key, so the submitting side
can refuse a broken config before anything is queued on the cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cnas_hpc.data.datasets import DataConfig
from cnas_hpc.models.networks import ProxyConfig
from cnas_hpc.search.objective import OBJECTIVES
from cnas_hpc.ssl.augment import AugmentConfig
from cnas_hpc.tracking.wandb_tracker import WandbConfig
from cnas_hpc.train.checkpoint import CheckpointConfig


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key."""


LOSSES = ("ntxent", "membank_nce")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class SpaceConfig:
    """The search space: which encoding, how many intermediate nodes, which ops."""

    encoding: str = "compact"
    n_nodes: int = 4
    ops: tuple[str, ...] | None = None
    concat_last: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Contrastive training of one candidate (the proxy task).

    ``batch_size`` is the GLOBAL batch over all ranks of a worker; each rank gets
    ``batch_size // world_size`` images per step.
    """

    epochs: int = 2
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    loss: str = "ntxent"
    temperature: float = 0.5
    membank_negatives: int = 510
    membank_momentum: float = 0.5
    amp: str = "none"
    grad_clip: float | None = 5.0
    knn_k: int = 20
    log_every_steps: int = 10
    num_threads: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "train", ("epochs", "batch_size", "lr", "temperature", "knn_k"))
        _positive(self, "train", ("membank_negatives", "log_every_steps"))
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(
                f"train.max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if not 0.0 <= self.membank_momentum < 1.0:
            raise ConfigError(
                f"train.membank_momentum must be in [0, 1), got {self.membank_momentum}"
            )
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"train.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}"
            )


@dataclass(frozen=True)
class SamplerConfig:
    """TPE settings, all explicit: their defaults changed between Optuna 4.x and 5.x."""

    n_startup_trials: int = 4
    n_ei_candidates: int = 24
    multivariate: bool = True
    group: bool = False
    constant_liar: bool = True
    seed: int | None = 0


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


@dataclass(frozen=True)
class SearchConfig:
    """The study's budget and objective, shared by every worker."""

    n_trials: int = 8
    objective: str = "val_contrastive_loss"
    max_consecutive_failures: int = 3
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.n_trials <= 0:
            raise ConfigError(f"search.n_trials must be > 0, got {self.n_trials}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"search.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.max_consecutive_failures < 1:
            raise ConfigError(
                f"search.max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}"
            )


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs, validated. Built by :func:`settings_from_config`."""

    space: SpaceConfig
    model: ProxyConfig
    data: DataConfig
    augment: AugmentConfig
    train: TrainConfig
    study: StudyConfig
    search: SearchConfig
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    worker: int = 0
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        if self.search.objective == "knn_accuracy" and self.data.labeled_fraction <= 0:
            raise ConfigError(
                "search.objective=knn_accuracy needs labels: set data.labeled_fraction > 0"
            )
        if self.search.objective == "val_contrastive_loss" and self.data.val_fraction <= 0:
            raise ConfigError(
                "search.objective=val_contrastive_loss needs a held-out split: "
                "set data.val_fraction > 0"
            )
        if self.study.heartbeat_interval >= self.study.grace_period:
            raise ConfigError(
                f"study.grace_period ({self.study.grace_period} s) must exceed "
                f"study.heartbeat_interval ({self.study.heartbeat_interval} s)"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def checkpoint_root(self) -> Path:
        """Root folder of trial checkpoints (shared by all workers)."""
        return Path(self.checkpoint.dir or Path(self.output_dir) / "checkpoints").expanduser()

    @property
    def pending_dir(self) -> Path:
        """Where results wait on disk while the database is unreachable."""
        return Path(self.output_dir) / "pending" / self.study.name


T = TypeVar("T")


def _positive(obj: object, section: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def _build(cls: type[T], section: str, values: Mapping[str, Any] | None) -> T:
    """Instantiate the dataclass ``cls`` from a mapping, turning every error into one line."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} (known: {', '.join(sorted(known))})")
    for key, value in values.items():
        # Hydra hands lists; the dataclasses hold tuples (hashable, immutable).
        if isinstance(value, list):
            values[key] = tuple(value)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from None


def settings_from_config(cfg: Mapping[str, Any]) -> Settings:
    """Validate a composed config (a resolved plain mapping) and return typed settings.

    Args:
        cfg: ``OmegaConf.to_container(cfg, resolve=True)`` of the composed search config.

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    study_values = dict(cfg.get("study") or {})
    sampler = _build(SamplerConfig, "study.sampler", study_values.pop("sampler", None))
    study = _build(StudyConfig, "study", {**study_values, "sampler": sampler})
    space = _build(SpaceConfig, "space", cfg.get("space"))
    _check_space(space)
    return Settings(
        space=space,
        model=_build(ProxyConfig, "model", cfg.get("model")),
        data=_build(DataConfig, "data", cfg.get("data")),
        augment=_build(AugmentConfig, "augment", cfg.get("augment")),
        train=_build(TrainConfig, "train", cfg.get("train")),
        study=study,
        search=_build(SearchConfig, "search", cfg.get("search")),
        checkpoint=_build(CheckpointConfig, "checkpoint", cfg.get("checkpoint")),
        wandb=_build(WandbConfig, "wandb", cfg.get("wandb")),
        worker=int(cfg.get("worker", 0)),
        seed=int(cfg.get("seed", 0)),
        device=str(cfg.get("device", "auto")),
        output_dir=str(Path(str(cfg.get("output_dir", "runs"))).expanduser().absolute()),
    )


def _check_space(space: SpaceConfig) -> None:
    from cnas_hpc.space.encoding import make_encoding

    try:
        make_encoding(
            space.encoding, n_nodes=space.n_nodes, ops=space.ops, concat_last=space.concat_last
        )
    except ValueError as exc:
        raise ConfigError(f"space: {exc}") from None


def public_hparams(settings: Settings) -> dict[str, Any]:
    """Flat ``section.key -> value`` view of the settings, safe to log (storage URL masked)."""
    from cnas_hpc.search.study import mask_url

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(f"{prefix}{f.name}.", getattr(value, f.name))
        else:
            flat[prefix.rstrip(".")] = list(value) if isinstance(value, tuple) else value

    walk("", settings)
    flat["study.storage"] = mask_url(settings.study.storage)
    return flat
