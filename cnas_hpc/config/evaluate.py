"""The sections of ``cnas_hpc/configs/evaluate.yaml``: which cells (``eval``), the label-free probe
(``probe``), and the validated :class:`EvalSettings` of ``launch/evaluate.py`` (how a cell is
trained is the ``protocol`` group: :mod:`cnas_hpc.config.protocol`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.build import Count, build_section, build_settings, section
from cnas_hpc.config.checkpoint import CheckpointConfig
from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.config.settings import Device, output_dir_of
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.config.wandb import WandbConfig

#: What an evaluation measures: supervised training from scratch, the label-free probe, or both.
Method = Literal["supervised", "probe", "both"]
METHODS: Final[tuple[str, ...]] = typing.get_args(Method)

_Positive = Annotated[int, Field(gt=0)]


@section("eval")
class EvalConfig:
    """The ``eval`` section: which cells an evaluation trains.

    The cells are, in this order: the ``top_k`` best COMPLETE trials of study ``from_study``
    (in ``study.storage``), or with ``from_front`` that many cells spread along its Pareto
    front (:func:`cnas_hpc.study.pareto.spread_along`), then every genotype of the JSON files
    in ``genotypes`` (a bare genotype, a ``best_genotype(s).json`` written by a search: its
    ``top`` list, or a report's ``pareto.json``: its front), then the presets named in
    ``presets`` (``DARTS_V2``, ...).

    Attributes:
        from_study: Study whose best trials are evaluated (None: none from a study).
        top_k: How many of its best trials, ``>= 1``.
        from_front: Train this many cells spread along the study's Pareto front instead of
            its ``top_k`` best (``>= 1``; needs ``from_study``); None: the best trials.
        genotypes: Genotype JSON files.
        presets: Names of published genotypes (see :data:`cnas_hpc.space.genotype.PRESETS`).
        name: The evaluation's name: its rows in the ``evaluations`` table, its checkpoints and
            results folder. Rerunning with the same name resumes. Default: derived from the
            study (or ``cells``) and the protocol.
        method: ``supervised`` (train from scratch with labels), ``probe`` (the label-free
            probe) or ``both``.
        cell: Which planned cell THIS process evaluates (set by the array sweeper: one cell per
            array task); None: every cell, one after the other.
        seed: Seed of initialisation, data order and augmentation.
    """

    from_study: str | None = None
    top_k: _Positive = 1
    from_front: _Positive | None = None
    genotypes: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    name: str | None = None
    method: Method = "supervised"
    cell: Annotated[int, Field(ge=0)] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.from_front is not None and self.from_study is None:
            raise ConfigError(
                "eval.from_front needs the study whose front it spreads along: "
                "set eval.from_study=<study>"
            )
        if self.from_study is None and not self.genotypes and not self.presets:
            raise ConfigError(
                "nothing to evaluate: set eval.from_study=<study>, eval.genotypes=[file.json] "
                "or eval.presets=[DARTS_V2]"
            )
        if self.name is not None and not _safe_name(self.name):
            raise ConfigError(
                f"eval.name may hold letters, digits, '-', '_' and '.', got {self.name!r}"
            )


def _safe_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name)


@section("probe")
class ProbeConfig:
    """The ``probe`` section: the label-free probe of a cell.

    The proxy network (at this larger size) is trained contrastively, WITHOUT labels, on the
    training images; its frozen features are then scored with a kNN classifier and a linear
    classifier (logistic regression) fitted on the labeled training images and tested on the
    test split. Cheap next to training from scratch, and the encoder never saw a label.
    """

    cells: Count = 8
    channels: Count = 16
    epochs: Count = 20
    batch_size: Count = 256
    lr: Annotated[float, Field(gt=0)] = 0.3
    temperature: Annotated[float, Field(gt=0)] = 0.5
    knn_k: Count = 20
    linear_epochs: Count = 100
    linear_lr: Annotated[float, Field(gt=0)] = 0.1


@section("")
class EvalSettings:
    """Everything ``launch/evaluate.py`` needs, validated: see :func:`eval_settings_from_config`.

    Attributes:
        eval: which cells; protocol: how to train them; probe: the label-free probe.
        data: the labeled images (train split, and the test split: see ``DataConfig.test_path``).
        augment: the probe's contrastive views.
        study: the database holding the source study and the ``evaluations`` table.
        checkpoint, wandb: as in the search.
        device, output_dir: as in the search.
    """

    eval: EvalConfig
    protocol: ProtocolConfig
    probe: ProbeConfig
    data: DataConfig
    augment: AugmentConfig
    study: StudyConfig
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    device: Device = "auto"
    output_dir: str = "runs"

    @property
    def name(self) -> str:
        """The evaluation's name (``eval.name``, else derived from its cells and protocol:
        ``<from_study>[-front<K>]-<protocol>-<method>``, ``cells-...`` without a study)."""
        if self.eval.name:
            return self.eval.name
        head = self.eval.from_study or "cells"
        if self.eval.from_study and self.eval.from_front is not None:
            # Another set of cells than the study's best: another evaluation (a rerun with the
            # same name resumes the cells it planned first).
            head += f"-front{self.eval.from_front}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in head)
        return f"{safe}-{self.protocol.name}-{self.eval.method}"

    @property
    def checkpoint_root(self) -> Path:
        """Root folder of evaluation checkpoints (shared by every array task)."""
        root = self.checkpoint.dir or Path(self.output_dir) / "checkpoints"
        return Path(root).expanduser() / "evaluations"

    @property
    def results_dir(self) -> Path:
        """Where ``results.md`` / ``results.csv`` of this evaluation are written."""
        return Path(self.output_dir) / "evaluations" / self.name

    def protocol_fingerprint(self) -> tuple[dict[str, Any], str]:
        """The settings that decide a cell's result, and their short hash.

        Two evaluations with the same fingerprint are comparable (same protocol, probe, data
        and seed); the results table only puts such rows side by side.
        """
        decisive = {
            "protocol": dataclasses.asdict(self.protocol),
            "probe": dataclasses.asdict(self.probe) if self.eval.method != "supervised" else None,
            "method": self.eval.method,
            "seed": self.eval.seed,
            "data": {
                k: v
                for k, v in dataclasses.asdict(self.data).items()
                if k not in ("root", "path", "test_path", "download")
            },
        }
        text = json.dumps(decisive, sort_keys=True, default=str)
        return decisive, hashlib.sha256(text.encode()).hexdigest()[:12]


def eval_settings_from_config(cfg: Mapping[str, Any]) -> EvalSettings:
    """Validate a composed ``evaluate`` config (a resolved plain mapping).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    study = dict(cfg.get("study") or {})
    study.pop("sampler", None)  # the evaluation never samples
    if study.get("name") is None:  # unused (``study.name: null``): the source is eval.from_study
        study.pop("name", None)
    settings: EvalSettings = build_settings(
        EvalSettings, cfg, study=build_section(StudyConfig, study), output_dir=output_dir_of(cfg)
    )
    return settings
