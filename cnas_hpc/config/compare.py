"""The ``compare`` section of ``cnas_hpc/configs/compare_samplers.yaml``: TPE vs random, encodings.

Every run is a whole search (the search config, every override applied) with its own study,
named ``<name>-<method>-s<seed>``; runs differ only by the sampler, the encoding and the sampler's
seed, so they optimise the very same objective at the same budget.
"""

from __future__ import annotations

import typing
from typing import Annotated, Final

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Count, section
from cnas_hpc.config.study import SAMPLERS, SamplerKind

#: Encodings a method may name (the space's ``encoding``).
ENCODINGS: Final[tuple[str, ...]] = ("compact", "csnas")


def parse_method(method: str) -> tuple[SamplerKind, str]:
    """``"tpe-compact"`` -> ``("tpe", "compact")``.

    Raises:
        ConfigError: not ``<sampler>-<encoding>`` with known parts.
    """
    sampler, _, encoding = method.partition("-")
    if sampler not in SAMPLERS or encoding not in ENCODINGS:
        raise ConfigError(
            f"compare.methods: {method!r} is not <sampler>-<encoding> "
            f"(samplers: {', '.join(SAMPLERS)}; encodings: {', '.join(ENCODINGS)})"
        )
    return typing.cast("SamplerKind", sampler), encoding


@section("compare")
class CompareConfig:
    """Which searches to run and compare.

    Attributes:
        methods: ``<sampler>-<encoding>`` names (``tpe-compact``, ``random-csnas``, ...).
        seeds: Sampler seeds; one run per method and seed.
        n_trials: The budget of every run (COMPLETE trials).
        target: Score a run must reach for "trials to target" (None: the median over all runs of
            their final best).
        name: Prefix of the runs' study names.
        run: Which run THIS process makes (set by the array sweeper); None: every run.
    """

    methods: Annotated[tuple[str, ...], Field(min_length=1)] = (
        "tpe-compact", "random-compact", "tpe-csnas", "random-csnas",
    )  # fmt: skip
    seeds: Annotated[tuple[int, ...], Field(min_length=1)] = (0, 1, 2)
    n_trials: Count = 16
    target: float | None = None
    name: str = "compare"
    run: int | None = None

    def __post_init__(self) -> None:
        for method in self.methods:
            parse_method(method)
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"compare.name may hold letters, digits, '-', '_', '.', got {self.name!r}"
            )

    @property
    def runs(self) -> list[tuple[str, int]]:
        """``(method, seed)`` of every run, in a fixed order."""
        return [(method, seed) for method in self.methods for seed in self.seeds]

    def study_name(self, method: str, seed: int) -> str:
        """The study of one run."""
        return f"{self.name}-{method}-s{seed}"
