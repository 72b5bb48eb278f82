"""Wall time of the README's default search (`python launch/search.py`) on this machine.

Target (issue: core search engine): the default run completes on a 2-core CPU in at most
5 minutes. Runs the real command in a fresh CNAS_HOME and reports total and per-trial time.

    .venv/bin/python benchmarks/bench_default_search.py [extra Hydra overrides]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(overrides: list[str]) -> None:
    """Run the default search once and print its timings."""
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(ROOT / "launch" / "search.py"), *overrides],
            env={**os.environ, "CNAS_HOME": home},
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
    output = result.stdout + result.stderr
    trial_times = [float(t) for t in re.findall(r"COMPLETE value=\S+ \(([\d.]+)s\)", output)]
    print(f"cores: {os.cpu_count()}, torch threads: default")
    print(f"default search: {len(trial_times)} trials in {wall:.1f} s wall")
    if trial_times:
        mean = sum(trial_times) / len(trial_times)
        low, high = min(trial_times), max(trial_times)
        print(f"per trial: mean {mean:.1f} s, min {low:.1f} s, max {high:.1f} s")
    print(f"target <= 300 s: {'met' if wall <= 300 else 'MISSED'}")


if __name__ == "__main__":
    main(sys.argv[1:])
