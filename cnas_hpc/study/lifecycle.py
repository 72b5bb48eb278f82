"""Creating and loading a search's study: the bootstrap (once, submitting side) and the load.

Contract:
    * The study (SQLite file or PostgreSQL database) is the single source of truth of a search:
      running the same command again resumes it.
    * Exactly one process creates the schema and the study: :func:`bootstrap_study`, called on the
      submitting side before anything is queued (or by the single local worker). Workers call
      :func:`load_study`, which never creates tables.
    * A study remembers the search space and objective it was built for (study user attrs
      ``cnas:space`` and ``cnas:objective``); loading it with another one is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError, StudyError
from cnas_hpc.common.objectives import direction_of
from cnas_hpc.common.storage_url import mask_url, normalize_storage_url
from cnas_hpc.config import Settings
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.space.genotype import load_genotype
from cnas_hpc.study.pruner import make_pruner
from cnas_hpc.study.sampler import make_sampler
from cnas_hpc.study.storage import describe_db_error, make_storage

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


def _check_compatible(study: optuna.Study, settings: Settings) -> None:
    space, objective = _fingerprint(settings)
    recorded = study.user_attrs
    if recorded.get(attrs.STUDY_OBJECTIVE, objective) != objective:
        raise StudyError(
            f"study {study.study_name!r} was built for objective "
            f"{recorded[attrs.STUDY_OBJECTIVE]!r}, not {objective!r}: choose another study.name"
        )
    if recorded.get(attrs.STUDY_SPACE, space) != space:
        raise StudyError(
            f"study {study.study_name!r} was built for another search space "
            f"({recorded[attrs.STUDY_SPACE]}): choose another study.name"
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

    Nothing is written when the existing study is incompatible.

    Raises:
        StudyError: unreachable database, wrong credentials, incompatible existing study.
    """
    cfg = settings.study
    known = known_cells(settings)  # refused before anything is written
    url = normalize_storage_url(cfg.storage)
    storage = make_storage(cfg, create_tables=True, url=url)
    direction = direction_of(settings.search.objective)
    try:
        existing = {s.study_name for s in storage.get_all_studies()}
        created = cfg.name not in existing
        if created:
            study = optuna.create_study(storage=storage, study_name=cfg.name, direction=direction)
            space, objective = _fingerprint(settings)
            study.set_user_attr(attrs.STUDY_SPACE, space)
            study.set_user_attr(attrs.STUDY_OBJECTIVE, objective)
        else:
            study = optuna.load_study(study_name=cfg.name, storage=storage)
            _check_compatible(study, settings)
        enqueue_known_cells(study, known)
        n_complete = len(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        )
    except StudyError:
        raise
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StudyError(describe_db_error(exc, url)) from None
    finally:
        storage.engine.dispose()
    return BootstrapResult(url, cfg.name, created, n_complete)


def load_study(settings: Settings, *, worker: int) -> optuna.Study:
    """Load the bootstrapped study with this worker's sampler and pruner. Never creates anything.

    Raises:
        StudyError: unreachable database, missing or incompatible study.
    """
    cfg = settings.study
    url = normalize_storage_url(cfg.storage)
    storage = make_storage(cfg, create_tables=False, url=url)
    try:
        study = optuna.load_study(
            study_name=cfg.name,
            storage=storage,
            pruner=make_pruner(settings.search, settings.train.epochs),
        )
        n_existing = len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(cfg.sampler, worker=worker, n_existing=n_existing)
    except KeyError:
        raise StudyError(
            f"study {cfg.name!r} does not exist in {mask_url(url)}: bootstrap it first"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StudyError(describe_db_error(exc, url)) from None
    _check_compatible(study, settings)
    return study
