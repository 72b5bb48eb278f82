"""The ``launch/report.py`` entry point: validate the config, then run the study report."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from cnas_hpc.analysis.report import run_report
from cnas_hpc.cli.common import CONFIG_PATH, USER_ERRORS, fail, settings_of
from cnas_hpc.cli.overrides import checked_command
from cnas_hpc.config.report import ReportConfig


def report_task(cfg: DictConfig) -> int:
    """Body of ``launch/report.py``: validate the composed config and run the report.

    Bad input (config, missing or unreachable study) ends the process with one line
    ``error: ...`` on stderr and exit status 2, through :func:`cnas_hpc.cli.common.fail`.

    Args:
        cfg: The composed ``report`` config (a ``DictConfig``: the search config plus ``report``).
    """
    try:
        settings = settings_of(cfg)
        node = cfg.get("report")
        report = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        if not isinstance(report, dict):
            raise ValueError(f"report must be a mapping of settings, got {report!r}")
        return run_report(settings, ReportConfig.from_mapping(report))
    except USER_ERRORS as exc:
        fail(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
def hydra_main(cfg: DictConfig) -> int:
    """``cnas-report`` (and ``launch/report.py``): print the status and write the report."""
    return report_task(cfg)


#: The command: overrides checked first (a typo: one ``error:`` line), then the Hydra app.
main = checked_command("report", hydra_main)
