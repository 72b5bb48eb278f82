"""Making one measurement of a fidelity study: a cell's label-free score, or its accuracy.

Both go through the same core as the search and the evaluation phase: the score is
:func:`cnas_hpc.train.loop.train_candidate` on the search's unlabeled split (exactly what a
search trial runs, with the unit's seed), the accuracy is
:func:`cnas_hpc.train.supervised.train_supervised` under the short ``protocol`` (or, in reference
mode, the ground-truth file's value, with the size of the network it was trained at), the
zero-cost proxies are :func:`cnas_hpc.train.zero_cost.zero_cost_scores` on the search's
unlabeled training images. Every rank of a
task calls :func:`measure` together; the returned numbers are identical on every rank.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from cnas_hpc.config.fidelity import FidelitySettings
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.data.splits import SearchData
from cnas_hpc.fidelity.reference import Reference, load_reference
from cnas_hpc.fidelity.store import ACCURACY, SCORE, ZERO_COST, Measurement
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.space.encoding import compact_hash
from cnas_hpc.space.genotype import genotype_from_json
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.step import ProxyTask
from cnas_hpc.train.supervised import SupervisedTask, build_eval_network, train_supervised
from cnas_hpc.train.zero_cost import zero_cost_scores


@dataclass(frozen=True)
class Result:
    """A measurement's value (the score's objective, or the test accuracy) and its details."""

    value: float
    extra: dict[str, Any]
    params: int
    macs: int
    wall_s: float


def _score(
    unit: Measurement,
    settings: FidelitySettings,
    data: SearchData,
    device: torch.device,
    max_threads: int | None,
) -> Result:
    search = settings.search
    started = time.perf_counter()
    genotype = genotype_from_json(unit.genotype)
    model = build_candidate(genotype, search.model, unit.seed, device)
    image = (3, search.data.image_size, search.data.image_size)
    params, macs = count_parameters(model), count_macs(model, image)
    task = ProxyTask(
        search.train, search.augment, search.data.image_size, unit.seed, max_threads=max_threads
    )
    result = train_candidate(model, data, task, device)
    extra = {
        "train_contrastive_loss": result.train_loss,
        "val_contrastive_loss": result.val_loss,
        "knn_accuracy": result.knn_accuracy,
        "history": [dataclasses.asdict(h) for h in result.history],
    }
    return Result(
        result.objective(search.search.objective),
        extra,
        params,
        macs,
        time.perf_counter() - started,
    )


def _zero_cost(
    unit: Measurement, settings: FidelitySettings, data: SearchData, device: torch.device
) -> Result:
    genotype = genotype_from_json(unit.genotype)
    cfg = settings.search.zero_cost
    scores = zero_cost_scores(genotype, data.train.images, cfg, unit.seed, device)
    extra = {"naswot": scores.naswot, "synflow": scores.synflow}
    return Result(scores.value("naswot"), extra, 0, 0, scores.wall_s)


_REFERENCES: dict[str, Reference] = {}


def _reference(path: str) -> Reference:
    """The ground-truth file, parsed once per process."""
    if path not in _REFERENCES:
        _REFERENCES[path] = load_reference(path)
    return _REFERENCES[path]


def _reference_accuracy(unit: Measurement, settings: FidelitySettings) -> Result:
    started = time.perf_counter()
    fidelity = settings.fidelity
    assert fidelity.reference is not None
    reference = _reference(fidelity.reference)
    cell = next(
        (c for c in reference.cells if compact_hash(c.genotype) == unit.genotype_hash), None
    )
    if cell is None:
        raise ValueError(f"cell {unit.genotype_hash} is not in {reference.path}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(unit.seed)
        network = NetworkCIFAR(
            cell.genotype, C=fidelity.reference_channels, layers=fidelity.reference_cells
        )
    params, macs = count_parameters(network), count_macs(network, (3, 32, 32))
    extra = {"name": cell.name, "rankings": cell.rankings}
    return Result(cell.accuracy / 100.0, extra, params, macs, time.perf_counter() - started)


def _accuracy(
    unit: Measurement, settings: FidelitySettings, data: LabeledData, device: torch.device
) -> Result:
    started = time.perf_counter()
    protocol = settings.protocol
    model = build_eval_network(
        genotype_from_json(unit.genotype), protocol, data.num_classes, unit.seed
    )
    image = (3, protocol.image_size, protocol.image_size)
    params, macs = count_parameters(model), count_macs(model, image)
    task = SupervisedTask(protocol, data.num_classes, unit.seed)
    result = train_supervised(model.to(device), data, task, device)
    extra = {
        "test_loss": result.test_loss,
        "train_accuracy": result.train_accuracy,
        "history": [dataclasses.asdict(h) for h in result.history],
    }
    return Result(result.test_accuracy, extra, params, macs, time.perf_counter() - started)


def measure(
    unit: Measurement,
    settings: FidelitySettings,
    device: torch.device,
    *,
    search_data: SearchData | None,
    labeled_data: LabeledData | None,
    max_threads: int | None = None,
) -> Result:
    """Make ``unit``'s measurement (the matching data must be given).

    ``max_threads`` is the task's intra-op threads from its allocation: the most a score's
    measured step plan may try (as a search worker's trial; ``None``: the cores it can see).

    Raises:
        TrainingAbortedError: the cell diverged or ran out of memory.
        ValueError: an unknown unit kind.
    """
    if unit.kind == SCORE:
        assert search_data is not None
        return _score(unit, settings, search_data, device, max_threads)
    if unit.kind == ZERO_COST:
        assert search_data is not None
        return _zero_cost(unit, settings, search_data, device)
    if unit.kind == ACCURACY and settings.fidelity.reference is not None:
        return _reference_accuracy(unit, settings)
    if unit.kind == ACCURACY:
        assert labeled_data is not None
        return _accuracy(unit, settings, labeled_data, device)
    raise ValueError(f"unknown measurement kind {unit.kind!r}")
