"""The study's multi-fidelity pruner, built from ``search.pruner`` (opt-in).

Trials report their objective after every epoch (``trial.report(value, epoch)``, epochs counted
from 1); rank 0 then asks ``trial.should_prune()``. The pruners compare a trial's value at an
epoch with the other trials' values at the same epoch (Optuna stores them in the study), so
they work across asynchronous workers without any coordination of ours.

With Hyperband, Optuna's TPE sampler models each bracket's trials separately (it recognises the
pruner); PRUNED trials keep their last reported value, which TPE ranks below every COMPLETE one.
"""

from __future__ import annotations

import optuna

from cnas_hpc.config.search import SearchConfig


def make_pruner(cfg: SearchConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``cfg.pruner`` names, for candidates trained ``epochs`` epochs.

    Args:
        cfg: the search section (``pruner`` and its ``pruner_*`` settings).
        epochs: ``train.epochs``, the most a trial reports (Hyperband's maximum resource).
    """
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials,
            n_warmup_steps=cfg.pruner_warmup_epochs,
            interval_steps=1,
        )
    if cfg.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.pruner_min_epochs,
            reduction_factor=cfg.pruner_reduction_factor,
            min_early_stopping_rate=0,
            bootstrap_count=0,
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.pruner_min_epochs,
            max_resource=max(epochs, cfg.pruner_min_epochs),
            reduction_factor=cfg.pruner_reduction_factor,
        )
    return optuna.pruners.NopPruner()
