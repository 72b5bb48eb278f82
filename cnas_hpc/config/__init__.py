"""The ground floor: every config schema of cnas-hpc, and the search's validated settings.

One rule for where a schema lives: the dataclass of config group ``<g>``
(``cnas_hpc/configs/<g>/``) is in
``cnas_hpc/config/<g>.py``; :mod:`cnas_hpc.config.settings` assembles them into the
:class:`Settings` of a search. Nothing here imports a floor above (see ARCHITECTURE.md): code of
every floor receives these frozen dataclasses, never a Hydra ``DictConfig``.
"""

from __future__ import annotations

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.build import build_section
from cnas_hpc.config.checkpoint import CheckpointConfig
from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.report import ReportConfig
from cnas_hpc.config.search import SearchConfig
from cnas_hpc.config.settings import Settings, public_hparams, settings_from_config
from cnas_hpc.config.space import SpaceConfig
from cnas_hpc.config.study import SamplerConfig, StudyConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.config.wandb import WandbConfig

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ProxyConfig",
    "ReportConfig",
    "SamplerConfig",
    "SearchConfig",
    "Settings",
    "SpaceConfig",
    "StudyConfig",
    "TrainConfig",
    "WandbConfig",
    "build_section",
    "public_hparams",
    "settings_from_config",
]
