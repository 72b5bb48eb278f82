"""Build a config section's dataclass from a plain mapping, with one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from cnas_hpc.common.errors import ConfigError

T = TypeVar("T")


def build_section(cls: type[T], section: str, values: Mapping[Any, Any] | None) -> T:
    """Instantiate the dataclass ``cls`` from a mapping, turning every error into one line.

    Args:
        cls: A config dataclass (its ``__post_init__`` validates the values).
        section: The dotted config path of the section, for messages (``"train"``).
        values: The section's values; lists become tuples. ``None`` gives the defaults.

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value, one line naming
            ``section.key``.
    """
    values = {str(key): value for key, value in (values or {}).items()}
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} (known: {', '.join(sorted(known))})")
    for key, value in values.items():
        # Hydra hands lists; the dataclasses hold tuples (hashable, immutable).
        if isinstance(value, list):
            values[key] = tuple(value)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from None
