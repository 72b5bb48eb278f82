"""A Hydra sweeper that turns what an app planned into one job each: ONE array per multirun.

``launch/evaluate.py -m ...`` (``hydra/sweeper=cells``) sweeps ``eval.cell`` over the planned
cells; ``launch/fidelity.py -m ...`` (``hydra/sweeper=units``) sweeps ``fidelity.unit`` over the
measurements still to make. The plan is made by the app's callback in ``on_multirun_start``,
which Hydra runs before the sweep; the sweeper asks the app's ``planner`` (a function named by
its dotted path in the sweeper config, resolved with Hydra's ``get_method``: never ``eval``) for
the values. An explicit sweep of the same key on the command line is kept as given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.utils import get_method
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PlannedSweeper(BasicSweeper):
    """Hydra's basic sweeper plus ``<key>=<the planner's values>``.

    Args:
        key: the config key to sweep (``eval.cell``, ``fidelity.unit``).
        planner: dotted path of ``planner(config) -> list[int]``.
        max_batch_size, params: as Hydra's basic sweeper.
    """

    def __init__(
        self,
        key: str,
        planner: str,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.key = key
        self.planner: Callable[[DictConfig], Sequence[int]] = get_method(planner)

    def sweep(self, arguments: list[str]) -> Any:
        if not any(arg.split("=", 1)[0].lstrip("+~") == self.key for arg in arguments):
            assert self.config is not None
            values = list(self.planner(self.config))
            if not values:
                log.info("nothing left to do: every planned %s is complete", self.key)
                return []
            arguments = [*arguments, f"{self.key}={','.join(str(v) for v in values)}"]
        return super().sweep(arguments)
