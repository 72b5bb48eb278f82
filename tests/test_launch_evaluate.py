"""``launch/evaluate.py`` as a user runs it: a search's best cells beside a preset, end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from cnas_hpc.cli.evaluate import main as evaluate_main
from cnas_hpc.cli.report import main as report_main
from tests.helpers import (
    QUICK_EVAL,
    ROOT,
    TINY,
    query_rows,
    run_evaluate,
    run_here,
    run_search,
    thread_counts_set,
)
from tests.mo_studies import SCORE_PARAMS, Cell, make_study
from tests.wandb_offline import offline_runs

STUDY = "cnas-digits-compact"
#: One CPU allotted, as to an array task on a shared node: the app sizes torch's threads from it.
ENV = {"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "1"}
#: What the one CPU-thread policy (``distributed.env.size_cpu_threads``) logs for that allocation.
ONE_CPU = "torch uses 1 intra-op / 1 inter-op thread(s) (1 CPU(s) from SLURM_CPUS_PER_TASK=1)"
#: One training step per cell: what these tests check (which cells are trained, where and how
#: they are recorded) does not depend on how long a cell trains (~0.4 CPU-s a step here).
ONE_STEP = ("protocol.epochs=1", "protocol.max_steps_per_epoch=1")


#: The source study: a zero-cost search (NASWOT), whose trials train nothing: what an evaluation
#: reads of a study (its trials' cells, ranked by their value) is the same for any objective, and
#: a contrastive search cost 9 CPU-s more.
SOURCE = (*TINY, "search.objective=naswot")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("evaluate")
    result = run_search([*SOURCE, "search.n_trials=3"], home=home, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return home


@pytest.mark.cost(40)
def test_the_best_trials_are_trained_beside_a_preset_and_recorded_where_users_look(
    searched: Path,
) -> None:
    args = [*QUICK_EVAL, *ONE_STEP, f"eval.from_study={STUDY}", "eval.top_k=2",
            "eval.presets=[DARTS_V2]"]  # fmt: skip
    result = run_evaluate(args, home=searched, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    name = f"{STUDY}-debug-supervised"
    assert f"Evaluation '{name}'" in result.stdout and "DARTS_V2" in result.stdout
    assert ONE_CPU in result.stdout + result.stderr  # threads from the allocation, not the node
    results = searched / "evaluations" / name
    csv_rows = (results / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and all(",COMPLETE," in row for row in csv_rows[1:])
    assert "| DARTS_V2" in (results / "results.md").read_text()
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{searched / 'cnas.db'}")
    evaluated = [t for t in study.trials if f"cnas:eval/{name}" in t.user_attrs]
    assert len(evaluated) == 2
    record = evaluated[0].user_attrs[f"cnas:eval/{name}"]
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["protocol"] == "debug"
    # The study report shows them too. It and the rerun read what the command wrote: in this
    # process (run_here), a process start each would prove nothing more.
    report = run_here("report.py", report_main, [*SOURCE, "report.pictures=false"], home=searched)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "evaluations (2 cell(s) of this study" in report.stdout
    # A rerun trains nothing again.
    again = run_here("evaluate.py", evaluate_main, args, home=searched, env=ENV)
    logs = again.stdout + again.stderr
    assert again.returncode == 0 and logs.count("already evaluated: skipped") == 3


def test_the_label_free_probe_gives_a_number_without_training_on_labels(searched: Path) -> None:
    args = [
        *QUICK_EVAL, "eval.presets=[PC_DARTS]", "eval.method=probe", "probe.cells=3",
        "probe.channels=4", "probe.epochs=1", "probe.batch_size=64", "probe.linear_epochs=10",
        # A fifth of the digits (323 images, 5 steps): both probes still score far above zero
        # (kNN ~57 %, linear ~14 % here); the whole set cost 8 CPU-s more.
        "data.fraction=0.2",
    ]  # fmt: skip
    # In this process (run_here), where the node's cores can be faked: whatever they are (8
    # here), a task allotted one CPU trains its probe on one thread (the probe's step-plan
    # measurement chooses within the allocation, as a search trial's does).
    with thread_counts_set(node_cores=8) as threads:
        result = run_here("evaluate.py", evaluate_main, args, home=searched, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert threads and set(threads) == {1}, threads
    ((knn, linear, supervised, state),) = query_rows(
        f"sqlite:///{searched / 'cnas.db'}",
        "SELECT probe_knn_accuracy, probe_linear_accuracy, test_accuracy, state "
        "FROM evaluations WHERE name = 'cells-debug-probe'",
    )
    assert state == "COMPLETE" and supervised is None
    assert 0.0 < knn <= 1.0 and 0.0 < linear <= 1.0


def _unlabeled_npz(folder: Path) -> Path:
    path = folder / "unlabeled.npz"
    np.savez(path, images=np.zeros((64, 8, 8, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown-study", "study 'nope' does not exist"),
        ("top-k", "eval.top_k must be an integer > 0"),
        ("bad-file", "does not parse"),
        ("no-labels", "has no labels"),
        ("nothing", "nothing to evaluate"),
    ],
)
def test_bad_input_is_refused_with_one_line_before_anything_runs(
    searched: Path, tmp_path: Path, case: str, needle: str
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"normal": []}))
    extra = {
        "unknown-study": ["eval.from_study=nope"],
        "top-k": [f"eval.from_study={STUDY}", "eval.top_k=0"],
        "bad-file": [f"eval.genotypes=[{broken}]"],
        "no-labels": [
            "eval.presets=[DARTS_V2]",
            "data=npz",
            f"data.path={_unlabeled_npz(tmp_path)}",
        ],
        "nothing": [],
    }[case]
    # In this process (run_here): a refusal ends before any work; the tests above start the
    # real command.
    args = ["-m", *QUICK_EVAL, *extra, "eval.name=refused"]
    result = run_here("evaluate.py", evaluate_main, args, home=searched)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    assert not list(searched.glob("hydra/evaluate/multirun/*/.submitit"))  # nothing queued


def test_each_cell_writes_a_w_and_b_evaluation_run_grouped_with_its_study(
    searched: Path,
) -> None:
    root = searched / "wb"
    # Two epochs (a series to log) of one step each.
    args = [*QUICK_EVAL, "protocol.max_steps_per_epoch=1", f"eval.from_study={STUDY}",
            "eval.top_k=1", "eval.name=tracked", "wandb=offline", f"wandb.dir={root}"]  # fmt: skip
    result = run_evaluate(args, home=searched, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = offline_runs(root)
    assert (run.job_type, run.group, run.name) == ("evaluation", STUDY, run.name)
    assert run.name.startswith("eval-0-") and run.config["evaluation"] == "tracked"
    assert run.summary["state"] == "COMPLETE" and 0.0 <= run.summary["test_accuracy"] <= 1.0
    assert run.series("epoch") == [1, 2]


def _image_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_the_imagenet_mobile_protocol_runs_on_an_image_folder(tmp_path: Path) -> None:
    train = _image_folder(tmp_path / "train", 8, 0)
    val = _image_folder(tmp_path / "val", 4, 1)
    args = [
        "protocol=imagenet_mobile", "protocol.cells=3", "protocol.channels=4",
        "protocol.epochs=1", "protocol.batch_size=8", "protocol.amp=none",
        "protocol.memory_format=contiguous", "data=folder", f"data.root={train}",
        f"data.test_path={val}", "data.image_size=224", "eval.presets=[DARTS_V2]",
    ]  # fmt: skip
    result = run_evaluate(args, home=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "COMPLETE" in result.stdout and "cells-imagenet_mobile-supervised" in result.stdout


@pytest.mark.cost(35)
def test_ctrl_c_checkpoints_the_cell_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    # Enough epochs that Ctrl-C, sent once epoch 1 is checkpointed, lands while the cell trains
    # (an epoch is 4 steps, under a second here; 5 are left: 20 steps); the test split is scored
    # once, at the end. Batches of 32: about half the CPU of 64 a step, as many steps of margin.
    args = [
        *QUICK_EVAL, "protocol.epochs=6", "protocol.test_every_epochs=6",
        "protocol.batch_size=32", "eval.presets=[PC_DARTS]", "eval.name=interrupted",
        "data.fraction=0.5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch" / "evaluate.py"), *args],
        cwd=ROOT,
        env={**os.environ, "CNAS_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = tmp_path / "checkpoints" / "evaluations" / "interrupted" / "supervised"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("trial-*.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted")]
    assert line.startswith("interrupted: cell 0 (PC_DARTS) checkpointed") and "resume" in line
    url = f"sqlite:///{tmp_path / 'cnas.db'}"
    ((state, done),) = query_rows(
        url, "SELECT state, epochs_done FROM evaluations WHERE name='interrupted'"
    )
    assert state == "PENDING" and done is not None and done >= 1  # free for the next run
    # The log said how many images the fraction kept (the digits: 1,797, a tenth held out).
    assert "808 training image(s) (data.fraction=0.5 of 1617)" in out + err

    again = run_evaluate(args, home=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed at epoch" in again.stdout + again.stderr
    ((state,),) = query_rows(url, "SELECT state FROM evaluations WHERE name='interrupted'")
    assert state == "COMPLETE"
    results = (tmp_path / "evaluations" / "interrupted" / "results.md").read_text()
    assert "Data `digits` (data.fraction=0.5" in results and "protocol `debug` (3 cells" in results


def _cost_aware_home(home: Path) -> str:
    """A constrained score-vs-params study ``mo`` (front: trials 0, 1, 3; latency recorded)
    and a single-objective ``plain`` one without costs, in ``home``'s database."""
    storage = f"sqlite:///{home / 'cnas.db'}"
    cells = [dataclasses.replace(c, latency_ms=2.0 + i) for i, c in enumerate(SCORE_PARAMS)]
    make_study(storage, "mo", ("val_contrastive_loss", "params"), ("minimize", "minimize"), cells)
    make_study(storage, "plain", ("val_contrastive_loss",), ("minimize",), [Cell((1.0,))])
    return storage


def test_cells_spread_along_the_front_are_trained_and_reported_beside_their_costs(
    tmp_path: Path,
) -> None:
    _cost_aware_home(tmp_path)
    result = run_evaluate([*QUICK_EVAL, *ONE_STEP, "eval.from_study=mo", "eval.from_front=2"],
                          home=tmp_path, env=ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    name = "mo-front2-debug-supervised"
    table = result.stdout[result.stdout.index(f"Evaluation '{name}'") :].splitlines()
    header = next(line for line in table if line.startswith("cell"))
    # Accuracy, then the search's costs of each cell: params, MACs, latency.
    order = ("test acc %", "search params M", "search MACs M", "latency ms", "probe kNN %")
    assert [header.index(h) for h in order] == sorted(header.index(h) for h in order)
    rows = [line for line in table if line.startswith("mo:trial-")]
    assert [row.split()[0] for row in rows] == ["mo:trial-0", "mo:trial-3"]  # both ends
    assert "2.00" in rows[0] and "300" in rows[0] and "5.00" in rows[1]  # params M, MACs, ms
    assert "latency on cpu" in result.stdout and "darts_cifar 20x36 network" in result.stdout
    with (tmp_path / "evaluations" / name / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["trial"], r["state"], r["latency_ms"]) for r in csv_rows] == [
        ("0", "COMPLETE", "2.0"), ("3", "COMPLETE", "5.0")
    ]  # fmt: skip
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in csv_rows)


@pytest.mark.cost(15)
def test_from_front_makes_one_task_per_front_cell_with_m(tmp_path: Path) -> None:
    storage = _cost_aware_home(tmp_path)
    args = ["-m", *QUICK_EVAL, *ONE_STEP, "eval.from_study=mo", "eval.from_front=3",
            "eval.name=front-array"]  # fmt: skip
    result = run_evaluate(args, home=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = sorted(p.name for p in tmp_path.glob("hydra/evaluate/multirun/*/cell*"))
    assert tasks == ["cell0", "cell1", "cell2"]
    planned = query_rows(
        storage,
        "SELECT trial_number, state FROM evaluations WHERE name = 'front-array' "
        "ORDER BY cell_index",
    )
    assert [tuple(row) for row in planned] == [(0, "COMPLETE"), (1, "COMPLETE"), (3, "COMPLETE")]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["eval.from_study=mo", "eval.from_front=0"], "eval.from_front must be an integer > 0"),
        (["eval.from_front=2", "eval.presets=[DARTS_V2]"], "eval.from_front needs the study"),
        (["eval.from_study=plain", "eval.from_front=2"], "has no Pareto front"),
    ],
)
def test_a_front_that_cannot_be_had_is_refused_before_anything_runs(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    _cost_aware_home(tmp_path)
    # In this process (run_here): a refusal ends before any work.
    args = ["-m", *QUICK_EVAL, *extra, "eval.name=refused"]
    result = run_here("evaluate.py", evaluate_main, args, home=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    assert not list(tmp_path.glob("hydra/evaluate/multirun/*/cell*"))  # nothing ran
