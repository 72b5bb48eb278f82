"""Typed settings of a search, built once from the composed Hydra config.

Library code never reads a ``DictConfig``: :func:`settings_from_config` turns the composed config
into frozen dataclasses (one module of :mod:`cnas_hpc.config` per config group), validating every
value on the way. A bad value raises :class:`ConfigError` with one line naming the key, so the
submitting side can refuse a broken config before anything is queued on the cluster.

Values that only the search space can judge (op names, encodings) are checked one floor up, by
:func:`cnas_hpc.space.encoding.encoding_from_config`; the command-line layer runs both checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.build import build_section, build_settings, section
from cnas_hpc.config.checkpoint import CheckpointConfig
from cnas_hpc.config.cost import CostConfig
from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.search import SearchConfig
from cnas_hpc.config.space import SpaceConfig
from cnas_hpc.config.study import SamplerConfig, StudyConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.config.wandb import WandbConfig
from cnas_hpc.config.zero_cost import ZeroCostConfig

#: Where a worker computes: ``auto`` is CUDA when there is a GPU, else the CPU.
Device = Literal["auto", "cpu", "cuda"]


@section("")
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
    zero_cost: ZeroCostConfig = field(default_factory=ZeroCostConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    worker: int = 0
    seed: int = 0
    device: Device = "auto"
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        values = self.search.values
        if "knn_accuracy" in values and self.data.labeled_fraction <= 0:
            raise ConfigError(
                "search.objective=knn_accuracy needs labels: set data.labeled_fraction > 0"
            )
        if "val_contrastive_loss" in values and self.data.val_fraction <= 0:
            raise ConfigError(
                "search.objective=val_contrastive_loss needs a held-out split: "
                "set data.val_fraction > 0"
            )
        if self.search.multi_objective and self.study.sampler.max_history is not None:
            raise ConfigError(
                "study.sampler.max_history keeps the best trials of ONE objective: set it to "
                f"null with search.objectives={list(self.search.objectives)}, or set "
                "search.objectives=[] (the score alone)"
            )
        if self.study.heartbeat_interval >= self.study.grace_period:
            raise ConfigError(
                f"study.grace_period ({self.study.grace_period} s) must exceed "
                f"study.heartbeat_interval ({self.study.heartbeat_interval} s)"
            )

    @property
    def checkpoint_root(self) -> Path:
        """Root folder of trial checkpoints (shared by all workers)."""
        return Path(self.checkpoint.dir or Path(self.output_dir) / "checkpoints").expanduser()

    @property
    def pending_dir(self) -> Path:
        """Where results wait on disk while the database is unreachable."""
        return Path(self.output_dir) / "pending" / self.study.name


def settings_from_config(cfg: Mapping[str, Any]) -> Settings:
    """Validate a composed config (a resolved plain mapping) and return typed settings.

    Args:
        cfg: ``OmegaConf.to_container(cfg, resolve=True)`` of the composed search config.

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    study = dict(cfg.get("study") or {})
    study["sampler"] = build_section(SamplerConfig, study.get("sampler"))
    study_config = build_section(StudyConfig, study)
    settings: Settings = build_settings(
        Settings, cfg, study=study_config, output_dir=output_dir_of(cfg)
    )
    return settings


def output_dir_of(cfg: Mapping[str, Any]) -> str:
    """``output_dir`` of a composed config, absolute (the one place it is made so)."""
    return str(Path(str(cfg.get("output_dir", "runs"))).expanduser().absolute())


def public_hparams(settings: Settings) -> dict[str, Any]:
    """Flat ``section.key -> value`` view of the settings, safe to log (storage URL masked)."""
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
