"""``launch/compare_samplers.py``: TPE vs random (and the encodings) at equal budgets.

Contract:
    * :class:`CompareCallback` (the submitting process) validates the config and bootstraps one
      study per run (method x seed) in ``study.storage``; bad input is one ``error:`` line.
    * With ``-m`` the runs sweeper submits ONE array, one task per run whose study has not
      reached its budget; each task is an ordinary search worker on its run's study. Locally,
      the runs go one after the other. A rerun continues unfinished runs (the studies resume).
    * The comparison (curves with spread, final best, trials to target) is written at the end of
      a local run or of the multirun, under ``<output_dir>/compare/<name>/``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from cnas_hpc.analysis.samplers import best_so_far, summarise_methods, write_comparison
from cnas_hpc.cli.common import CONFIG_PATH, USER_ERRORS, check_config_secrets, fail, settings_of
from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.objectives import direction_of
from cnas_hpc.config import Settings
from cnas_hpc.config.build import build_section
from cnas_hpc.config.compare import CompareConfig, parse_method
from cnas_hpc.config.space import SpaceConfig
from cnas_hpc.data.datasets import check_available
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.worker import run_worker
from cnas_hpc.study.budget import count_budget
from cnas_hpc.study.lifecycle import bootstrap_study, load_study

log = logging.getLogger("cnas_hpc")


def compare_of(cfg: DictConfig) -> tuple[Settings, CompareConfig]:
    """The base search settings and the ``compare`` section of ``cfg``.

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    base = settings_of(OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "compare"]))
    if base.search.multi_objective:
        raise ConfigError(
            "compare-samplers compares the best value of ONE score over time: set "
            f"search.objectives=[] (got {list(base.search.objectives)})"
        )
    node = cfg.get("compare")
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if not isinstance(values, dict):
        raise ConfigError("compare must be a mapping of settings")
    return base, build_section(CompareConfig, values)


def run_settings(base: Settings, compare: CompareConfig, index: int) -> Settings:
    """The search settings of run ``index``: its sampler, encoding, seed, study and budget."""
    method, seed = compare.runs[index]
    sampler_kind, encoding = parse_method(method)
    space = SpaceConfig(
        encoding=encoding,
        n_nodes=base.space.n_nodes,
        ops=base.space.ops,
        concat_last=base.space.concat_last,
    )
    sampler = dataclasses.replace(base.study.sampler, kind=sampler_kind, seed=seed)
    study = dataclasses.replace(base.study, name=compare.study_name(method, seed), sampler=sampler)
    search = dataclasses.replace(base.search, n_trials=compare.n_trials)
    return dataclasses.replace(base, space=space, study=study, search=search)


def pending_runs(cfg: DictConfig) -> list[int]:
    """The runs whose study has fewer COMPLETE trials than the budget (the array's tasks)."""
    base, compare = compare_of(cfg)
    todo = []
    for index in range(len(compare.runs)):
        handle = load_study(run_settings(base, compare, index), worker=0)
        if count_budget(handle).complete < compare.n_trials:
            todo.append(index)
    return todo


def _bootstrap_all(cfg: DictConfig) -> None:
    check_config_secrets(cfg)
    base, compare = compare_of(cfg)
    check_available(base.data)
    for index in range(len(compare.runs)):
        bootstrap_study(run_settings(base, compare, index))
    log.info(
        "%d runs (%s x seeds %s), %d trials each",
        len(compare.runs),
        ", ".join(compare.methods),
        ", ".join(str(s) for s in compare.seeds),
        compare.n_trials,
    )


def report_comparison(base: Settings, compare: CompareConfig) -> Path:
    """Compute the curves of every run and write the comparison; returns its folder."""
    minimize = direction_of(base.search.objective) == "minimize"
    curves: dict[str, list[list[float]]] = {}
    for index, (method, _) in enumerate(compare.runs):
        study = load_study(run_settings(base, compare, index), worker=0).study
        done = sorted(
            (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            key=lambda t: t.number,
        )
        values = [float(t.value) for t in done if t.value is not None]
        curves.setdefault(method, []).append(best_so_far(values, minimize))
    summaries, target = summarise_methods(curves, minimize, compare.target)
    folder = Path(base.output_dir) / "compare" / compare.name
    paths = write_comparison(summaries, target, base.search.objective, folder)
    print((folder / "comparison.txt").read_text() + f"\nreport: {paths[-1]}", flush=True)
    return folder


class CompareCallback(Callback):
    """Hydra callback: bootstrap every run's study once; write the comparison at the end."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if DistEnv.from_environment().global_rank == 0:
            self._bootstrap(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._bootstrap(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            report_comparison(*compare_of(config))
        except Exception as exc:
            log.warning("could not write the comparison: %s", exc)

    @staticmethod
    def _bootstrap(config: DictConfig) -> None:
        try:
            _bootstrap_all(config)
        except USER_ERRORS as exc:
            fail(str(exc))


def run_compare_task(cfg: DictConfig) -> int:
    """Body of every task: run the searches this task owns; returns how many trials it made."""
    try:
        base, compare = compare_of(cfg)
        indices = [compare.run] if compare.run is not None else list(range(len(compare.runs)))
        completed = 0
        for index in indices:
            if not 0 <= index < len(compare.runs):
                raise ConfigError(f"compare.run={index} is not a run (0..{len(compare.runs) - 1})")
            completed += run_worker(run_settings(base, compare, index)).completed
        if HydraConfig.get().mode == RunMode.RUN:
            report_comparison(base, compare)
    except USER_ERRORS as exc:
        fail(str(exc))
    return completed


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="compare_samplers")
def hydra_main(cfg: DictConfig) -> int:
    """``cnas-compare-samplers`` (and ``launch/compare_samplers.py``): every array task runs
    this Hydra task."""
    return run_compare_task(cfg)


#: The command: overrides checked first (a typo: one ``error:`` line), then the Hydra app.
main = checked_command("compare_samplers", hydra_main)
