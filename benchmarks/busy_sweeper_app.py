"""Hydra's Optuna sweeper + submitit launcher on the busy-fraction workload (its own venv).

The sweeper asks ``n_jobs`` trials, submits them as one SLURM array, waits for ALL of them,
tells them, and asks the next batch: the same trials (job ``i`` sleeps
:func:`busy_workload.duration` ``(i)``), the same cluster and partition as our workers.
Each job writes its start and end (UNIX time) to ``<times>/<i>.json``.

    benchmarks/.sweeper-venv/bin/python benchmarks/busy_sweeper_app.py -m \
        hydra.sweeper.n_jobs=4 hydra.sweeper.n_trials=64 times=/tmp/x
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

from busy_workload import duration


@hydra.main(version_base="1.3", config_path="sweeper_conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    """One trial: sleep its duration, record when."""
    index = int(HydraConfig.get().job.num)
    start = time.time()
    time.sleep(duration(index, float(cfg.median_s), float(cfg.sigma)))
    end = time.time()
    times = Path(str(cfg.times))
    times.mkdir(parents=True, exist_ok=True)
    (times / f"{index}.json").write_text(json.dumps({"start": start, "end": end}))
    return float(cfg.x)


if __name__ == "__main__":
    main()
