"""Glue between Hydra and the fidelity app: plan the measurements once, make them, report.

Contract:
    * :class:`FidelityCallback` runs in the SUBMITTING process: it validates the search config
      (the label-free score), the protocol (the accuracy) and the fidelity section, checks the
      data has labels (accuracy needs them), resolves the cells and plans every missing
      measurement into the ``fidelity_measurements`` table. Bad input: one ``error:`` line, exit 2.
    * With ``-m`` the units sweeper (``hydra/sweeper=units``, the fidelity config's default)
      submits ONE array: one task per measurement still to make.
    * :func:`run_fidelity_task` makes this task's measurement(s); the report (Kendall tau with
      its bootstrap interval, Spearman rho, top-k overlap, the score's noise, tau by objective and
      by proxy epoch, the scatter plot) is written at the end of a local run or of the multirun.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnas_hpc.analysis.fidelity import format_setup, format_summary, summarise, write_report
from cnas_hpc.cli.common import (
    CONFIG_PATH,
    USER_ERRORS,
    check_config_secrets,
    check_launcher,
    check_space,
    fail,
    refuse_live_arrays,
    resolved,
)
from cnas_hpc.cli.multirun import PlanningCallback
from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.config.fidelity import FidelitySettings, fidelity_settings_from_config
from cnas_hpc.data.datasets import check_available
from cnas_hpc.data.labeled import check_labeled
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.fidelity import store
from cnas_hpc.fidelity.app import plan_units, run_fidelity
from cnas_hpc.fidelity.reference import load_reference
from cnas_hpc.study.app_arrays import record_array, recorded_arrays
from cnas_hpc.study.storage import connect_engine

log = logging.getLogger("cnas_hpc")


def fidelity_settings_of(cfg: DictConfig) -> FidelitySettings:
    """Resolve and validate the composed fidelity config (without the ``hydra`` node).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    settings = fidelity_settings_from_config(resolved(cfg))
    check_space(settings.search)
    return settings


#: The app's name in the ``cnas_arrays`` table (a fidelity study is named by its results folder).
APP = "fidelity"


def plan_fidelity(
    cfg: DictConfig, launcher: DictConfig | None, *, slurm: bool = False
) -> list[int]:
    """Validate, then plan the missing measurements; returns the ids still to make.

    With ``slurm`` (the multirun submits an array), a rerun while an array of the same fidelity
    study still runs is refused.
    """
    check_config_secrets(cfg)
    settings = fidelity_settings_of(cfg)
    check_config_secrets(cfg, settings.search)
    check_available(settings.search.data)
    if settings.fidelity.reference is None:
        check_labeled(settings.search.data)
    else:
        load_reference(settings.fidelity.reference)  # a bad file: one line, before anything
    check_launcher(launcher, settings.search.train.batch_size)
    check_launcher(launcher, settings.protocol.batch_size)
    engine = connect_engine(settings.search.study)
    try:
        plan = plan_units(engine, settings)
        if slurm:
            arrays = recorded_arrays(engine, APP, settings.results_dir.name)
            arrays += store.running_arrays(engine, [m.id for m in plan.measurements])
            refuse_live_arrays(arrays, f"fidelity study {settings.results_dir.name}")
    finally:
        engine.dispose()
    todo = [m.id for m in plan.measurements if m.state != store.COMPLETE]
    log.info(
        "fidelity study: %d cells, %d measurements, %d to make (%s)",
        len(plan.cells),
        len(plan.measurements),
        len(todo),
        settings.results_dir,
    )
    return todo


def pending_units(cfg: DictConfig) -> list[int]:
    """The measurements of ``cfg``'s fidelity study still to make (the array's tasks)."""
    settings = fidelity_settings_of(cfg)
    engine = connect_engine(settings.search.study)
    try:
        plan = plan_units(engine, settings)
    finally:
        engine.dispose()
    return [m.id for m in plan.measurements if m.state != store.COMPLETE]


def setup_of(settings: FidelitySettings) -> dict[str, Any]:
    """The settings a reader of the report needs to tell studies apart."""
    search, protocol, fidelity = settings.search, settings.protocol, settings.fidelity
    zero_cost = search.zero_cost
    accuracy = (
        f"reference {fidelity.reference} (size of the {fidelity.reference_cells}x"
        f"{fidelity.reference_channels} network)"
        if fidelity.reference is not None
        else f"{protocol.name} {protocol.cells}x{protocol.channels} {protocol.epochs} ep"
    )
    return {
        "objective": search.search.objective,
        "objectives": ", ".join(search.search.values),
        "proxy": f"{search.model.cells}x{search.model.channels}",
        "epochs": search.train.epochs,
        "max_steps_per_epoch": search.train.max_steps_per_epoch,
        "loss": search.train.loss,
        "temperature": search.train.temperature,
        "batch_size": search.train.batch_size,
        "data": search.data.source,
        "data_path": search.data.path,
        "fraction": search.data.fraction,
        "val_fraction": search.data.val_fraction,
        "zero_cost": f"{zero_cost.cells}x{zero_cost.channels}, batch {zero_cost.batch_size}",
        "accuracy": accuracy,
        "accuracy_fraction": fidelity.accuracy_fraction,
        "seed": search.seed,
    }


def device_label(device: str) -> str:
    """How the report names the device the measurements' seconds were spent on."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "CPU"
    return "GPU"


def report_fidelity(settings: FidelitySettings) -> str:
    """Compute the statistics of the study and write its report; returns the text."""
    engine = connect_engine(settings.search.study)
    try:
        plan = plan_units(engine, settings)
    finally:
        engine.dispose()
    fidelity = settings.fidelity
    summary = summarise(
        plan,
        settings.search.search.objective,
        base_seed=settings.search.seed,
        top_k=fidelity.top_k,
        resamples=fidelity.bootstrap,
        confidence=fidelity.confidence,
        reference=load_reference(fidelity.reference) if fidelity.reference else None,
        device=device_label(settings.search.device),
        search_objectives=settings.search.search.values,
    )
    paths = write_report(
        summary,
        settings.results_dir,
        fidelity.confidence,
        title=f"cnas-hpc fidelity: {settings.search.search.objective}",
        setup=setup_of(settings),
    )
    text = format_setup(setup_of(settings)) + format_summary(summary, fidelity.confidence)
    print(f"\n{text}\nreport: {paths[-1]}", flush=True)
    return text


class FidelityCallback(PlanningCallback):
    """Hydra callback: validate and plan once in the submitting process; report at the end."""

    report_what = "write the fidelity report"

    @staticmethod
    def plan(config: DictConfig, launcher: DictConfig | None, *, slurm: bool) -> None:
        plan_fidelity(config, launcher, slurm=slurm)

    @staticmethod
    def record_array(config: DictConfig, array_job_id: str) -> None:
        record_fidelity_array(config, array_job_id)

    @staticmethod
    def report(config: DictConfig) -> None:
        report_fidelity(fidelity_settings_of(config))


def record_fidelity_array(cfg: DictConfig, array_job_id: str) -> None:
    """Record the submitted array of ``cfg``'s fidelity study (the launcher calls it)."""
    settings = fidelity_settings_of(cfg)
    engine = connect_engine(settings.search.study)
    try:
        record_array(engine, APP, settings.results_dir.name, array_job_id)
    finally:
        engine.dispose()


def run_fidelity_task(cfg: DictConfig) -> int:
    """Body of every fidelity task; returns how many measurements it made."""
    try:
        settings = fidelity_settings_of(cfg)
        env = DistEnv.from_environment()
        report = run_fidelity(settings, env)
        if env.is_main and HydraConfig.get().mode == RunMode.RUN:
            report_fidelity(settings)
    except USER_ERRORS as exc:
        fail(str(exc))
    return len(report.made)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="fidelity")
def hydra_main(cfg: DictConfig) -> int:
    """``cnas-fidelity`` (and ``launch/fidelity.py``): every array task (and every rank of it)
    runs this Hydra task."""
    return run_fidelity_task(cfg)


#: The command: overrides checked first (a typo: one ``error:`` line), then the Hydra app.
main = checked_command("fidelity", hydra_main)
