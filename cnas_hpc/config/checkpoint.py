"""The ``checkpoint`` section: where and how often training state is saved."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often trial checkpoints are written.

    Attributes:
        enabled: save checkpoints at all.
        dir: root folder (default ``<output_dir>/checkpoints``; must be shared by the workers).
        every_minutes: also save within an epoch when this much time passed since the last save.
    """

    enabled: bool = True
    dir: str | None = None
    every_minutes: float = 10.0

    def __post_init__(self) -> None:
        if self.every_minutes <= 0:
            raise ValueError(f"checkpoint.every_minutes must be > 0, got {self.every_minutes}")
