"""Cost-aware search: a constrained search against an unconstrained one at equal budget.

On CIFAR-10 (the npz sample), with a small proxy and a small share of the images so a trial is
a few CPU-seconds, each ``--seeds`` value (``study.sampler.seed``) runs ``launch/search.py``
twice with ``search.objectives=[score,params]`` and ``--n-trials`` COMPLETE trials:

* ``unconstrained``: no constraint: every proposal is trained, whatever its size;
* ``constrained``: ``search.constraints=[params<=LIMIT]``: a cell over the limit (params of the
  20 x 36 CIFAR evaluation network) is told PRUNED untrained, TPE learns to avoid such cells.

Reported per run: trained trials whose cell breaks the limit (the budget spent on cells a user
cannot deploy), proposals refused untrained, the best score (validation NT-Xent, lower is
better) among feasible cells, the Pareto front (Optuna's ``study.best_trials``; feasible cells
only when constrained) and its spread (its cells, and the range of params and score along it),
and the run's wall time. The zero-cost screen and the recorded zero-cost proxies are off, so
the only difference between the two searches is the constraint.

    nice -n 5 .venv/bin/python benchmarks/cost_aware_search.py \
        --data /work/shared/data/cifar10/cifar10_train_10k.npz [--seeds 0 1 2] [--n-trials 8] \
        [--limit 2.6e6] [--json benchmarks/results/cost_aware_search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]

#: The small search every run shares (a few CPU-seconds per trial on the 2-core machine).
PROXY = (
    "data=npz",
    "data.fraction=0.1",  # 1,000 of the sample's 10,000 images (100 held out)
    "model.cells=3",
    "model.channels=8",
    "train.epochs=1",
    "train.batch_size=64",
    "train.max_steps_per_epoch=8",
    "search.screen=none",
    "zero_cost.record=false",
    "search.poll_seconds=0.5",
)


def run_search(mode: str, seed: int, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """One search; returns its measurements."""
    name = f"cost-{mode}-s{seed}"
    overrides = [
        *PROXY,
        f"data.path={args.data}",
        "search.objectives=[score,params]",
        f"search.n_trials={args.n_trials}",
        f"study.sampler.seed={seed}",
        f"study.name={name}",
    ]
    if mode == "constrained":
        overrides.append(f"search.constraints=[params<={args.limit:g}]")
    env = {**os.environ, "CNAS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "search.py"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{home}/cnas.db")
    return measure(study, args.limit) | {"mode": mode, "seed": seed, "wall_s": round(wall_s, 1)}


def measure(study: optuna.Study, limit: float) -> dict[str, Any]:
    """What one finished study shows (see the module docstring)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    feasible = [t for t in complete if t.values[1] <= limit]
    front = [t for t in study.best_trials if t.values[1] <= limit]  # what a user could deploy
    params = [t.values[1] for t in front]
    scores = [t.values[0] for t in front]
    return {
        "complete": len(complete),
        "trained_infeasible": len(complete) - len(feasible),
        "refused_untrained": sum(bool(t.user_attrs.get("cnas:infeasible")) for t in pruned),
        "best_feasible_score": min((t.values[0] for t in feasible), default=None),
        "front_cells": len(front),
        "front_params_range": [min(params), max(params)] if front else None,
        "front_score_range": [min(scores), max(scores)] if front else None,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean over seeds of each number, per mode."""
    out: dict[str, dict[str, float | None]] = {}
    for mode in ("unconstrained", "constrained"):
        mine = [r for r in runs if r["mode"] == mode]
        keys = ("trained_infeasible", "refused_untrained", "front_cells", "wall_s")
        row: dict[str, float | None] = {
            k: round(statistics.mean(r[k] for r in mine), 2) for k in keys
        }
        best = [r["best_feasible_score"] for r in mine if r["best_feasible_score"] is not None]
        row["best_feasible_score"] = round(statistics.mean(best), 4) if best else None
        row["seeds_with_a_feasible_cell"] = len(best)
        out[mode] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--limit", type=float, default=2.6e6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for mode in ("unconstrained", "constrained"):
                run = run_search(mode, seed, args, Path(folder))
                print(json.dumps(run), flush=True)
                runs.append(run)
    result = {
        "settings": {
            "data": args.data.name,
            "proxy": list(PROXY),
            "objectives": ["score (val_contrastive_loss)", "params (20x36 CIFAR network)"],
            "limit_params": args.limit,
            "n_trials": args.n_trials,
            "seeds": args.seeds,
            "load_average_at_end": os.getloadavg()[0],
        },
        "runs": runs,
        "mean": summary(runs),
    }
    print(json.dumps(result["mean"], indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
