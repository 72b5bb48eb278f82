"""The sampler of a worker: TPE with every setting explicit (or random, ``study.sampler.kind``),
one seed per proposal, the space given.

Contract:
    * :func:`make_sampler` builds the sampler for ONE proposal: the trial ``number`` it proposes
      for goes into its seed (:func:`worker_seed`), so a claim builds a fresh one (cheap).
    * The search space is TOLD, not inferred: the encoding knows every parameter and the study's
      fingerprint guarantees it (see :mod:`cnas_hpc.study.lifecycle`). Optuna's default infers the
      multivariate space by intersecting the distributions of every trial, O(trials) per proposal
      (0.3 s at 1,000 trials on the development machine, more than the rest of TPE).
    * ``kind: random`` (the baseline TPE should beat) is Optuna's random sampler, seeded per
      proposal the same way; the TPE settings (and ``max_history``) are unused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from cnas_hpc.config.study import SamplerConfig
from cnas_hpc.study.optuna_internals import RecentAndBestTrials


def worker_seed(sampler_seed: int | None, worker: int, number: int = 0) -> int | None:
    """The seed of the proposal of trial ``number`` by ``worker``: a pure function of the study
    seed, the worker index and that trial number.

    Workers sharing one seed propose the same first points (seen: 53 duplicates in 96 trials
    with 16 workers), so each worker gets its own stream; and each proposal gets its own seed
    (the claim knows the number of the trial it proposes for), so a restarted worker does not
    replay the random start-up proposals of its earlier run. Nothing that depends on timing
    goes in (such as the number of trials the study held when the worker LOADED it, which races
    between workers starting together): the same study history gives the same proposals.
    """
    if sampler_seed is None:
        return None
    entropy = [sampler_seed, worker, number]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class SpaceTPESampler(optuna.samplers.TPESampler):
    """TPE told its (static) search space instead of intersecting every trial's distributions,
    optionally reading a capped history.

    With ``multivariate`` and without ``group`` the relative search space is the given space
    (its single-choice parameters left out, as Optuna does); otherwise Optuna's own inference.
    With ``max_history`` TPE reads at most that many finished trials: the best quarter and the
    most recent others (:class:`~cnas_hpc.study.optuna_internals.RecentAndBestTrials`).
    """

    def __init__(
        self,
        *,
        search_space: Mapping[str, BaseDistribution] | None,
        multivariate: bool,
        group: bool,
        max_history: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(multivariate=multivariate, group=group, **kwargs)  # type: ignore[arg-type]
        self._max_history = max_history
        self._told_space = (
            {n: d for n, d in search_space.items() if not d.single()}
            if search_space is not None and multivariate and not group
            else None
        )

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._told_space is None:
            return super().infer_relative_search_space(study, trial)
        return dict(self._told_space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(self._history(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return super().sample_independent(
            self._history(study), trial, param_name, param_distribution
        )

    def _history(self, study: optuna.Study) -> optuna.Study:
        if self._max_history is None:
            return study
        return RecentAndBestTrials(study, self._max_history)  # type: ignore[return-value]


def make_sampler(
    cfg: SamplerConfig,
    *,
    worker: int,
    number: int = 0,
    search_space: Mapping[str, BaseDistribution] | None = None,
) -> optuna.samplers.BaseSampler:
    """TPE with every setting explicit (defaults differ between Optuna 4.x and 5.x), seeded for
    the proposal of trial ``number`` by ``worker`` (see :func:`worker_seed`), told the search
    space when it is known; or random (``cfg.kind``), seeded the same way."""
    if cfg.kind == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed(cfg.seed, worker, number))
    return SpaceTPESampler(
        search_space=search_space,
        multivariate=cfg.multivariate,
        group=cfg.group,
        n_startup_trials=cfg.n_startup_trials,
        n_ei_candidates=cfg.n_ei_candidates,
        constant_liar=cfg.constant_liar,
        max_history=cfg.max_history,
        seed=worker_seed(cfg.seed, worker, number),
    )
