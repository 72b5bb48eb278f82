"""``launch/compare_samplers.py``: equal budgets, several seeds, one report; reruns resume."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from cnas_hpc.cli.compare_samplers import main as compare_main
from tests.helpers import run_here, run_launch

QUICK = (
    "debug=tiny",
    "compare.n_trials=3",
    "compare.seeds=[0,1]",
    "compare.methods=[tpe-compact,random-compact,tpe-csnas]",
    "train.max_steps_per_epoch=1",
)


def test_every_method_and_seed_runs_its_budget_and_the_report_compares_them(
    tmp_path: Path,
) -> None:
    # One CPU allotted, as to an array task: every run's worker sizes its threads from it.
    env = {"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "1"}
    result = run_launch("compare_samplers.py", list(QUICK), home=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    one_cpu = "torch uses 1 intra-op / 1 inter-op thread(s) (1 CPU(s) from SLURM_CPUS_PER_TASK=1)"
    assert one_cpu in result.stdout + result.stderr
    storage = f"sqlite:///{tmp_path / 'cnas.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == [
        "compare-random-compact-s0", "compare-random-compact-s1",
        "compare-tpe-compact-s0", "compare-tpe-compact-s1",
        "compare-tpe-csnas-s0", "compare-tpe-csnas-s1",
    ]  # fmt: skip
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 3
    report = json.loads((tmp_path / "compare" / "compare" / "comparison.json").read_text())
    assert [m["method"] for m in report["methods"]] == [
        "tpe-compact",
        "random-compact",
        "tpe-csnas",
    ]
    assert all(m["seeds"] == 2 and len(m["curve_mean"]) == 3 for m in report["methods"])
    assert (tmp_path / "compare" / "compare" / "best_so_far.png").stat().st_size > 0
    assert "trials to target" in result.stdout


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("compare.methods=[bayes-compact]", "'bayes-compact' is not <sampler>-<encoding>"),
        # samplers are compared on the best value of ONE score over time
        ("search.objectives=[score,naswot]", "set search.objectives=[]"),
    ],
)
def test_bad_input_is_refused_with_one_line(tmp_path: Path, override: str, needle: str) -> None:
    # In this process (run_here): a refusal ends before any work.
    result = run_here("compare_samplers.py", compare_main, [*QUICK, override], home=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0]
    assert not (tmp_path / "cnas.db").exists()  # refused before any study was made
