"""The ``compare`` section of ``cnas_hpc/configs/compare_samplers.yaml``: TPE vs random, encodings.

Every run is a whole search (the search config, every override applied) with its own study,
named ``<name>-<method>-s<seed>``; runs differ only by the sampler, the encoding and the sampler's
seed, so they optimise the very same objective at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.study import SAMPLERS

#: Encodings a method may name (the space's ``encoding``).
ENCODINGS: Final[tuple[str, ...]] = ("compact", "csnas")


def parse_method(method: str) -> tuple[str, str]:
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
    return sampler, encoding


@dataclass(frozen=True)
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

    methods: tuple[str, ...] = ("tpe-compact", "random-compact", "tpe-csnas", "random-csnas")
    seeds: tuple[int, ...] = (0, 1, 2)
    n_trials: int = 16
    target: float | None = None
    name: str = "compare"
    run: int | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("compare.methods must name at least one method")
        for method in self.methods:
            parse_method(method)
        if not self.seeds:
            raise ConfigError("compare.seeds must hold at least one seed")
        if (
            isinstance(self.n_trials, bool)
            or not isinstance(self.n_trials, int)
            or self.n_trials < 1
        ):
            raise ConfigError(f"compare.n_trials must be an integer >= 1, got {self.n_trials!r}")
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
