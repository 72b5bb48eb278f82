"""Two-stage search: a zero-cost proxy screens a proposal before its contrastive training.

Contract (``search.screen``, opt-in): every rank scores the proposal's untrained cell with the
proxy (seeded: the same number everywhere); rank 0 alone reads the study (the values earlier
proposals recorded in ``cnas:<proxy>``) and decides; the verdict is broadcast, so every rank of
a DDP worker skips or trains together. A screened proposal is told PRUNED with
``cnas:screened``: it does not count toward ``search.n_trials``, and TPE, which ranks pruned
trials below every complete one, learns to avoid cells like it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna

from cnas_hpc.common import attrs


def screened_out(value: float, earlier: Sequence[float], *, keep: float, startup: int) -> bool:
    """Whether a proposal whose proxy is ``value`` is refused (higher is better).

    Refused when at least ``startup`` earlier proposals were scored and ``value`` is below the
    ``1 - keep`` quantile of their values (``keep=1`` refuses nothing; a non-finite value, such
    as NASWOT's ``-inf`` for a cell that cannot tell two images apart, is refused once the screen
    is on).
    """
    if len(earlier) < startup or keep >= 1.0:
        return False
    if not math.isfinite(value):
        return True
    finite = [v for v in earlier if math.isfinite(v)]
    if not finite:
        return False
    return value < float(np.quantile(finite, 1.0 - keep))


def earlier_values(study: optuna.Study, proxy: str, *, current: int) -> list[float]:
    """The proxy's values recorded by the study's other trials (any state)."""
    key = attrs.NASWOT if proxy == "naswot" else attrs.SYNFLOW
    values = []
    for trial in study.get_trials(deepcopy=False):
        if trial.number != current and key in trial.user_attrs:
            values.append(float(trial.user_attrs[key]))
    return values
