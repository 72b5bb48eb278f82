"""Proposing a trial's parameters without writing them one by one.

Optuna's ``trial.suggest_*`` samples AND writes each parameter in its own transaction (with the
workers' connection-less pool: its own connection); a 24-parameter architecture costs 24 round
trips. :func:`propose` makes exactly the choices ``Trial._suggest`` would (fixed parameters of an
enqueued retry first, then the sampler's relative proposal, then its independent one), writing
nothing but what the sampler itself shares (TPE's constant liar publishes its relative proposal);
the claim then writes all parameters in one transaction
(:func:`cnas_hpc.study.optuna_internals.write_trial_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from cnas_hpc.study.optuna_internals import fixed_params_of, frozen_of


def propose(
    study: optuna.Study, trial: optuna.Trial, distributions: Mapping[str, BaseDistribution]
) -> dict[str, Any]:
    """The value of every parameter of ``distributions`` for the RUNNING ``trial``.

    Args:
        study: the study (its sampler proposes).
        trial: a trial just asked (no parameter written yet).
        distributions: the whole search space.

    Returns:
        ``name -> value`` in the external representation (as ``suggest_*`` returns them).
    """
    frozen = frozen_of(trial)
    fixed = fixed_params_of(frozen)
    needs_sampling = any(name not in fixed for name in distributions)
    relative = trial.relative_params if needs_sampling else {}
    space = trial.relative_search_space or {}
    values: dict[str, Any] = {}
    for name, dist in distributions.items():
        if name in fixed:
            values[name] = fixed[name]
        elif dist.single():
            values[name] = _only_value(dist)
        elif name in relative and name in space:
            values[name] = relative[name]
        else:
            values[name] = study.sampler.sample_independent(study, frozen, name, dist)
    return values


def _only_value(dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    return dist.to_external_repr(getattr(dist, "low"))  # noqa: B009 - numeric distributions
