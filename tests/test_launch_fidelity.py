"""``launch/fidelity.py`` as a user runs it: a tiny study, its report, reuse on a larger rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnas_hpc.cli.fidelity import main as fidelity_main
from cnas_hpc.space.genotype import PRESETS, genotype_to_dict
from tests.helpers import run_here, run_launch, thread_counts_set

#: A toy study on the embedded digits: a few steps per measurement. The scores train under one
#: fixed step plan (``train.perf=nchw``, which no score depends on): no layout or thread count is
#: measured per cell (a fifth of a run's CPU).
QUICK = (
    "debug=tiny",
    "train.perf=nchw",
    "fidelity.presets=[DARTS_V2]",
    "fidelity.noise_cells=1",
    "fidelity.noise_seeds=2",
    "fidelity.bootstrap=100",
    "protocol.cells=3",
    "protocol.channels=4",
    "protocol.epochs=2",
    "protocol.max_steps_per_epoch=3",
    "protocol.amp=none",
    "protocol.memory_format=contiguous",
)
#: One CPU allotted, as to an array task on a shared node: the app sizes torch's threads from it.
ENV = {"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "1"}
#: What the one CPU-thread policy (``distributed.env.size_cpu_threads``) logs for that allocation.
ONE_CPU = "torch uses 1 intra-op / 1 inter-op thread(s) (1 CPU(s) from SLURM_CPUS_PER_TASK=1)"


def _made(output: str) -> list[str]:
    return re.findall(r"measurement \d+: (\w+ seed \d+)", output)


@pytest.mark.cost(80)
def test_a_study_reports_and_a_larger_rerun_measures_only_the_new_cells(tmp_path: Path) -> None:
    first = run_launch("fidelity.py", [*QUICK, "fidelity.n_random=3"], home=tmp_path, env=ENV)
    logs = first.stdout + first.stderr
    assert first.returncode == 0, logs[-3000:]
    assert ONE_CPU in logs  # threads from the allocation, not from the node's cores
    # 4 cells: an accuracy, zero-cost proxies and a score each, and 2 extra seeds for the first
    # cell's score and zero-cost proxies.
    assert len(_made(logs)) == 4 * 3 + 2 + 2
    (folder,) = (tmp_path / "fidelity").iterdir()
    report = json.loads((folder / "fidelity.json").read_text())
    assert report["n_cells"] == 4 and report["n_measured"] == 4
    assert -1.0 <= report["tau"]["value"] <= 1.0 and report["tau"]["low"] <= report["tau"]["high"]
    assert report["noise_std"] is not None
    assert {r["name"] for r in report["rankings"]} >= {
        "val_contrastive_loss", "naswot", "synflow", "params", "MACs"
    }  # fmt: skip
    for name in ("scatter.png", "tau_vs_cost.png", "tau_by_epoch.png", "index.html", "summary.txt"):
        assert (folder / name).stat().st_size > 0
    assert "Kendall tau" in first.stdout
    # The reruns in this process (run_here): the first run went through a real one.
    again = run_here(
        "fidelity.py", fidelity_main, [*QUICK, "fidelity.n_random=5"], home=tmp_path, env=ENV
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert len(_made(again.stdout + again.stderr)) == 2 * 3  # two new cells, three units each
    assert json.loads((folder / "fidelity.json").read_text())["n_cells"] == 6
    # Another objective reuses every accuracy: only the scores are new.
    other = run_here(
        "fidelity.py", fidelity_main, [*QUICK, "fidelity.n_random=5", "train.loss=membank_nce"],
        home=tmp_path, env=ENV,
    )  # fmt: skip
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert all(m.startswith("score") for m in _made(other.stdout + other.stderr))


def _reference_file(path: Path) -> Path:
    """A ground-truth file of four cells in the format of ../shared/data/darts_ground_truth."""
    genotypes = [PRESETS[name] for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS", "SNAS")]
    cells = [
        {
            "name": f"cell{i}",
            "genotype": genotype_to_dict(g),
            "cifar10_test_acc": 96.0 + 0.3 * i,
            "cheap_settings_acc": {"Task1": 60.0 + i, "Task2": 70.0 - i},
        }
        for i, g in enumerate(genotypes)
    ]
    settings = {
        "Task1": {"epoch": "10", "n_layers": "6", "MeanTime(GPU Hours)": "0.1"},
        "Task2": {"epoch": "100", "n_layers": "6", "MeanTime(GPU Hours)": "0.9"},
    }
    path.write_text(json.dumps({"source": "test", "settings": settings, "cells": cells}))
    return path


def _reference_args(tmp_path: Path, *extra: str) -> list[str]:
    """A reference-mode study of :func:`_reference_file`'s cells, counted at a toy size."""
    reference = _reference_file(tmp_path / "truth.json")
    return [
        "debug=tiny", f"fidelity.reference={reference}", "fidelity.bootstrap=100",
        "fidelity.reference_cells=3", "fidelity.reference_channels=4", *extra,
    ]  # fmt: skip


@pytest.mark.cost(25)
def test_reference_mode_ranks_against_the_files_accuracies(tmp_path: Path) -> None:
    args = _reference_args(
        tmp_path, "fidelity.noise_cells=1", "fidelity.noise_seeds=1", "search.objective=naswot"
    )
    first = run_launch("fidelity.py", args, home=tmp_path, env=ENV)
    logs = first.stdout + first.stderr
    assert first.returncode == 0, logs[-3000:]
    # No training at all: an accuracy read from the file and zero-cost proxies per cell.
    assert sorted(set(m.split()[0] for m in _made(logs))) == ["accuracy", "zero_cost"]
    assert len(_made(logs)) == 4 * 2 + 1
    (folder,) = (tmp_path / "fidelity").iterdir()
    report = json.loads((folder / "fidelity.json").read_text())
    rankings = {r["name"]: r for r in report["rankings"]}
    # The file's own rankings, with their cost: Task1 agrees with accuracy, Task2 reverses it.
    assert rankings["Task1"]["tau"]["value"] == pytest.approx(1.0)
    assert rankings["Task2"]["tau"]["value"] == pytest.approx(-1.0)
    assert rankings["Task1"]["cost_s"] == pytest.approx(360.0) and rankings["Task1"]["labels"]
    assert not rankings["naswot"]["labels"] and rankings["naswot"]["cost_s"] > 0
    assert [r["accuracy"] for r in report["rows"]] == pytest.approx([0.96, 0.963, 0.966, 0.969])
    assert "Task1" in first.stdout and "cost per cell" in first.stdout
    # The rerun makes nothing: in this process (run_here), a process start would prove no more.
    again = run_here("fidelity.py", fidelity_main, args, home=tmp_path, env=ENV)
    logs = again.stdout + again.stderr
    assert again.returncode == 0, logs[-3000:]
    assert "4 cells, 9 measurements, 0 to make" in logs and _made(logs) == []  # all reused


def test_a_task_given_one_cpu_scores_its_cells_on_one_thread(tmp_path: Path) -> None:
    # Whatever the node's cores (8 here), a task allotted one CPU scores every cell on one
    # thread: the score's step-plan measurement (train.perf=auto) chooses within the allocation,
    # as a search trial's does. In this process (run_here), where the node's cores can be faked.
    args = _reference_args(tmp_path, "fidelity.noise_cells=0", "train.perf=auto")
    with thread_counts_set(node_cores=8) as threads:
        result = run_here("fidelity.py", fidelity_main, args, home=tmp_path, env=ENV)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-3000:]
    assert sum(m.startswith("score") for m in _made(logs)) == 4  # the contrastive score trained
    assert threads and set(threads) == {1}, threads


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["fidelity.n_random=1", "fidelity.presets=[]"], "at least 3 cells"),
        (["fidelity.presets=[NOPE]"], "unknown preset 'NOPE'"),
        (["data=npz", "data.path=UNLABELED"], "has no labels"),
        (["fidelity.reference=MISSING.json"], "MISSING.json not found"),
        (["fidelity.reference=UNLABELED"], "does not parse"),
    ],
)
def test_bad_input_is_refused_with_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, images=np.zeros((64, 8, 8, 3), dtype=np.uint8))
    args = [*QUICK, *(a.replace("UNLABELED", str(unlabeled)) for a in extra)]
    # In this process (run_here): a refusal ends before any work; the tests above start the
    # real command.
    result = run_here("fidelity.py", fidelity_main, ["-m", *args], home=tmp_path)
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
