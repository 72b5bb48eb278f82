"""The ``wandb`` config group: whether and where runs are written to Weights & Biases."""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import Field

from cnas_hpc.config.build import Natural, section

Mode = Literal["disabled", "offline", "online"]
MODES: tuple[str, ...] = typing.get_args(Mode)
_Text = Annotated[str, Field(min_length=1, pattern=r"\S")]


@section("wandb")
class WandbConfig:
    """How (and whether) a search reports to W&B; the ``wandb`` config group.

    Attributes:
        mode: ``disabled`` (nothing written, wandb not imported), ``offline`` (the cluster
            default: local files, ``wandb sync`` later) or ``online``.
        project: W&B project.
        entity: W&B entity (team or user); None: the account's default.
        dir: Where wandb writes (it adds its own ``wandb/`` folder below); None:
            ``<output_dir>/wandb``. Must be writable by every worker.
        tags: Tags added to every run.
        study_view_every: Also write a study view every this many completions (0: only on a new
            best and at the end of the budget).

    Raises:
        ConfigError: A field is invalid (one line naming the ``wandb.<key>``).
    """

    mode: Mode = "disabled"
    project: _Text = "cnas-hpc"
    entity: _Text | None = None
    dir: _Text | None = None
    tags: tuple[_Text, ...] = ()
    study_view_every: Natural = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is written to W&B."""
        return self.mode != "disabled"
