"""Cost-aware search: a proposal's cost at evaluation size, its constraints, the study's cache.

Contract (rank 0 only; README "Searching under a budget"):
    * A study whose ``search.objectives`` or ``search.constraints`` name a cost measures every
      proposal's evaluation-size network (:mod:`cnas_hpc.train.cost`) BEFORE it is trained:
      ``params`` and ``macs`` first (a second), and only when they break no constraint
      ``latency_ms`` (when used) on ``cost.device``.
    * Measured costs are cached in the study (user attribute ``cnas:cost:<arch hash>``, latency
      per device): a resumed, retried or re-proposed cell is never measured again, by any
      worker. The trial records ``cnas:cost_cached``.
    * :meth:`CostCheck.violations` are Optuna's constraint values, one per constraint in the
      order of ``search.constraints`` (feasible iff all <= 0); a latency limit of a cell that
      its params/MACs already refuse is not timed and reads 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnas_hpc.common import attrs
from cnas_hpc.common.objectives import STATIC_COSTS
from cnas_hpc.config import Settings
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import compact_hash
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.train.cost import CellCost, device_label, measure_cost


def cost_key(arch_hash: str) -> str:
    """The study user attribute that caches the costs of the cell with ``arch_hash``."""
    return f"{attrs.COST_CACHE_PREFIX}{arch_hash}"


@dataclass(frozen=True)
class CostCheck:
    """A proposal's costs and what the constraints make of them."""

    cost: CellCost
    violations: list[float]
    device: str
    network: str
    cached: bool

    @property
    def infeasible(self) -> bool:
        """Whether the cell breaks a constraint."""
        return any(v > 0 for v in self.violations)

    def trial_attrs(self, settings: Settings) -> dict[str, Any]:
        """What the trial records (``cnas:cost_*``, and with constraints ``cnas:infeasible``)."""
        recorded: dict[str, Any] = {
            attrs.COST_PARAMS: self.cost.params,
            attrs.COST_MACS: self.cost.macs,
            attrs.COST_DEVICE: self.device,
            attrs.COST_NETWORK: self.network,
            attrs.COST_CACHED: self.cached,
        }
        if self.cost.latency_ms is not None:
            recorded[attrs.COST_LATENCY_MS] = self.cost.latency_ms
        if settings.search.constraints:
            recorded[attrs.INFEASIBLE] = self.infeasible
            recorded[attrs.CONSTRAINTS] = list(settings.search.constraints)
        return recorded


def _violations(cost: CellCost, settings: Settings, *, static_only: bool) -> list[float]:
    found = []
    for limit in settings.search.limits:
        if static_only and limit.name not in STATIC_COSTS:
            found.append(0.0)  # not measured (yet)
        else:
            found.append(limit.violation(cost.value(limit.name)))
    return found


def check_cost(genotype: Genotype, settings: Settings, owner: TrialOwner) -> CostCheck:
    """Measure (or read from the study's cache) the costs of ``genotype``; see the module
    docstring. Rank 0 only."""
    cfg = settings.cost
    device, key = device_label(cfg), cost_key(compact_hash(genotype))
    want_latency = "latency_ms" in settings.search.costs
    cached = owner.cached_cost(key) or {}
    latencies: dict[str, float] = dict(cached.get("latency_ms") or {})
    measured = False
    if "params" in cached and "macs" in cached:
        cost = CellCost(int(cached["params"]), int(cached["macs"]))
    else:
        cost, measured = measure_cost(genotype, cfg, latency=False), True
    violations = _violations(cost, settings, static_only=True)
    if want_latency and not any(v > 0 for v in violations):
        if device not in latencies:
            timed = measure_cost(genotype, cfg, latency=True)
            latencies[device] = float(timed.latency_ms or 0.0)
            measured = True
        cost = CellCost(cost.params, cost.macs, latencies[device])
        violations = _violations(cost, settings, static_only=False)
    if measured:
        owner.cache_cost(key, {"params": cost.params, "macs": cost.macs, "latency_ms": latencies})
    return CostCheck(cost, violations, device, cfg.network_label, cached=not measured)
