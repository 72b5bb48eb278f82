"""Ground-truth files: cells whose fully trained accuracy is known, and other rankings of them.

``fidelity.reference=<file>`` replaces the short supervised runs of a fidelity study by the
accuracies of such a file. The format (JSON; ``../shared/data/darts_ground_truth/`` is one)::

    {
      "source": "where the numbers come from (free text, shown in the report)",
      "settings": {                          # optional: the other rankings' settings and cost
        "Task1": {"epoch": "10", "n_layers": "6", "channels": "8", "image_size": "16",
                  "MeanTime(GPU Hours)": "0.0864"}        # or "gpu_hours": 0.0864
      },
      "cells": [
        {"name": "Arch_3",
         "genotype": {"normal": [["sep_conv_5x5", 0], ...], "normal_concat": [2, 3, 4, 5],
                      "reduce": [...], "reduce_concat": [2, 3, 4, 5]},
         "accuracy": 96.98,                    # % ("cifar10_test_acc" is read too)
         "rankings": {"Task1": 64.61, ...}}    # optional ("cheap_settings_acc" is read too)
      ]
    }

Accuracies are percentages; a higher value of a ranking means a better cell. A user with their
own trained cells writes such a file and gets the same report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnas_hpc.space.genotype import Genotype, genotype_from_dict, validate_genotype

_ACCURACY_KEYS = ("accuracy", "cifar10_test_acc")
_RANKING_KEYS = ("rankings", "cheap_settings_acc")
_COST_KEYS = ("gpu_hours", "MeanTime(GPU Hours)")


@dataclass(frozen=True)
class ReferenceCell:
    """One cell of a ground-truth file: its name, genotype, accuracy (%) and other rankings."""

    name: str
    genotype: Genotype
    accuracy: float
    rankings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RankingSetting:
    """What one of the file's other rankings is, and what it costs per cell."""

    name: str
    description: str
    gpu_hours: float | None


@dataclass(frozen=True)
class Reference:
    """A parsed ground-truth file."""

    path: Path
    source: str
    cells: list[ReferenceCell]
    settings: dict[str, RankingSetting]

    def ranking_names(self) -> list[str]:
        """The other rankings every cell has, in the file's order."""
        if not self.cells:
            return []
        names = list(self.cells[0].rankings)
        return [n for n in names if all(n in c.rankings for c in self.cells)]


def _number(value: object, what: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def _first(entry: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((entry[k] for k in keys if k in entry), None)


def _describe(values: dict[str, Any]) -> str:
    names = {"epoch": "ep", "n_layers": "cells", "channels": "ch", "image_size": "px"}
    parts = [f"{values[k]} {short}" for k, short in names.items() if k in values]
    return ", ".join(parts) if parts else ""


def _setting(name: str, values: object) -> RankingSetting:
    if not isinstance(values, dict):
        raise ValueError(f"settings.{name} must be a mapping")
    cost = _first(values, _COST_KEYS)
    hours = None if cost is None else _number(cost, f"settings.{name} cost")
    return RankingSetting(name, _describe(values), hours)


def _cell(index: int, entry: object) -> ReferenceCell:
    if not isinstance(entry, dict):
        raise ValueError(f"cells[{index}] must be a mapping")
    name = str(entry.get("name") or f"cell-{index}")
    if "genotype" not in entry:
        raise ValueError(f"cell {name} has no genotype")
    genotype = genotype_from_dict(entry["genotype"])
    validate_genotype(genotype)
    accuracy = _first(entry, _ACCURACY_KEYS)
    if accuracy is None:
        raise ValueError(f"cell {name} has no accuracy (keys: {', '.join(_ACCURACY_KEYS)})")
    rankings = _first(entry, _RANKING_KEYS) or {}
    if not isinstance(rankings, dict):
        raise ValueError(f"cell {name}: rankings must be a mapping of name -> value")
    return ReferenceCell(
        name,
        genotype,
        _number(accuracy, f"cell {name} accuracy"),
        {str(k): _number(v, f"cell {name} ranking {k}") for k, v in rankings.items()},
    )


def load_reference(path_text: str) -> Reference:
    """Read and check a ground-truth file (see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: one line saying what in the file is wrong.
    """
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} not found (fidelity.reference)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise ValueError("it must be a JSON object with a 'cells' list")
        cells = [_cell(i, entry) for i, entry in enumerate(data["cells"])]
        settings = {str(k): _setting(str(k), v) for k, v in (data.get("settings") or {}).items()}
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"reference file {path} does not parse: {message}") from None
    if len(cells) < 3:
        raise ValueError(f"reference file {path} lists {len(cells)} cells; tau needs at least 3")
    return Reference(
        path=path,
        source=str(data.get("source", "")),
        cells=cells,
        settings=settings,
    )
