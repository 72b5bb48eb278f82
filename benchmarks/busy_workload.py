"""The workload of the busy-fraction benchmark: trial durations drawn from a lognormal law.

Pure Python (no project import): the Hydra-sweeper side imports it from its own environment.
Trial ``i`` lasts the same in both systems, so they run exactly the same work.
"""

from __future__ import annotations

import math
import random

#: Median trial duration (s) and the lognormal's sigma: a few trials take 3x the median.
MEDIAN_S = 10.0
SIGMA = 0.5


def duration(index: int, seed: int = 0) -> float:
    """Seconds that trial ``index`` trains (sleeps) for."""
    rng = random.Random(seed * 1_000_003 + index)
    return MEDIAN_S * math.exp(SIGMA * rng.gauss(0.0, 1.0))
