"""Build a config section's dataclass from a plain mapping, with one-line errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from cnas_hpc.common.errors import ConfigError

T = TypeVar("T")

#: Scalar annotations checked before a section is built: name -> what the message calls it.
_SCALARS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _accepts(kind: type, value: object) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # `true` where a number belongs is a typo, not 1
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _check_type(section: str, key: str, annotation: object, value: object) -> None:
    """Refuse a value of the wrong scalar type, naming the key (``search.n_trials=abc``).

    Only plain scalars and their optional forms are checked (``int``, ``float | None``, ...);
    the schema's ``__post_init__`` judges the value itself.
    """
    options: tuple[object, ...] = (annotation,)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = typing.get_args(annotation)
    if value is None and type(None) in options:
        return
    kinds = [kind for kind in options if isinstance(kind, type) and kind in _SCALARS]
    if not kinds or len(kinds) != len([o for o in options if o is not type(None)]):
        return  # not a plain scalar field: nested section, tuple, ...
    if not any(_accepts(kind, value) for kind in kinds):
        wanted = " or ".join(_SCALARS[kind] for kind in kinds)
        raise ConfigError(f"{section}.{key} must be {wanted}, got {value!r}")


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
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        # Hydra hands lists; the dataclasses hold tuples (hashable, immutable).
        if isinstance(value, list):
            values[key] = tuple(value)
        _check_type(section, key, hints.get(key), value)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from None
