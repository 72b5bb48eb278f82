"""Command-line overrides checked before Hydra runs: a typo gets one line, exit 2.

Hydra reports a wrong group option (``data=imagenet``, ``model=proxy_smal``) or an unknown key
(``search.ntrials=5``) with a multi-line message, exit status 1, and for a key the advice to
append it with ``+search.ntrials=5`` (wrong here: the user meant ``search.n_trials``).
:func:`check_overrides` composes the config with the command's overrides the way Hydra will
(a sweep by its first value) and turns those failures into one ``error:`` line naming the
nearest valid name (:mod:`difflib`). Anything it cannot judge is left to Hydra.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from cnas_hpc.cli.common import fail
from cnas_hpc.common.errors import ConfigError

#: Command-line flags after which the overrides are still the whole rest (others: Hydra's).
_PLAIN_FLAGS = ("-m", "--multirun")


def check_overrides(config_dir: Path, config_name: str, argv: Sequence[str]) -> None:
    """Exit with one ``error:`` line (status 2) when an override names no group option or key.

    Args:
        config_dir: the folder of the app's configs.
        config_name: the app's primary config (``search``).
        argv: the command's arguments (``sys.argv[1:]``). With any flag but ``-m`` (``--cfg``,
            ``--help``, ``-cn``, ...) nothing is checked: Hydra handles those commands.
    """
    if any(arg.startswith("-") and arg not in _PLAIN_FLAGS for arg in argv):
        return
    overrides = [arg for arg in argv if arg not in _PLAIN_FLAGS]
    try:
        composable = _first_values(overrides)
        _compose(config_dir, config_name, composable)
    except ConfigError as exc:
        fail(str(exc))


def _first_values(overrides: list[str]) -> list[str]:
    """The overrides with each sweep replaced by its first value (what one job composes)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot read the override: {str(exc).strip().splitlines()[0]}") from None
    out: list[str] = []
    for text, override in zip(overrides, parsed, strict=True):
        if not override.is_sweep_override():
            out.append(text)
            continue
        key = text.split("=", 1)[0]
        try:
            first = next(iter(override.sweep_string_iterator()), None)
        except Exception:  # a sweep Hydra expands itself (glob): leave it to Hydra
            continue
        if first is not None:  # an empty sweep is refused later, naming the sweep
            out.append(f"{key}={first}")
    return out


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, overrides)) from None
    except ConfigCompositionException as exc:
        key = getattr(exc.__cause__, "full_key", None)
        if not isinstance(key, str) or "Could not override" not in str(exc):
            raise ConfigError(_first_line(exc)) from None
        raise ConfigError(_unknown_key(config_dir, config_name, overrides, key)) from None


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__
    text = str(exc).strip().splitlines()[0]
    return f"{text} {str(cause).strip().splitlines()[0]}" if cause else text


def _missing_option(exc: MissingConfigException, overrides: list[str]) -> str:
    found = re.search(r"Could not find '(.+)/([^/']+)'", str(exc))
    if found is None:
        return _first_line(exc)
    group, name = found.groups()
    options = list(exc.options or [])
    written = next((o for o in overrides if o.lstrip("+~").startswith(f"{group}=")), None)
    nearest = difflib.get_close_matches(name, options, n=1)
    hint = f": did you mean {group}={nearest[0]}?" if nearest else ""
    return (
        f"{written or f'{group}={name}'}: config group {group} has no option {name!r}{hint} "
        f"(options: {', '.join(options)})"
    )


def _sets(override: str, key: str) -> bool:
    """Whether ``override`` sets ``key`` or a key under it."""
    written = override.lstrip("+~").split("=", 1)[0]
    return written == key or written.startswith(f"{key}.")


def _unknown_key(config_dir: Path, config_name: str, overrides: list[str], key: str) -> str:
    """``key`` is no key of the config: name its nearest sibling."""
    others = [o for o in overrides if not _sets(o, key)]
    cfg: DictConfig | None
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=others, return_hydra_config=True)
    except Exception:  # another bad override: name the siblings of the bare config
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, return_hydra_config=True)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):  # the parent is unknown too: judge the first part
        parent, leaf = "", key.split(".")[0]
        node = cfg
    siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
    nearest = difflib.get_close_matches(leaf, siblings, n=1)
    prefix = f"{parent}." if parent else ""
    if nearest:
        return f"{key} is not a key of the config: did you mean {prefix}{nearest[0]}?"
    where = f"keys of {parent}" if parent else "top-level keys"
    return f"{key} is not a key of the config ({where}: {', '.join(siblings)})"


#: The package's Hydra configs (``pkg://cnas_hpc.configs``) as a folder, for the check.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


#: ``search.constraints=[params<=2.6e6, ...]``: ``<``, ``>`` and ``=`` are not characters of an
#: unquoted Hydra value; the elements are quoted for the user (``["params<=2.6e6", ...]``).
_CONSTRAINTS = re.compile(r"^(\+{0,2}search\.constraints=)\[(.*)\]$")


def quote_constraints(argv: Sequence[str]) -> list[str]:
    """``argv`` with the elements of a ``search.constraints=[...]`` list quoted (those already
    quoted, and every other argument, unchanged): the command line users write,
    ``'search.constraints=[params<=2.6e6]'``, reads as Hydra's ``["params<=2.6e6"]``."""
    out = []
    for arg in argv:
        match = _CONSTRAINTS.match(arg)
        if match is None:
            out.append(arg)
            continue
        items = [item.strip() for item in match.group(2).split(",") if item.strip()]
        quoted = [item if item[0] in "'\"" else f'"{item}"' for item in items]
        out.append(f"{match.group(1)}[{', '.join(quoted)}]")
    return out


def checked_command(config_name: str, hydra_main: Callable[[], object]) -> Callable[[], object]:
    """A command (console script, ``launch/*.py``, ``python -m cnas_hpc``): check the command
    line's overrides against ``config_name`` (:func:`check_overrides`), then run ``hydra_main``,
    the Hydra app, which reads the same ``sys.argv``."""

    def command() -> object:
        sys.argv[1:] = quote_constraints(sys.argv[1:])
        check_overrides(CONFIG_DIR, config_name, sys.argv[1:])
        return hydra_main()

    command.__doc__ = hydra_main.__doc__
    return command
