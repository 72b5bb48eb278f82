"""``launch/fidelity.py`` as a user runs it: a tiny study, its report, reuse on a larger rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_launch

#: A toy study on the embedded digits: a few steps per measurement.
QUICK = (
    "debug=tiny",
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


def test_a_study_reports_and_a_larger_rerun_measures_only_the_new_cells(tmp_path: Path) -> None:
    first = run_launch("fidelity.py", [*QUICK, "fidelity.n_random=3"], home=tmp_path, env=ENV)
    logs = first.stdout + first.stderr
    assert first.returncode == 0, logs[-3000:]
    assert ONE_CPU in logs  # threads from the allocation, not from the node's cores
    # 4 cells: an accuracy and a score each, and 2 extra seeds for the first cell's score.
    assert len(_made(logs)) == 4 * 2 + 2
    (folder,) = (tmp_path / "fidelity").iterdir()
    report = json.loads((folder / "fidelity.json").read_text())
    assert report["n_cells"] == 4 and report["n_measured"] == 4
    assert -1.0 <= report["tau"]["value"] <= 1.0 and report["tau"]["low"] <= report["tau"]["high"]
    assert report["noise_std"] is not None
    for name in ("scatter.png", "tau_by_epoch.png", "index.html", "summary.txt"):
        assert (folder / name).stat().st_size > 0
    assert "Kendall tau" in first.stdout
    again = run_launch("fidelity.py", [*QUICK, "fidelity.n_random=5"], home=tmp_path, env=ENV)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert len(_made(again.stdout + again.stderr)) == 2 * 2  # two new cells, two units each
    assert json.loads((folder / "fidelity.json").read_text())["n_cells"] == 6
    # Another objective reuses every accuracy: only the scores are new.
    other = run_launch(
        "fidelity.py", [*QUICK, "fidelity.n_random=5", "train.loss=membank_nce"],
        home=tmp_path, env=ENV,
    )  # fmt: skip
    assert other.returncode == 0, (other.stdout + other.stderr)[-3000:]
    assert all(m.startswith("score") for m in _made(other.stdout + other.stderr))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["fidelity.n_random=1", "fidelity.presets=[]"], "at least 3 cells"),
        (["fidelity.presets=[NOPE]"], "unknown preset 'NOPE'"),
        (["data=npz", "data.path=UNLABELED"], "has no labels"),
    ],
)
def test_bad_input_is_refused_with_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, images=np.zeros((64, 8, 8, 3), dtype=np.uint8))
    args = [*QUICK, *(a.replace("UNLABELED", str(unlabeled)) for a in extra)]
    result = run_launch("fidelity.py", ["-m", *args], home=tmp_path)
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
