"""Paired comparison of two rankings of the same cells: Kendall tau difference with a bootstrap CI.

A tau over 50 cells moves by +-0.1-0.2 between halves of one set, so two rankings are compared on
the SAME resampled cells (one bootstrap draw of cells, both taus on it): the interval of the
difference is much narrower than the two separate intervals suggest.

    python benchmarks/paired_tau.py benchmarks/results/fidelity_reference/contrastive_e1s4.json

reads a ``fidelity.json`` of reference mode and prints tau [CI] of the contrastive losses, NASWOT,
the parameter count and the per-cell rank mean of each contrastive loss with NASWOT, then the
paired differences of the rank mean and of the validation loss against parameters and NASWOT.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

#: Objectives where lower is better (losses); every ranking is turned "higher is better".
LOWER_IS_BETTER = {"val_contrastive_loss", "train_contrastive_loss"}

Ranking = Callable[[Sequence[dict[str, Any]]], np.ndarray]


def objective(name: str) -> Ranking:
    sign = -1.0 if name in LOWER_IS_BETTER else 1.0

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.array([sign * float(r["objectives"][name]) for r in rows])

    return values


def seed_mean(name: str) -> Ranking:
    """``name`` averaged over every seed the cell was scored under (a larger, costlier tier)."""
    sign = -1.0 if name in LOWER_IS_BETTER else 1.0

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.array([sign * float(np.mean(r["seeds"][name])) for r in rows])

    return values


def seed_value(name: str, index: int) -> Ranking:
    """``name`` under the cell's ``index``-th seed (0: the search's seed)."""
    sign = -1.0 if name in LOWER_IS_BETTER else 1.0

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.array([sign * float(r["seeds"][name][index]) for r in rows])

    return values


def seed_rank_mean(index: int) -> Ranking:
    """The rank mean of the validation loss under seed ``index`` and NASWOT."""

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.mean(
            [
                stats.rankdata(seed_value("val_contrastive_loss", index)(rows)),
                stats.rankdata(objective("naswot")(rows)),
            ],
            axis=0,
        )

    return values


def params(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([float(r["params"]) for r in rows])


def rank_mean(*names: str) -> Ranking:
    """The mean rank over ``names`` among the given cells (recomputed on every resample)."""

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.mean([stats.rankdata(objective(n)(rows)) for n in names], axis=0)

    return values


def screened(screen: str, score: str, keep: float = 0.5) -> Ranking:
    """A two-stage search's order: cells below the ``1 - keep`` quantile of ``screen`` rank below
    every kept cell (never trained: ties among themselves); kept cells are ranked by ``score``."""

    def values(rows: Sequence[dict[str, Any]]) -> np.ndarray:
        first = stats.rankdata(objective(screen)(rows)) / len(rows)
        second = stats.rankdata(objective(score)(rows))
        return np.where(first > 1.0 - keep, len(rows) + second, 0.0)

    return values


def tau(rows: Sequence[dict[str, Any]], ranking: Ranking) -> float:
    accuracy = np.array([float(r["accuracy"]) for r in rows])
    return float(stats.kendalltau(ranking(rows), accuracy).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("fidelity_json", type=Path)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = json.loads(args.fidelity_json.read_text())
    rows = [
        r
        for r in report["rows"]
        if r["accuracy"] is not None
        and all(r["objectives"].get(n) is not None for n in ("val_contrastive_loss", "naswot"))
    ]
    rankings: dict[str, Ranking] = {
        "val_contrastive_loss": objective("val_contrastive_loss"),
        "train_contrastive_loss": objective("train_contrastive_loss"),
        "naswot": objective("naswot"),
        "params": params,
        "rank mean val + naswot": rank_mean("val_contrastive_loss", "naswot"),
        "rank mean train + naswot": rank_mean("train_contrastive_loss", "naswot"),
        "screen naswot, then val": screened("naswot", "val_contrastive_loss"),
        "rank mean val + params": lambda rs: np.mean(
            [stats.rankdata(objective("val_contrastive_loss")(rs)), stats.rankdata(params(rs))],
            axis=0,
        ),
    }
    seeds = min(len(r["seeds"].get("val_contrastive_loss", [])) for r in rows)
    if seeds > 1:  # every cell scored under several seeds (fidelity.noise_cells >= all cells)
        rankings[f"val, mean of {seeds} seeds"] = seed_mean("val_contrastive_loss")
        rankings[f"rank mean val ({seeds} seeds) + naswot"] = lambda rs: np.mean(
            [
                stats.rankdata(seed_mean("val_contrastive_loss")(rs)),
                stats.rankdata(objective("naswot")(rs)),
            ],
            axis=0,
        )
        for s in range(1, seeds):  # the default under another seed: how much of its tau is seed
            rankings[f"val (seed +{s})"] = seed_value("val_contrastive_loss", s)
            rankings[f"rank mean val (seed +{s}) + naswot"] = seed_rank_mean(s)
    rng = np.random.default_rng(args.seed)
    draws = [rng.integers(0, len(rows), len(rows)) for _ in range(args.bootstrap)]
    boot = {n: np.array([tau([rows[i] for i in d], f) for d in draws]) for n, f in rankings.items()}
    print(f"{args.fidelity_json}: {len(rows)} cells, {args.bootstrap} paired resamples")
    for name, ranking in rankings.items():
        low, high = np.nanpercentile(boot[name], [2.5, 97.5])
        print(f"  tau {name:28s} {tau(rows, ranking):+.3f} [{low:+.3f}, {high:+.3f}]")
    for better in ("rank mean val + naswot", "val_contrastive_loss"):
        for rival in ("params", "naswot"):
            diff = boot[better] - boot[rival]
            point = tau(rows, rankings[better]) - tau(rows, rankings[rival])
            low, high = np.nanpercentile(diff, [2.5, 97.5])
            print(f"  {better} - {rival}: {point:+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
