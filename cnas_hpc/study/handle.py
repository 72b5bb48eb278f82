"""The study handle: the study with the storage, engine and id it was opened with.

Whoever opens a study (:func:`cnas_hpc.study.lifecycle.load_study`, or
:func:`cnas_hpc.study.optuna_internals.open_handle` on a storage it built) keeps what it built
here, so nobody fishes them back out of Optuna's private attributes (``Study._storage``,
``_CachedStorage._backend``, ``Study._study_id``).
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage


@dataclass(frozen=True)
class StudyHandle:
    """An opened study.

    Attributes:
        study: the Optuna study (ask, tell, trials, sampler, pruner).
        cache: the storage the study reads through (Optuna's trial cache over ``storage``).
        storage: the RDB storage (heartbeats, grace period; writes go straight to it).
        engine: ``storage``'s SQLAlchemy engine (counts, locks, batched writes).
        study_id: the study's id in ``storage`` (``storage.get_study_id_from_name``).
    """

    study: optuna.Study
    cache: BaseStorage
    storage: RDBStorage
    engine: sqlalchemy.Engine
    study_id: int

    @property
    def name(self) -> str:
        """The study's name."""
        return self.study.study_name
