"""Creating and loading a search's study: the bootstrap (once, submitting side) and the load.

Contract:
    * The study (SQLite file or PostgreSQL database) is the single source of truth of a search:
      running the same command again resumes it.
    * Exactly one process creates the schema and the study: :func:`bootstrap_study`, called on the
      submitting side before anything is queued (or by each single local worker: bootstraps
      started together take turns under :func:`~cnas_hpc.study.storage.bootstrap_lock`, the
      later ones find the study). Workers call :func:`load_study`, which never creates tables.
    * A study remembers the search space and objective it was built for (study user attrs
      ``cnas:space`` and ``cnas:objective``) and the scoring setup of its scores
      (``cnas:score_setup``, see :mod:`cnas_hpc.config.scoring`); loading it with another one
      is refused, naming each differing key with its old and new value. A study made before the
      setup was recorded gets it at its first bootstrap. Its metric name is the objective's
      (``study.metric_names``: what optuna-dashboard shows).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError, StudyError, StudyUnreachableError
from cnas_hpc.common.objectives import direction_of
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config import Settings
from cnas_hpc.config.scoring import scoring_setup, setup_differences
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.space.genotype import load_genotype
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import open_handle
from cnas_hpc.study.pruner import make_pruner
from cnas_hpc.study.sampler import make_sampler
from cnas_hpc.study.storage import (
    bootstrap_lock,
    db_error,
    make_storage,
    release_connections,
)

log = logging.getLogger(__name__)


def _fingerprint(settings: Settings) -> tuple[str, str]:
    space = json.dumps(encoding_from_config(settings.space).fingerprint(), sort_keys=True)
    return space, settings.search.objective


@dataclass(frozen=True)
class BootstrapResult:
    """What :func:`bootstrap_study` found or made."""

    storage_url: str
    study_name: str
    created: bool
    n_complete: int


def _check_compatible(study: optuna.Study, settings: Settings, *, scoring: bool = True) -> None:
    space, objective = _fingerprint(settings)
    recorded = study.user_attrs
    if recorded.get(attrs.STUDY_OBJECTIVE, objective) != objective:
        raise StudyError(
            f"study {study.study_name!r} was built for objective "
            f"{recorded[attrs.STUDY_OBJECTIVE]!r}, not {objective!r}: choose another study.name"
        )
    objectives = list(settings.search.objectives)
    # A reader that scores nothing (the report) reads the values with the study's own names.
    if scoring and list(recorded.get(attrs.STUDY_OBJECTIVES, [])) != objectives:
        raise StudyError(
            f"study {study.study_name!r} was built for objectives "
            f"{list(recorded.get(attrs.STUDY_OBJECTIVES, [])) or [objective]}, not "
            f"{objectives or [objective]}: choose another study.name"
        )
    if recorded.get(attrs.STUDY_SPACE, space) != space:
        raise StudyError(
            f"study {study.study_name!r} was built for another search space "
            f"({recorded[attrs.STUDY_SPACE]}): choose another study.name"
        )
    setup = recorded.get(attrs.STUDY_SCORE_SETUP) if scoring else None
    differences = setup_differences(setup, settings) if setup is not None else []
    if differences:
        raise StudyError(
            f"study {study.study_name!r} was scored with another setup: "
            f"{', '.join(differences)}; use another study.name"
        )


def known_cells(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    """``search.enqueue`` as ``(spec, trial parameters)`` in the study's encoding.

    Raises:
        ConfigError: a spec that is no genotype, or a cell outside the search space (one line).
    """
    encoding = encoding_from_config(settings.space)
    known = []
    for spec in settings.search.enqueue:
        try:
            known.append((spec, encoding.to_params(load_genotype(spec))))
        except ValueError as exc:
            raise ConfigError(f"search.enqueue: {spec}: {exc}") from None
    return known


def enqueue_known_cells(study: optuna.Study, known: list[tuple[str, dict[str, Any]]]) -> int:
    """Enqueue the known cells this study has not enqueued before; returns how many.

    The study remembers what it enqueued (``cnas:enqueued``), so running the same command
    again never adds them twice, even after they were evaluated.
    """
    done = set(study.user_attrs.get(attrs.ENQUEUED, []))
    added = 0
    for spec, params in known:
        if spec in done:
            continue
        study.enqueue_trial(params, user_attrs={attrs.ENQUEUED_AS: spec}, skip_if_exists=True)
        done.add(spec)
        added += 1
    if added:
        study.set_user_attr(attrs.ENQUEUED, sorted(done))
        log.info("enqueued %d known cell(s) to be evaluated first", added)
    return added


def bootstrap_study(settings: Settings) -> BootstrapResult:
    """Create the schema and the study once, or check an existing one. Submitting side only.

    Nothing is written when the existing study is incompatible, nor when a SQLite file's folder
    does not exist (only ``output_dir``, the default's folder, is created).

    Raises:
        StudyError: unreachable database, wrong credentials, incompatible existing study, a
            missing SQLite folder.
    """
    cfg = settings.study
    known = known_cells(settings)  # refused before anything is written
    with bootstrap_lock(cfg, cfg.storage, may_create=Path(settings.output_dir)):
        created, n_complete = _create_or_check(settings, known)
    return BootstrapResult(cfg.storage, cfg.name, created, n_complete)


def _create_or_check(
    settings: Settings, known: list[tuple[str, dict[str, Any]]]
) -> tuple[bool, int]:
    """The bootstrap's work under the bootstrap lock: ``(created, COMPLETE trials)``."""
    cfg = settings.study
    storage = make_storage(cfg, create_tables=True, may_create=Path(settings.output_dir))
    search = settings.search
    try:
        existing = {s.study_name for s in storage.get_all_studies()}
        created = cfg.name not in existing
        if created:
            if search.multi_objective:
                # One value per objective, in this order (cnas:objectives names them).
                directions = [direction_of(name) for name in search.values]
                study = optuna.create_study(
                    storage=storage, study_name=cfg.name, directions=directions
                )
                study.set_user_attr(attrs.STUDY_OBJECTIVES, list(search.values))
            else:
                direction = direction_of(search.objective)
                study = optuna.create_study(
                    storage=storage, study_name=cfg.name, direction=direction
                )
            space, objective = _fingerprint(settings)
            study.set_user_attr(attrs.STUDY_SPACE, space)
            study.set_user_attr(attrs.STUDY_OBJECTIVE, objective)
            study.set_user_attr(attrs.STUDY_SCORE_SETUP, scoring_setup(settings))
        else:
            study = optuna.load_study(study_name=cfg.name, storage=storage)
            _check_compatible(study, settings)
            if attrs.STUDY_SCORE_SETUP not in study.user_attrs:
                # Made before setups were recorded: its scores are taken as made with this one.
                study.set_user_attr(attrs.STUDY_SCORE_SETUP, scoring_setup(settings))
        if study.metric_names is None:
            # optuna-dashboard (and Optuna's plots) label the value by it, not "Objective 0".
            study.set_metric_names(list(search.values))
        enqueue_known_cells(study, known)
        n_complete = len(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        )
    except StudyError:
        raise
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, cfg.storage) from None
    finally:
        storage.engine.dispose()
    return created, n_complete


def load_study(settings: Settings, *, worker: int, scoring: bool = True) -> StudyHandle:
    """Load the bootstrapped study with this worker's sampler and pruner. Never creates anything.

    Returns the study with the storage, engine and study id it was opened with (the handle every
    reader of the database takes).

    ``scoring=False`` is for readers that score nothing (the report): they are not refused for
    another scoring setup or other ``search.objectives`` (``cnas:objectives`` names the values),
    only for another space or objective.

    Its trials are read lean into Optuna's trial cache (a second for 10,000 trials, at the first
    claim); the sampler's seed depends only on ``study.sampler.seed``, ``worker`` and the trial
    it proposes for (reproducible, whenever the worker starts).

    Raises:
        StudyUnreachableError: the database is down (transient: a worker's retry waits for it).
        StudyError: refused credentials, missing or incompatible study.
    """
    cfg = settings.study
    storage = make_storage(cfg, create_tables=False)
    try:
        # Optuna's trial cache with a lean read (a 10,000-trial study in about a second instead
        # of 16; the RUNNING trials at every claim in milliseconds): see LeanCachedStorage.
        handle = open_handle(storage, cfg.name, make_pruner(settings.search, settings.train.epochs))
        handle.study.sampler = make_sampler(cfg.sampler, worker=worker)
    except KeyError:
        raise StudyError(
            f"study {cfg.name!r} does not exist in {mask_url(cfg.storage)}: bootstrap it first"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, cfg.storage) from None
    _check_compatible(handle.study, settings, scoring=scoring)
    return handle


def _open_existing(settings: Settings) -> tuple[optuna.Study, sqlalchemy.Engine] | None:
    """The study, read-only, and its engine; None when it (or its schema) does not exist yet."""
    cfg = settings.study
    try:
        storage = make_storage(cfg, create_tables=False)
    except StudyUnreachableError:
        raise
    except StudyError:
        return None  # no schema yet: a fresh database
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage), storage.engine
    except KeyError:
        return None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, cfg.storage) from None


def arrays_of(settings: Settings) -> list[str]:
    """SLURM arrays that worked the study: those recorded by the launcher, and those of RUNNING
    trials (arrays submitted before the record existed). Read-only; empty for a new study.

    Raises:
        StudyError: the database cannot be read.
    """
    opened = _open_existing(settings)
    if opened is None:
        return []
    study, engine = opened
    try:
        recorded = [str(a) for a in study.user_attrs.get(attrs.STUDY_ARRAYS, [])]
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, settings.study.storage) from None
    finally:
        release_connections(engine)
    found = [str(t.user_attrs[attrs.ARRAY_JOB]) for t in running if attrs.ARRAY_JOB in t.user_attrs]
    return list(dict.fromkeys([*reversed(recorded), *found]))


#: How many array ids a study remembers (the newest).
_ARRAYS_KEPT = 20


def record_array(settings: Settings, array_job_id: str) -> None:
    """Remember that SLURM array ``array_job_id`` now works the study. Submitting side only.

    Raises:
        StudyError: the database cannot be written.
    """
    opened = _open_existing(settings)
    if opened is None:
        raise StudyError(f"study {settings.study.name!r} does not exist")
    study, engine = opened
    try:
        arrays = [str(a) for a in study.user_attrs.get(attrs.STUDY_ARRAYS, [])]
        study.set_user_attr(attrs.STUDY_ARRAYS, [*arrays, array_job_id][-_ARRAYS_KEPT:])
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise db_error(exc, settings.study.storage) from None
    finally:
        release_connections(engine)  # the launcher waits for hours: hold nothing meanwhile
