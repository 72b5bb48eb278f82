"""The scoring setup: every setting that changes what a label-free score means.

Scores are comparable only when they were made the same way. A search study records the setup
it was created with (:func:`scoring_setup`, stored by :mod:`cnas_hpc.study.lifecycle`) and refuses
a resume with another one; a fidelity study keys its measurements by the setup's digest
(:meth:`cnas_hpc.config.fidelity.FidelitySettings.score_fingerprint`). Both build the setup here,
with this one function.

What does NOT change a score is left out: workers, threads and how a step runs (``train.perf``,
``train.amp``, ``train.num_threads``: the step plan), the pruner, W&B, paths (a data file is
named by its file name, not where it lies), ``search.n_trials``, log intervals, checkpoints and
the study's storage.

A new config section that changes scores (zero-cost proxy settings, say) joins by one entry in
:data:`SCORING_SECTIONS`. A study recorded before a key existed is compared on that key with its
default value: adding a key with a default never refuses an old study that keeps the default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnas_hpc.config.cost import CostConfig
from cnas_hpc.config.settings import Settings


@dataclass(frozen=True)
class ScoringSection:
    """One config section as far as it decides a score.

    Attributes:
        name: The section's config key (``model``); the setup's keys are ``<name>.<field>``.
        of: The section's dataclass in the settings.
        skip: Fields that do not change a score.
        only: When not empty, the ONLY fields that change a score (the rest are skipped).
        files: Fields holding a path: only the file's name counts (moving the data is no change).
    """

    name: str
    of: Callable[[Settings], Any]
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def counts(self, key: str) -> bool:
        """Whether field ``key`` changes a score."""
        return key not in self.skip and (not self.only or key in self.only)


#: Every section that changes what a score means, and how. Add a new one here (one line).
SCORING_SECTIONS: tuple[ScoringSection, ...] = (
    ScoringSection("space", lambda s: s.space),
    ScoringSection("model", lambda s: s.model),
    ScoringSection(
        "data", lambda s: s.data, skip=("download", "test_path"), files=("root", "path")
    ),
    ScoringSection("augment", lambda s: s.augment),
    ScoringSection(
        "train", lambda s: s.train, skip=("log_every_steps", "num_threads", "perf", "amp")
    ),
    # What the values are (objectives, in order) and which cells are feasible (constraints).
    ScoringSection("search", lambda s: s.search, only=("objective", "objectives", "constraints")),
    # The zero-cost proxies' network and batch: the score of search.objective=naswot|synflow.
    ScoringSection("zero_cost", lambda s: s.zero_cost, skip=("record",)),
    # How costs are measured: only when a cost is an objective or constrained (else the
    # defaults are recorded, so changing an unused cost setting never refuses a study).
    ScoringSection("cost", lambda s: s.cost if s.search.costs else CostConfig()),
)


def _plain(value: Any) -> Any:
    """The value as JSON stores it (tuples become lists), so a recorded setup compares equal."""
    return json.loads(json.dumps(value, default=str))


def _section_values(section: ScoringSection, settings: Settings) -> dict[str, Any]:
    values = {}
    for name, value in dataclasses.asdict(section.of(settings)).items():
        if not section.counts(name):
            continue
        if name in section.files and value:
            value = Path(str(value)).name
        values[f"{section.name}.{name}"] = _plain(value)
    return values


def scoring_setup(settings: Settings) -> dict[str, Any]:
    """The scoring setup of ``settings``: flat ``section.key -> value`` (JSON values).

    Two sets of settings score cells comparably exactly when their setups are equal.
    """
    setup: dict[str, Any] = {}
    for section in SCORING_SECTIONS:
        setup.update(_section_values(section, settings))
    return setup


def setup_digest(setup: Mapping[str, Any]) -> str:
    """A short hash of a setup (12 hex characters of its sorted JSON's sha256)."""
    text = json.dumps(dict(setup), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _default_of(key: str, settings: Settings) -> Any:
    """The default of ``section.field`` (what a study made before the key existed used)."""
    section_name, _, field_name = key.partition(".")
    for section in SCORING_SECTIONS:
        if section.name != section_name:
            continue
        for f in dataclasses.fields(section.of(settings)):
            if f.name != field_name:
                continue
            if f.default is not dataclasses.MISSING:
                return _plain(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return _plain(f.default_factory())
    return None


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def setup_differences(recorded: Mapping[str, Any], settings: Settings) -> list[str]:
    """How ``settings`` scores differently from a recorded setup: ``key old -> new`` each.

    A key the record lacks (added to the code after the study was made) is compared with its
    default; a key the code no longer has is ignored (nothing can set it any more).
    """
    differences = []
    for key, new in scoring_setup(settings).items():
        old = recorded[key] if key in recorded else _default_of(key, settings)
        if old != new:
            differences.append(f"{key} {_shown(old)} -> {_shown(new)}")
    return differences
