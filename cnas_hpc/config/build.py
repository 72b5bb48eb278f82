"""Config sections as pydantic dataclasses, every validation error turned into one line.

A section is declared with :func:`section`: a frozen pydantic dataclass in strict mode (``true``
is no integer, ``"5"`` no number), unknown keys forbidden, bounds and choices in its annotations
(``Annotated[int, Field(ge=1)]``, ``Literal[...]``), cross-field rules in ``__post_init__``
(raising :class:`ConfigError`). Building one raises :class:`ConfigError` with one line naming
``section.key`` and the bad value (``train.lr must be > 0, got 0``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, dataclass_transform

import pydantic.dataclasses
from pydantic import ConfigDict, Field, ValidationError

from cnas_hpc.common.errors import ConfigError

T = TypeVar("T")

#: An integer >= 1 / >= 0; a number in [0, 1] (a probability, a share).
Count = Annotated[int, Field(ge=1)]
Natural = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]

#: What a wrong type is called, by the first word of pydantic's error type (``int_type``).
_WANTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
_BOUNDS = {"Gt": ("(", "> "), "Ge": ("[", ">= "), "Lt": (")", "< "), "Le": ("]", "<= ")}


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def section(name: str) -> Callable[[type[T]], type[T]]:
    """Make ``cls`` the frozen, validated schema of config section ``name`` (``"train"``).

    Lists given to its constructor (Hydra's) are stored as tuples (hashable, immutable).
    """

    def wrap(cls: type[T]) -> type[T]:
        config = ConfigDict(strict=True, extra="forbid")
        built: Any = pydantic.dataclasses.dataclass(frozen=True, config=config)(cls)
        validate = built.__init__

        @functools.wraps(validate)
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            lists = {k: tuple(v) for k, v in kwargs.items() if isinstance(v, list)}
            try:
                validate(self, *args, **{**kwargs, **lists})
            except ValidationError as exc:
                raise ConfigError(_one_line(name, built, exc.errors()[0])) from None

        built.__init__ = init
        return built

    return wrap


def build_section(cls: Callable[..., T], values: Mapping[Any, Any] | None) -> T:
    """Build a section from a composed (plain) mapping (``None``: the defaults)."""
    return cls(**{str(key): value for key, value in (values or {}).items()})


def build_settings(cls: Any, cfg: Mapping[str, Any], **given: Any) -> Any:
    """Build an app's settings from its composed config (a resolved plain mapping).

    Each field typed as a section is built from ``cfg[field]`` (absent: its defaults), every
    other field is taken from ``cfg`` where set; ``given`` values are taken as they are.
    """
    hints = typing.get_type_hints(cls)
    values = dict(given)
    for name in (f.name for f in dataclasses.fields(cls) if f.name not in given):
        if hasattr(hints[name], "__pydantic_fields__"):
            values[name] = build_section(hints[name], cfg.get(name))
        elif name in cfg:
            values[name] = cfg[name]
    return cls(**values)


def _one_line(name: str, cls: Any, error: Any) -> str:
    """One pydantic error as the project's line, naming ``section.key`` and the value."""
    if error["type"] == "value_error":  # a rule of __post_init__: its message names the key
        return str(error["ctx"]["error"])
    loc, given = error["loc"], error["input"]
    if error["type"] == "missing" and loc and isinstance(loc[-1], int):  # a pair of one value
        loc, error = loc[:-1], {**error, "type": "too_short"}  # (its input: the whole list)
    key = name + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    key = key.removeprefix(".")  # the settings' own fields (``device``) have no section name
    if error["type"] == "unexpected_keyword_argument":
        known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
        return f"unknown key {key} (known: {known})"
    info = cls.__pydantic_fields__.get(loc[0]) if loc else None
    kind, metadata = _unwrap(info.annotation if info else None, info.metadata if info else [])
    got = f", got {list(given) if isinstance(given, tuple) else given!r}"  # as Hydra gave it
    if typing.get_origin(kind) is Literal:
        return f"{key} must be one of {', '.join(map(str, typing.get_args(kind)))}{got}"
    bounds = {type(m).__name__: m for m in metadata if type(m).__name__ in _BOUNDS}
    if bounds and error["type"].startswith(("greater_than", "less_than")):
        return f"{key} must be {'an integer ' if kind is int else ''}{_range(bounds)}{got}"
    if error["type"] in ("string_too_short", "string_pattern_mismatch"):
        return f"{key} must be a non-empty string{got}"
    if error["type"] in ("too_short", "too_long"):
        items = typing.get_args(kind)
        size = "at least 1 value" if ... in items else f"{len(items)} values"
        return f"{key} must hold {size}{got}"
    wanted = _WANTED.get(error["type"].split("_")[0])
    return f"{key} must be {wanted}{got}" if wanted else f"{key}: {error['msg']}{got}"


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """A field's type without ``None`` and ``Annotated``, and its constraints."""
    if typing.get_origin(annotation) in (typing.Union, type(int | None)):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Annotated:  # an optional bounded value: Count | None
        annotation, *extra = typing.get_args(annotation)
        metadata = [*metadata, *(m for e in extra for m in getattr(e, "metadata", [e]))]
    return annotation, metadata


def _range(bounds: dict[str, Any]) -> str:
    """``> 0``, ``>= 1`` or ``in (0, 1]`` from a field's annotated bounds."""
    ends = [(kind, getattr(bounds[kind], kind.lower())) for kind in _BOUNDS if kind in bounds]
    if len(ends) == 1:
        return f"{_BOUNDS[ends[0][0]][1]}{ends[0][1]}"
    (low, lo), (high, hi) = ends
    return f"in {_BOUNDS[low][0]}{lo}, {hi}{_BOUNDS[high][0]}"
