"""The fidelity app: measure the planned units (scores and accuracies) of a fidelity study.

Contract:
    * :func:`plan_units` (the submitting side, once) turns the settings into measurements:
      per cell one accuracy (a short supervised run, or in reference mode the ground-truth
      file's value), its zero-cost proxies and (unless the objective is itself a zero-cost
      proxy) one contrastive score at the search's seed; for the first ``fidelity.noise_cells``
      cells the scores again at each extra noise seed. Measurements that
      exist already (COMPLETE, in the same database) are reused, never made again.
    * :func:`run_fidelity` runs on every rank of a task; rank 0 alone opens the database. With
      ``fidelity.unit`` set (one SLURM array task per unit) it makes that unit; without, every
      unit of the plan that is not COMPLETE, in order. A failing unit (a diverging cell) is
      recorded FAIL with its reason and the others go on.
    * A unit is measured only after rank 0 claimed it (:func:`store.claim`, the decision
      broadcast to every rank); a unit another live worker measures is left to it (``busy``).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import sqlalchemy
import torch

from cnas_hpc.common.errors import StudyError
from cnas_hpc.common.objectives import is_zero_cost
from cnas_hpc.config.fidelity import FidelitySettings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.labeled import LabeledData, load_labeled
from cnas_hpc.data.splits import SearchData, make_search_data
from cnas_hpc.distributed.collectives import broadcast_object
from cnas_hpc.distributed.env import (
    DistEnv,
    distributed_session,
    select_device,
    size_cpu_threads,
)
from cnas_hpc.fidelity import store
from cnas_hpc.fidelity.cells import FidelityCell, fidelity_cells
from cnas_hpc.fidelity.measure import measure
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.storage import connect_engine
from cnas_hpc.train.memory import release_memory
from cnas_hpc.train.outcome import TrainingAbortedError

log = logging.getLogger(__name__)


@dataclass
class FidelityPlan:
    """The cells of a study and, per cell, its measurements (rows of the table)."""

    cells: list[FidelityCell]
    accuracy: dict[str, store.Measurement] = field(default_factory=dict)
    scores: dict[str, list[store.Measurement]] = field(default_factory=dict)
    zero_cost: dict[str, list[store.Measurement]] = field(default_factory=dict)

    @property
    def measurements(self) -> list[store.Measurement]:
        """Every measurement, cell by cell (accuracy, zero-cost, then scores by seed)."""
        out = []
        for cell in self.cells:
            out.append(self.accuracy[cell.genotype_hash])
            out += self.zero_cost.get(cell.genotype_hash, [])
            out += self.scores.get(cell.genotype_hash, [])
        return out


def planned_units(settings: FidelitySettings) -> tuple[list[FidelityCell], list[store.Unit]]:
    """The study's cells and its measurements, in a fixed order (no database needed)."""
    cells = fidelity_cells(settings.fidelity, encoding_from_config(settings.search.space))
    kinds = [
        (store.ACCURACY, settings.accuracy_fingerprint(), False),
        (store.ZERO_COST, settings.zero_cost_fingerprint(), True),
    ]
    if not is_zero_cost(settings.search.search.objective):
        kinds.append((store.SCORE, settings.score_fingerprint(), True))
    seed = settings.search.seed
    units = []
    for index, cell in enumerate(cells):
        extra = settings.fidelity.noise_seeds if index < settings.fidelity.noise_cells else 0
        for kind, (decisive, digest), noisy in kinds:
            text = json.dumps(decisive, sort_keys=True, default=str)
            for k in range(1 + (extra if noisy else 0)):
                units.append(
                    store.Unit(kind, digest, text, cell.genotype_hash, cell.genotype_json, seed + k)
                )
    return cells, units


def plan_units(engine: sqlalchemy.Engine, settings: FidelitySettings) -> FidelityPlan:
    """Insert the missing measurements of the study; return its plan."""
    store.create_table(engine)
    cells, units = planned_units(settings)
    rows = store.plan(engine, units)
    plan = FidelityPlan(cells)
    for row in rows:
        if row.kind == store.ACCURACY:
            plan.accuracy[row.genotype_hash] = row
        elif row.kind == store.ZERO_COST:
            plan.zero_cost.setdefault(row.genotype_hash, []).append(row)
        else:
            plan.scores.setdefault(row.genotype_hash, []).append(row)
    return plan


@dataclass
class FidelityReport:
    """What one task did (the same on every rank)."""

    made: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    #: units another live worker measures (or measured meanwhile): why each was left
    busy: dict[int, str] = field(default_factory=dict)


def _todo(engine: sqlalchemy.Engine, settings: FidelitySettings) -> list[store.Measurement]:
    store.create_table(engine)
    if settings.fidelity.unit is not None:
        unit = store.get(engine, settings.fidelity.unit)
        if unit is None:
            raise StudyError(f"fidelity.unit={settings.fidelity.unit} is not a planned measurement")
        return [] if unit.state == store.COMPLETE else [unit]
    plan = plan_units(engine, settings)
    return [m for m in plan.measurements if m.state != store.COMPLETE]


class _Data:
    """The two views of the data, loaded once each and only when a unit needs them."""

    def __init__(self, settings: FidelitySettings) -> None:
        self.settings = settings
        self._search: SearchData | None = None
        self._labeled: LabeledData | None = None

    def search(self) -> SearchData:
        if self._search is None:
            cfg = self.settings.search.data
            self._search = make_search_data(load_images(cfg), cfg)
        return self._search

    def labeled(self) -> LabeledData:
        if self._labeled is None:
            self._labeled = load_labeled(self.settings.accuracy_data())
        return self._labeled


def _needs_labels(unit: store.Measurement, settings: FidelitySettings) -> bool:
    return unit.kind == store.ACCURACY and settings.fidelity.reference is None


def _make(
    unit: store.Measurement,
    settings: FidelitySettings,
    env: DistEnv,
    device: torch.device,
    engine: sqlalchemy.Engine | None,
    data: _Data,
    max_threads: int,
) -> str | None:
    """Make one unit on every rank; rank 0 records it. Returns the failure reason, if any."""
    started = time.perf_counter()
    try:
        result = measure(
            unit,
            settings,
            device,
            search_data=data.search() if unit.kind in (store.SCORE, store.ZERO_COST) else None,
            labeled_data=data.labeled() if _needs_labels(unit, settings) else None,
            max_threads=max_threads,
        )
    except (TrainingAbortedError, ValueError, RuntimeError) as exc:
        reason = f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}".splitlines()[0]
        log.debug("unit %d failed:\n%s", unit.id, traceback.format_exc())
        log.warning("measurement %d (%s) failed: %s", unit.id, unit.kind, reason)
        if engine is not None:
            store.fail(engine, unit.id, reason=reason, wall_s=time.perf_counter() - started)
        return reason
    finally:
        release_memory(device)
    if engine is not None:
        store.finish(
            engine,
            unit.id,
            value=result.value,
            extra=result.extra,
            params=result.params,
            macs=result.macs,
            wall_s=result.wall_s,
        )
    log.info(
        "measurement %d: %s seed %d = %.4f (%.0f s)",
        unit.id, unit.kind, unit.seed, result.value, result.wall_s,
    )  # fmt: skip
    return None


def _claim(
    engine: sqlalchemy.Engine, settings: FidelitySettings, unit: store.Measurement, env: DistEnv
) -> store.Claim:
    return store.claim(
        engine, unit.id, worker=env.worker_label, grace_s=settings.search.study.grace_period
    )


def _heartbeat(
    engine: sqlalchemy.Engine | None,
    settings: FidelitySettings,
    unit: store.Measurement,
    env: DistEnv,
) -> AbstractContextManager[object]:
    if engine is None:
        return nullcontext()
    return store.heartbeat(
        engine, unit.id, worker=env.worker_label,
        interval=settings.search.study.heartbeat_interval,
    )  # fmt: skip


def run_fidelity(settings: FidelitySettings, env: DistEnv | None = None) -> FidelityReport:
    """Make the measurements this task owns (see the module docstring)."""
    env = env or DistEnv.from_environment()
    device = select_device(env, settings.search.device)
    # The search's thread policy: from the allocation, or train.num_threads when it is set.
    budget = size_cpu_threads(env, settings.search.train.num_threads)
    report = FidelityReport()
    with distributed_session(env, device):
        engine = connect_engine(settings.search.study) if env.is_main else None
        try:
            todo = broadcast_object(_todo(engine, settings) if engine is not None else [])
            data = _Data(settings)
            for unit in todo:
                claim = broadcast_object(_claim(engine, settings, unit, env) if engine else None)
                if claim is not None and not claim.claimed:
                    report.busy[unit.id] = claim.reason
                    log.warning("measurement %d is %s: left to it", unit.id, claim.reason)
                    continue
                with _heartbeat(engine, settings, unit, env):
                    reason = _make(unit, settings, env, device, engine, data, budget.intra_op)
                if reason is None:
                    report.made.append(unit.id)
                else:
                    report.failed[unit.id] = reason
        finally:
            if engine is not None:
                engine.dispose()
    return report
