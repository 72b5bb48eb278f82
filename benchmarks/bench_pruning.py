"""Does an early epoch rank candidates like the last one, and what does pruning save?

Measured on CIFAR-10 (the npz sample), the small proxy, the CPU:

1. For each seed, ``--cells`` random cells of the search space (Optuna's random sampler over
   the compact encoding) are trained ``--epochs`` epochs each with the real training code
   (``train_candidate``, validation NT-Xent after every epoch, as a search reports it).
2. Kendall tau between each epoch's score and the last epoch's score, over the cells.
3. Replays of a search over those recorded curves, through the project's pruners
   (:func:`cnas_hpc.study.pruner.make_pruner` with the default settings) in a real Optuna
   study, for ``--orderings`` random orders of the cells: a search without pruning trains
   ``--budget`` candidates to the end; a search with pruning goes on through the cells until
   one COMPLETE candidate scores at least as well as the best of the unpruned search. Reported:
   candidate-epochs each needed (the GPU-hours proxy), their ratio, and how often the pruned
   search reached that score at all within the cells.

    .venv/bin/python benchmarks/bench_pruning.py \
        --data ../shared/data/cifar10/cifar10_train_10k.npz [--seeds 0 1] [--cells 16] \
        [--epochs 4] [--fraction 0.2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from scipy.stats import kendalltau
from search_settings import compose_search_settings

from cnas_hpc.config import Settings
from cnas_hpc.config.search import SearchConfig
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.encoding import compact_hash, encoding_from_config
from cnas_hpc.study.pruner import make_pruner
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.outcome import EpochMetrics, TrainingAbortedError

ROOT = Path(__file__).resolve().parents[1]
#: The pruners replayed: the defaults of ``search.pruner_*``, and each started one epoch later.
PRUNERS: dict[str, SearchConfig] = {
    "median": SearchConfig(pruner="median"),
    "median, from epoch 2": SearchConfig(pruner="median", pruner_warmup_epochs=2),
    "successive_halving": SearchConfig(pruner="successive_halving"),
    "successive_halving, first rung 2": SearchConfig(
        pruner="successive_halving", pruner_min_epochs=2
    ),
    "hyperband": SearchConfig(pruner="hyperband"),
}


def load_settings(overrides: list[str]) -> Settings:
    """The search settings the overrides describe (the real configs, composed by Hydra), with
    one objective: Optuna's pruners judge one value (the measured figures were made so)."""
    return compose_search_settings(["search.objectives=[]", *overrides])


def train_curves(settings: Settings, cells: int, sampler_seed: int) -> list[dict[str, Any]]:
    """Validation loss after every epoch of ``cells`` random cells (diverged cells: inf)."""
    encoding = encoding_from_config(settings.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sampler_seed))
    data = make_search_data(load_images(settings.data), settings.data)
    device = torch.device("cpu")
    out = []
    for i in range(cells):
        genotype = encoding.suggest(study.ask())
        model = build_candidate(genotype, settings.model, settings.seed, device)
        curve: list[float] = []

        def record(metrics: EpochMetrics, curve: list[float] = curve) -> bool:
            curve.append(float(metrics.val_loss if metrics.val_loss is not None else "nan"))
            return False

        started = time.perf_counter()
        try:
            train_candidate(model, data, proxy_task(settings), device, on_epoch=record)
        except TrainingAbortedError:
            curve += [float("inf")] * (settings.train.epochs - len(curve))
        seconds = time.perf_counter() - started
        out.append({"cell": compact_hash(genotype), "curve": curve, "seconds": seconds})
        print(f"  cell {i}: {' '.join(f'{v:.4f}' for v in curve)} ({seconds:.0f} s)", flush=True)
    return out


def kendall_by_epoch(curves: list[list[float]]) -> list[float]:
    """Kendall tau of each epoch's scores vs the last epoch's, over the cells."""
    last = [c[-1] for c in curves]
    taus = []
    for k in range(len(curves[0])):
        tau = kendalltau([c[k] for c in curves], last).statistic
        taus.append(float(tau))
    return taus


def replay(
    curves: list[list[float]], order: list[int], pruner: SearchConfig | None
) -> list[tuple[int, float]]:
    """A search over ``curves`` in ``order``; after each trial (epochs spent, best COMPLETE)."""
    epochs = len(curves[0])
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=make_pruner(pruner or SearchConfig(), epochs),
    )
    spent, best, trace = 0, float("inf"), []
    for index in order:
        trial = study.ask()
        pruned = False
        for epoch, value in enumerate(curves[index], start=1):
            spent += 1
            trial.report(value, epoch)
            # As the search does: the pruner is not asked after the last epoch.
            if pruner is not None and epoch < epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            study.tell(trial, curves[index][-1])
            best = min(best, curves[index][-1])
        trace.append((spent, best))
    return trace


def savings(curves: list[list[float]], budget: int, orderings: int, seed: int) -> dict[str, Any]:
    """Candidate-epochs for the same best score, with and without each pruner (see module doc)."""
    rng = random.Random(seed)
    epochs = len(curves[0])
    result: dict[str, Any] = {}
    for name, pruner in PRUNERS.items():
        ratios, reached, spent_pruned = [], 0, []
        for _ in range(orderings):
            order = rng.sample(range(len(curves)), len(curves))
            target = min(curves[i][-1] for i in order[:budget])  # the unpruned search's best
            trace = replay(curves, order, pruner)
            hit = next((spent for spent, best in trace if best <= target), None)
            if hit is not None:
                reached += 1
                ratios.append(budget * epochs / hit)
                spent_pruned.append(hit)
        result[name] = {
            "unpruned_epochs": budget * epochs,
            "median_pruned_epochs": statistics.median(spent_pruned) if spent_pruned else None,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "reached": reached / orderings,
        }
    return result


def whole_pool(curves: list[list[float]], orderings: int, seed: int) -> dict[str, Any]:
    """All cells through each pruner: epochs spent and whether the best cell survived."""
    rng = random.Random(seed)
    best_cell = min(range(len(curves)), key=lambda i: curves[i][-1])
    result: dict[str, Any] = {}
    for name, pruner in PRUNERS.items():
        spent, kept_best = [], 0
        for _ in range(orderings):
            order = rng.sample(range(len(curves)), len(curves))
            trace = replay(curves, order, pruner)
            spent.append(trace[-1][0])
            kept_best += trace[-1][1] == curves[best_cell][-1]
        result[name] = {
            "epochs": statistics.mean(spent),
            "of": len(curves) * len(curves[0]),
            "best_kept": kept_best / orderings,
        }
    return result


def main() -> None:
    """Train the pools, measure, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/cifar10/cifar10_train_10k.npz"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--budget", type=int, default=8, help="COMPLETE trials of a search")
    parser.add_argument("--orderings", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--curves", type=Path, default=None,
        help="replay the curves of an earlier --json instead of training again",
    )  # fmt: skip
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "seeds": {}}
    with tempfile.TemporaryDirectory() as home:
        for seed in args.seeds:
            settings = load_settings([
                "data=npz", f"data.path={args.data.resolve()}", f"data.fraction={args.fraction}",
                f"train.epochs={args.epochs}", f"seed={seed}", f"output_dir={home}",
            ])  # fmt: skip
            if args.curves is not None:
                pool = json.loads(args.curves.read_text())["seeds"][str(seed)]["pool"]
            else:
                print(f"seed {seed}: {args.cells} cells x {args.epochs} epochs", flush=True)
                pool = train_curves(settings, args.cells, sampler_seed=1000 + seed)
            curves = [p["curve"] for p in pool]
            results["seeds"][seed] = {
                "pool": pool,
                "kendall_tau": kendall_by_epoch(curves),
                "same_best": savings(curves, args.budget, args.orderings, seed),
                "whole_pool": whole_pool(curves, args.orderings, seed),
            }
    print_tables(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


def print_tables(results: dict[str, Any]) -> None:
    """The markdown tables of RESULTS.md."""
    seeds = results["seeds"]
    first = next(iter(seeds.values()))
    epochs = len(first["kendall_tau"])
    print("\n| seed | " + " | ".join(f"tau(epoch {k + 1}, last)" for k in range(epochs - 1)) + " |")
    print("|---|" + "---:|" * (epochs - 1))
    for seed, r in seeds.items():
        print(f"| {seed} | " + " | ".join(f"{t:.2f}" for t in r["kendall_tau"][:-1]) + " |")
    print("\n| seed | pruner | epochs without pruning | epochs with (median) | ratio (median) "
          "| same best reached |\n|---|---|---:|---:|---:|---:|")  # fmt: skip
    for seed, r in seeds.items():
        for pruner, s in r["same_best"].items():
            ratio = f"{s['median_ratio']:.2f}x" if s["median_ratio"] else "-"
            print(f"| {seed} | {pruner} | {s['unpruned_epochs']} | {s['median_pruned_epochs']} "
                  f"| {ratio} | {s['reached']:.0%} |")  # fmt: skip
    print("\n| seed | pruner | epochs for all cells | best cell kept |\n|---|---|---:|---:|")
    for seed, r in seeds.items():
        for pruner, s in r["whole_pool"].items():
            print(f"| {seed} | {pruner} | {s['epochs']:.1f} of {s['of']} | {s['best_kept']:.0%} |")
    spent = sum(p["seconds"] for r in seeds.values() for p in r["pool"])
    print(f"\ntraining time of all cells: {spent / 60:.1f} min")


if __name__ == "__main__":
    main()
