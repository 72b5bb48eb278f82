"""The shared Optuna study (floor 2): storage, sampler, bootstrap/load, claims, retries, heartbeats.

Only global rank 0 of a worker (and the submitting process) uses it. Every use of Optuna's
private API is in :mod:`cnas_hpc.study.optuna_internals`.
"""
