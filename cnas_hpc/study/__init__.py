"""The shared Optuna study (floor 2): storage, sampler, bootstrap/load, claims, retries, heartbeats.

Only global rank 0 of a worker (and the submitting process) uses it. A study is opened as a
:class:`~cnas_hpc.study.handle.StudyHandle`; every use of Optuna's private API is in
:mod:`cnas_hpc.study.optuna_internals`, Optuna's tables are described once in
:mod:`cnas_hpc.study.optuna_schema` (ARCHITECTURE.md, "Optuna hooks").
"""
