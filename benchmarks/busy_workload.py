"""The workload of the busy-fraction benchmark: trial durations drawn from a lognormal law.

Pure Python (no project import): the Hydra-sweeper side imports it from its own environment.
Trial ``i`` lasts the same in both systems, so they run exactly the same work.
"""

from __future__ import annotations

import math
import random

#: The two workloads the benchmark runs: ``name -> (median s, sigma)``. ``steady``: NAS trials
#: of one proxy task vary little (issue 13 measured 74-111 s), scaled down to 20 s; ``heavy
#: tail``: a few trials take 3x the median.
WORKLOADS = {"steady": (20.0, 0.25), "heavy_tail": (10.0, 0.5)}


def duration(index: int, median_s: float, sigma: float, seed: int = 0) -> float:
    """Seconds that trial ``index`` trains (sleeps) for."""
    rng = random.Random(seed * 1_000_003 + index)
    return median_s * math.exp(sigma * rng.gauss(0.0, 1.0))
