"""The ``checkpoint`` section: where and how often training state is saved."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cnas_hpc.config.build import section


@section("checkpoint")
class CheckpointConfig:
    """Where and how often trial checkpoints are written.

    Attributes:
        enabled: save checkpoints at all.
        dir: root folder (default ``<output_dir>/checkpoints``; must be shared by the workers).
        every_minutes: also save within an epoch when this much time passed since the last save.
    """

    enabled: bool = True
    dir: str | None = None
    every_minutes: Annotated[float, Field(gt=0)] = 10.0
