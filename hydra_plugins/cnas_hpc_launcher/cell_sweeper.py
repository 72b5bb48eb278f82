"""A Hydra sweeper that turns an evaluation's planned cells into one job each.

``launch/evaluate.py -m ...`` (``hydra/sweeper=cells``, the evaluate config's default) sweeps
``eval.cell`` over the cells the submitting side planned (``EvalCallback.on_multirun_start``
runs before the sweep), so the launcher submits ONE array with one task per cell. An explicit
``eval.cell=...`` sweep on the command line is kept as given.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from cnas_hpc.cli.evaluate import planned_cells


class CellSweeper(BasicSweeper):
    """Hydra's basic sweeper plus ``eval.cell=range(<planned cells>)``."""

    def sweep(self, arguments: list[str]) -> Any:
        if not any(arg.split("=", 1)[0].lstrip("+~") == "eval.cell" for arg in arguments):
            assert self.config is not None
            arguments = [*arguments, f"eval.cell=range({planned_cells(self.config)})"]
        return super().sweep(arguments)
