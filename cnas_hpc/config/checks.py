"""Value checks shared by the config schemas; each raises ``ValueError`` naming the key."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from cnas_hpc.common.errors import ConfigError


def check_int(key: str, value: object, *, minimum: int) -> None:
    """``value`` must be an integer ``>= minimum`` (``bool`` is refused: ``true`` is a typo)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def check_float(key: str, value: object) -> None:
    """``value`` must be a number (int or float, not NaN, not ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{key} must be a number, got {value!r}")


def check_positive_ints(**values: object) -> None:
    """Every value must be an integer ``>= 1``; the error names the first that is not."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_positive_int_attrs(section: str, obj: object, names: Iterable[str]) -> None:
    """Each named attribute of ``obj`` must be an integer ``>= 1`` (``bool`` is refused); the
    error names the first that is not as ``section.name``."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{section}.{name} must be an integer >= 1, got {value!r}")


def check_positive(section: str, obj: object, names: tuple[str, ...]) -> None:
    """Each named attribute of ``obj`` must be ``> 0`` (the error names ``section.name``)."""
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def check_choice(key: str, value: str, choices: Collection[str]) -> None:
    """``value`` must be one of ``choices`` (a mapping's keys count); the error lists them in
    their order."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
