"""The ``fidelity`` section of ``cnas_hpc/configs/fidelity.yaml`` and the validated settings.

A fidelity study scores the same cells two ways: with the label-free search score (the search's
own config: ``space``, ``model``, ``data``, ``augment``, ``train``, ``search.objective``) and with
supervised accuracy after a short training from scratch (``protocol``), then measures how well
the first ranks the cells like the second.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.objectives import is_zero_cost
from cnas_hpc.config.build import Count, Natural, build_settings, section
from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.config.scoring import scoring_setup, setup_digest
from cnas_hpc.config.settings import Settings, settings_from_config


@section("fidelity")
class FidelityConfig:
    """Which cells a fidelity study measures, and how its statistics are computed.

    Attributes:
        n_random: Random cells drawn from the search space (seeded by ``seed``: a larger value
            keeps the first cells and adds new ones).
        seed: Seed of the random cells.
        presets: Known cells measured too (``DARTS_V2``, ...): "seeded" cells.
        genotypes: Genotype JSON files measured too.
        noise_cells: The first this many cells are scored under every seed of ``noise_seeds``
            as well: the score's own noise.
        noise_seeds: Extra seeds of the label-free score (``seed`` of the search config + 1..n).
        bootstrap: Bootstrap resamples of the confidence intervals.
        confidence: Level of the intervals.
        top_k: Size of the top-k overlap.
        accuracy_fraction: Share of the training images the short supervised training uses
            (seeded). The label-free score uses ``data.fraction``: the two vary apart, so a study
            of how the score's amount of data changes tau reuses every accuracy.
        reference: A ground-truth file (:mod:`cnas_hpc.fidelity.reference`): its cells, with
            their known accuracies, replace the random/preset/file cells and the short
            supervised runs; its other rankings are reported beside the scores.
        reference_cells: Reference mode: cells of the network whose size (parameters, MACs) is
            reported (DARTS's CIFAR evaluation network: 20).
        reference_channels: Its channels (DARTS: 36).
        unit: Which planned measurement THIS process makes (set by the array sweeper); None: all.
    """

    n_random: Natural = 24
    seed: int = 0
    presets: tuple[str, ...] = ()
    genotypes: tuple[str, ...] = ()
    noise_cells: Natural = 4
    noise_seeds: Natural = 3
    bootstrap: Count = 2000
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    top_k: Count = 5
    accuracy_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    reference: str | None = None
    reference_cells: Count = 20
    reference_channels: Count = 36
    unit: Natural | None = None

    def __post_init__(self) -> None:
        if self.reference is None and self.n_random + len(self.presets) + len(self.genotypes) < 3:
            raise ConfigError(
                "a fidelity study needs at least 3 cells: raise fidelity.n_random or add "
                "fidelity.presets / fidelity.genotypes"
            )


@dataclass(frozen=True)
class FidelitySettings:
    """The search's settings (the label-free score), the short protocol (the accuracy), and
    the fidelity section."""

    search: Settings
    protocol: ProtocolConfig
    fidelity: FidelityConfig

    def score_fingerprint(self) -> tuple[dict[str, Any], str]:
        """What decides a cell's label-free score (and its short hash): the search's scoring
        setup, the same one a search study records (:func:`cnas_hpc.config.scoring.scoring_setup`).
        """
        # One contrastive run records every contrastive objective, and the zero-cost proxies are
        # measurements of their own (zero_cost_fingerprint): neither decides this one.
        setup = {
            k: v
            for k, v in scoring_setup(self.search).items()
            if not k.startswith(("search.", "zero_cost."))
        }
        return setup, setup_digest(setup)

    def accuracy_data(self) -> DataConfig:
        """The labeled images of the short training: the search's source, at the protocol's
        image size, with ``fidelity.accuracy_fraction`` of the training images."""
        return dataclasses.replace(
            self.search.data,
            image_size=self.protocol.image_size,
            fraction=self.fidelity.accuracy_fraction,
        )

    def zero_cost_fingerprint(self) -> tuple[dict[str, Any], str]:
        """What decides a cell's zero-cost scores (and its short hash): network, batch, data."""
        zero_cost = dataclasses.asdict(self.search.zero_cost)
        zero_cost.pop("record")
        decisive = {"zero_cost": zero_cost, "data": _data_identity(self.search.data)}
        return decisive, setup_digest(decisive)

    def accuracy_fingerprint(self) -> tuple[dict[str, Any], str]:
        """What decides a cell's accuracy (and its short hash): the short protocol, or in
        reference mode the ground-truth file's content and the network its size is counted on."""
        reference = self.fidelity.reference
        if reference is not None:
            path = Path(reference).expanduser()
            content = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""
            decisive: dict[str, Any] = {
                "reference": {"file": path.name, "sha256": content},
                "network": [self.fidelity.reference_cells, self.fidelity.reference_channels],
            }
            return decisive, setup_digest(decisive)
        decisive = {
            "protocol": {
                k: v
                for k, v in dataclasses.asdict(self.protocol).items()
                if k not in ("name", "log_every_steps", "amp", "memory_format", "eval_batch_size")
            },
            "data": _data_identity(self.accuracy_data()),
            "seed": self.search.seed,
        }
        return decisive, setup_digest(decisive)

    @property
    def results_dir(self) -> Path:
        """Where the report of this fidelity study is written."""
        if is_zero_cost(self.search.search.objective):
            _, score = self.zero_cost_fingerprint()
        else:
            _, score = self.score_fingerprint()
        _, accuracy = self.accuracy_fingerprint()
        return Path(self.search.output_dir) / "fidelity" / f"{score}-{accuracy}"


def _data_identity(cfg: DataConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    for path_key in ("root", "path", "test_path"):
        if data.get(path_key):
            data[path_key] = Path(str(data[path_key])).name  # the file, not where it lies
    data.pop("download", None)
    return data


def fidelity_settings_from_config(cfg: Mapping[str, Any]) -> FidelitySettings:
    """Validate a composed ``fidelity`` config (a resolved plain mapping).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    search_part = {k: v for k, v in cfg.items() if k not in ("protocol", "fidelity")}
    settings: FidelitySettings = build_settings(
        FidelitySettings, cfg, search=settings_from_config(search_part)
    )
    return settings
