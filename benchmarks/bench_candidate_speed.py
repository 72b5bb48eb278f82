"""Seconds per candidate of the default search: this tree vs a baseline commit, side by side.

Runs the README's default search (``python launch/search.py``: digits, 5x6 proxy, 2 epochs per
candidate) with the baseline's code (a git worktree of ``--baseline``, 7553a78 = main before
issue 12) and with this tree, in turns (the order rotates every seed), on the same machine in
the same run, each in a fresh ``CNAS_HOME``. All use the same Python environment; each imports
its own ``cnas_hpc`` (``PYTHONPATH`` first). A third version, the baseline with
``train.num_threads=1``, shows what hand-tuning today's code could get (one intra-op thread
avoids oversubscribing a shared CPU), so the gain of the layout alone can be read off.

Per training seed, ``--trials`` trials (default 4 = TPE's random start-up: every version trains
the same cells; ``--trials 8`` is the full default search). Reported:

* seconds per trial (``datetime_complete - datetime_start`` of each trial in the study, i.e.
  claim -> build -> tune -> train -> score -> tell) and the ratio baseline / this tree;
* scores: for each cell trained by both versions with the same seed, the difference of the
  final objective, next to the seed-to-seed spread of the same cell (the noise a result must
  stay within).

    .venv/bin/python benchmarks/bench_candidate_speed.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "7553a78"


def ensure_worktree(commit: str, path: Path) -> Path:
    """A detached git worktree of ``commit`` at ``path`` (created once, reused after)."""
    if not (path / "launch" / "search.py").exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
            check=True,
            capture_output=True,
        )
    return path


def run_search(tree: Path, seed: int, n_trials: int, extra: list[str]) -> dict[str, Any]:
    """One default search with ``tree``'s code (plus ``extra`` overrides); wall time, trials."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CNAS_HOME": home, "PYTHONPATH": str(tree), "WANDB_MODE": "disabled"}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(tree / "launch" / "search.py"), f"seed={seed}",
             f"search.n_trials={n_trials}", *extra],
            cwd=tree, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        storage = f"sqlite:///{home}/cnas.db"
        (name,) = optuna.get_all_study_names(storage)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [
            {
                "number": t.number,
                "arch": t.user_attrs.get("cnas:arch_hash"),
                "value": t.value,
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
                "plan": t.user_attrs.get("cnas:step_plan"),
            }
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if t.datetime_complete is not None and t.datetime_start is not None
        ]
    return {"wall_s": wall, "trials": trials}


def main() -> None:
    """Alternate the two versions over the seeds and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--worktree", type=Path, default=Path("/tmp/cnas-baseline"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument(
        "--noise-seeds", type=int, nargs="*", default=[2, 3],
        help="more seeds run with this tree only, for the seed-to-seed spread (not timed)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    baseline = ensure_worktree(args.baseline, args.worktree)
    versions: dict[str, tuple[Path, list[str]]] = {
        "baseline": (baseline, []),
        "baseline, 1 thread": (baseline, ["train.num_threads=1"]),
        "this tree": (ROOT, []),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for i, seed in enumerate(args.seeds):
        names = list(versions)
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            tree, extra = versions[name]
            result = run_search(tree, seed, args.trials, extra)
            result["seed"] = seed
            runs[name].append(result)
            per = [t["seconds"] for t in result["trials"]]
            print(f"seed {seed} {name}: {len(per)} trials, {statistics.mean(per):.1f} s/trial, "
                  f"{result['wall_s']:.0f} s wall", flush=True)  # fmt: skip
    noise = []
    for seed in args.noise_seeds:
        result = run_search(ROOT, seed, args.trials, [])
        result["seed"] = seed
        noise.append(result)
    report(runs, args, noise)


def report(
    runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, noise: list[dict[str, Any]]
) -> None:
    """Print the per-trial ratio and the score comparison; optionally write the JSON."""
    per_trial = {
        name: statistics.mean(t["seconds"] for r in rs for t in r["trials"])
        for name, rs in runs.items()
    }
    wall = {name: sum(r["wall_s"] for r in rs) for name, rs in runs.items()}
    ratio = per_trial["baseline"] / per_trial["this tree"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; baseline {args.baseline}")
    print("| version | s/trial (mean) | wall of all runs (s) | this tree's speed-up |")
    print("|---|---:|---:|---:|")
    for name in runs:
        speedup = per_trial[name] / per_trial["this tree"]
        print(f"| {name} | {per_trial[name]:.1f} | {wall[name]:.0f} | {speedup:.2f}x |")
    print(f"\nper trial: this tree is **{ratio:.2f}x** the baseline's speed "
          f"(wall of all runs: {wall['baseline'] / wall['this tree']:.2f}x)")  # fmt: skip
    plans = sorted({t["plan"] for r in runs["this tree"] for t in r["trials"] if t["plan"]})
    print(f"plans chosen by measurement: {', '.join(plans)}")
    scores = compare_scores(runs, noise)
    print(
        f"\nscores (same cell, same seed), {scores['pairs']} pairs: median |new - old| = "
        f"{scores['median_abs_diff']:.4f}, max {scores['max_abs_diff']:.4f}; seed-to-seed "
        f"spread of a cell (std over seeds, median over cells): baseline "
        f"{scores['seed_std_baseline']:.4f}, this tree {scores['seed_std_this']:.4f}"
    )
    if args.json is not None:
        payload = {
            "runs": runs, "noise_runs": noise, "per_trial_s": per_trial, "ratio": ratio,
            "scores": scores,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))


def compare_scores(
    runs: dict[str, list[dict[str, Any]]], noise: list[dict[str, Any]]
) -> dict[str, Any]:
    """Same-seed differences vs the seed-to-seed spread of the cells both versions trained."""
    values: dict[str, dict[tuple[str, int], float]] = {}
    for name, rs in runs.items():
        rs = rs + noise if name == "this tree" else rs
        values[name] = {(t["arch"], r["seed"]): t["value"] for r in rs for t in r["trials"]}
    common = sorted(set(values["baseline"]) & set(values["this tree"]))
    diffs = [abs(values["this tree"][k] - values["baseline"][k]) for k in common]

    def seed_std(name: str) -> float:
        by_cell: dict[str, list[float]] = {}
        for (arch, _), value in values[name].items():
            by_cell.setdefault(arch, []).append(value)
        stds = [statistics.stdev(v) for v in by_cell.values() if len(v) >= 2]
        return statistics.median(stds) if stds else float("nan")

    return {
        "pairs": len(common),
        "median_abs_diff": statistics.median(diffs) if diffs else float("nan"),
        "max_abs_diff": max(diffs) if diffs else float("nan"),
        "seed_std_baseline": seed_std("baseline"),
        "seed_std_this": seed_std("this tree"),
    }


if __name__ == "__main__":
    main()
