"""The ``wandb`` config group: whether and where runs are written to Weights & Biases."""

from __future__ import annotations

from dataclasses import dataclass

MODES: tuple[str, ...] = ("disabled", "offline", "online")


@dataclass(frozen=True)
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
        ValueError: A field is invalid (one line naming the ``wandb.<key>``).
    """

    mode: str = "disabled"
    project: str = "cnas-hpc"
    entity: str | None = None
    dir: str | None = None
    tags: tuple[str, ...] = ()
    study_view_every: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"wandb.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.project, str) or not self.project.strip():
            raise ValueError(f"wandb.project must be a non-empty string, got {self.project!r}")
        if self.entity is not None and (not isinstance(self.entity, str) or not self.entity):
            raise ValueError(
                f"wandb.entity must be null or a non-empty string, got {self.entity!r}"
            )
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir):
            raise ValueError(f"wandb.dir must be null or a non-empty path, got {self.dir!r}")
        if isinstance(self.tags, str) or not all(
            isinstance(tag, str) and tag.strip() for tag in self.tags
        ):
            raise ValueError(f"wandb.tags must be a list of non-empty strings, got {self.tags!r}")
        # bool is an int: reject it explicitly, `study_view_every: true` is a typo, not 1.
        if (
            isinstance(self.study_view_every, bool)
            or not isinstance(self.study_view_every, int)
            or self.study_view_every < 0
        ):
            raise ValueError(
                f"wandb.study_view_every must be an integer >= 0, got {self.study_view_every!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether anything is written to W&B."""
        return self.mode != "disabled"
