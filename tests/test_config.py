"""The real Hydra configs compose, validate, and refuse bad values with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnas_hpc.cli.common import settings_of
from cnas_hpc.common.errors import ConfigError, StudyError
from cnas_hpc.config import settings_from_config
from tests.helpers import CONFIGS, compose_config
from tests.test_config_evaluate import settings as eval_settings


def test_default_config_is_the_embedded_search() -> None:
    settings = settings_from_config(compose_config())
    assert settings.data.source == "digits"
    assert settings.space.encoding == "compact"
    assert settings.search.objective == "val_contrastive_loss"
    assert settings.study.storage.startswith("sqlite:///")
    assert settings.study.storage.endswith("/cnas.db")
    # every TPE setting is explicit in the config (Optuna 4.x and 5.x defaults differ)
    assert settings.study.sampler.multivariate is True
    assert settings.study.sampler.constant_liar is True


def test_study_storage_is_normalised_once_when_the_settings_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every reader (storage, lifecycle, report, evaluation) opens settings.study.storage as is.
    monkeypatch.chdir(tmp_path)
    pg = settings_from_config(compose_config(["study.storage=postgresql://me@db:5432/nas"]))
    assert pg.study.storage == "postgresql+psycopg2://me@db:5432/nas"
    lite = settings_from_config(compose_config(["study.storage=sqlite:///rel/x.db"]))
    assert lite.study.storage == f"sqlite:///{tmp_path}/rel/x.db"
    evaluated = eval_settings("study.storage=postgres://me@db/nas")
    assert evaluated.study.storage == "postgresql+psycopg2://me@db/nas"
    with pytest.raises(StudyError, match="backend 'mysql' is not supported"):
        settings_from_config(compose_config(["study.storage=mysql://me@db/nas"]))


@pytest.mark.parametrize(
    "group", ["space", "model", "data", "augment", "train", "study", "experiment", "debug"]
)
def test_every_option_of_every_group_composes(group: str, tmp_path: Path) -> None:
    for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
        overrides = [f"{group}={option}", f"output_dir={tmp_path}"]
        if option == "npz":
            overrides.append("data.path=/nonexistent.npz")
        if option == "folder":
            overrides.append("data.root=/nonexistent")
        settings = settings_from_config(compose_config(overrides))
        assert settings.search.n_trials > 0


def test_csnas_paper_experiment_matches_the_reference_code() -> None:
    s = settings_from_config(compose_config(["experiment=csnas_paper"]))
    assert (s.space.encoding, s.space.n_nodes, s.space.concat_last) == ("csnas", 5, 4)
    assert (s.model.cells, s.model.channels, s.model.proj_dim) == (8, 32, 256)
    assert (s.train.loss, s.train.temperature, s.train.epochs) == ("membank_nce", 0.07, 10)
    assert (s.train.lr, s.train.batch_size) == (0.001, 256)
    assert s.search.objective == "train_contrastive_loss"
    assert s.study.sampler.n_startup_trials == 20
    assert s.study.sampler.multivariate is False


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("search.n_trials=0", "search.n_trials must be an integer > 0"),
        ("search.objective=accuracy", "search.objective must be one of"),
        ("space.encoding=nope", "encoding"),
        ("space.ops=[sep_conv_3x3,conv_9x9]", "conv_9x9"),
        ("space.n_nodes=0", "n_nodes"),
        ("model.channels=0", "channels"),
        ("model.cells=0", "cells"),
        ("data.fraction=1.5", "data.fraction must be in (0, 1]"),
        ("data.fraction=0", "data.fraction must be in (0, 1]"),
        ("train.loss=triplet", "train.loss must be one of"),
        ("train.batch_size=0", "train.batch_size must be an integer > 0"),
        ("+train.unknown_key=1", "unknown key train.unknown_key"),
        ("search.objective=knn_accuracy", "needs labels"),
    ],
)
def test_bad_values_are_refused_with_one_line(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_of(OmegaConf.create(compose_config([override])))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
