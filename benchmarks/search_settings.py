"""The search settings of the real configs, composed by Hydra, for the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnas_hpc.config import Settings, settings_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "cnas_hpc" / "configs"


def compose_search_settings(overrides: list[str]) -> Settings:
    """``cnas_hpc/configs/search.yaml`` with ``overrides`` (Hydra syntax), validated."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="search", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return settings_from_config(container)  # type: ignore[arg-type]
