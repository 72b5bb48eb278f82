"""The cells of a fidelity study: random ones from the search space, known ones, given ones.

Random cell ``i`` is drawn with its own generator ``(seed, i)``: raising ``fidelity.n_random``
keeps every earlier cell and appends new ones, so a rerun measures only the new cells.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnas_hpc.config.fidelity import FidelityConfig
from cnas_hpc.fidelity.reference import load_reference
from cnas_hpc.space.encoding import CellEncoding, compact_hash
from cnas_hpc.space.genotype import (
    PRESETS,
    Genotype,
    genotype_from_dict,
    genotype_to_json,
    validate_genotype,
)


@dataclass(frozen=True)
class FidelityCell:
    """A cell of the study: a readable key, where it came from, the genotype and its hash."""

    key: str
    source: str
    genotype_json: str
    genotype_hash: str


def _cell(key: str, source: str, genotype: Genotype) -> FidelityCell:
    validate_genotype(genotype)
    return FidelityCell(key, source, genotype_to_json(genotype), compact_hash(genotype))


def random_cell(encoding: CellEncoding, seed: int, index: int) -> Genotype:
    """Random cell ``index`` of the space (uniform over every parameter's choices)."""
    rng = np.random.default_rng([seed, index])
    params = {
        name: dist.choices[int(rng.integers(len(dist.choices)))]
        for name, dist in sorted(encoding.distributions().items())
    }
    return encoding.from_params(params)


def _from_file(path_text: str) -> list[FidelityCell]:
    path = Path(path_text).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"genotype file {path} not found (fidelity.genotypes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "top" in data:
            return [
                _cell(f"{path.stem}:trial-{e['trial']}", "file", genotype_from_dict(e["genotype"]))
                for e in data["top"]
            ]
        return [_cell(path.stem, "file", genotype_from_dict(data))]
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"genotype file {path} does not parse: {message}") from None


def fidelity_cells(cfg: FidelityConfig, encoding: CellEncoding) -> list[FidelityCell]:
    """The study's cells: random, then presets, then files; a genotype appears once. In
    reference mode (``cfg.reference``) the ground-truth file's cells, in its order, instead.

    Raises:
        ValueError: an unknown preset or a file that does not parse (one line).
        FileNotFoundError: a missing genotype or reference file.
    """
    if cfg.reference is not None:
        reference = load_reference(cfg.reference)
        return _unique([_cell(c.name, "reference", c.genotype) for c in reference.cells])
    cells = [
        _cell(f"random-{i}", "random", random_cell(encoding, cfg.seed, i))
        for i in range(cfg.n_random)
    ]
    for name in cfg.presets:
        if name not in PRESETS:
            raise ValueError(
                f"unknown preset {name!r} (fidelity.presets; known: {', '.join(PRESETS)})"
            )
        cells.append(_cell(name, "preset", PRESETS[name]))
    for path in cfg.genotypes:
        cells += _from_file(path)
    return _unique(cells)


def _unique(cells: list[FidelityCell]) -> list[FidelityCell]:
    unique: dict[str, FidelityCell] = {}
    for cell in cells:
        unique.setdefault(cell.genotype_hash, cell)
    return list(unique.values())
