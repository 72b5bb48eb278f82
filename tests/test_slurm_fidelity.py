"""A fidelity study as ONE SLURM array (one task per measurement), its report at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnas_hpc.cli.fidelity import main as fidelity_main
from tests.helpers import completed_array, query_rows, run_here, run_launch

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.cost(65)
def test_the_measurements_run_as_one_array_and_a_rerun_submits_nothing(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    args = [
        "-m", "hydra/launcher=slurm_cpu", "debug=tiny", "study=postgres",
        f"study.storage={fresh_pg_url}", "fidelity.n_random=2", "fidelity.presets=[DARTS_V2]",
        "fidelity.noise_cells=0", "fidelity.bootstrap=100", "protocol.cells=3",
        "protocol.channels=4", "protocol.epochs=1", "protocol.max_steps_per_epoch=2",
        "protocol.amp=none", "protocol.memory_format=contiguous", "train.num_threads=1",
    ]  # fmt: skip
    result = run_launch("fidelity.py", args, home=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # 3 cells x (accuracy, zero-cost proxies, contrastive score): one task each
    array_id = completed_array(result.stdout, 9)
    # Recorded for the rerun guard (no "could not record array": the study.name error is gone),
    # and every measurement was claimed by a task of that array.
    assert "could not record array" not in result.stdout + result.stderr
    recorded = query_rows(fresh_pg_url, "SELECT app, array_job_id FROM cnas_arrays")
    workers = query_rows(fresh_pg_url, "SELECT worker FROM fidelity_measurements")
    assert [tuple(r) for r in recorded] == [("fidelity", array_id)]
    assert {str(w[0]).split(":")[1].split("_")[0] for w in workers} == {array_id}
    (folder,) = (tmp_path / "fidelity").iterdir()
    assert json.loads((folder / "fidelity.json").read_text())["n_measured"] == 3
    # The rerun in this process (run_here): it submits nothing, a process start proves no more.
    again = run_here("fidelity.py", fidelity_main, args, home=tmp_path)
    assert again.returncode == 0 and "submitted array" not in again.stdout
    assert "nothing left to do" in again.stdout + again.stderr
