"""The package's commands by name: what ``python -m cnas_hpc <command>`` dispatches to.

Every command is a Hydra app (``main`` of its ``cli`` module, configs from
:data:`cnas_hpc.cli.common.CONFIG_PATH`); the console scripts ``cnas-<command>`` of
``pyproject.toml`` and the clone's ``launch/<command>.py`` call the same functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cnas_hpc.cli import compare_samplers, evaluate, fidelity, report, search

#: command -> (its Hydra main, one line saying what it does)
COMMANDS: dict[str, tuple[Callable[[], object], str]] = {
    "search": (search.main, "run a label-free architecture search (an array of workers with -m)"),
    "evaluate": (evaluate.main, "train found cells from scratch beside published ones"),
    "fidelity": (fidelity.main, "measure how the label-free score ranks cells vs accuracy"),
    "report": (report.main, "status, best cells and pictures of a search's study"),
    "compare-samplers": (compare_samplers.main, "TPE vs random sampling at equal budgets"),
}


def usage() -> str:
    """The list of commands (``python -m cnas_hpc`` alone, or ``--help``)."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return (
        "usage: python -m cnas_hpc <command> [hydra overrides] [--help]\n"
        "       (installed: cnas-<command> ...)\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "`python -m cnas_hpc <command> --help` lists the command's config groups."
    )


def dispatch(argv: list[str]) -> int:
    """Run ``argv[0]``'s command with the remaining arguments; returns the exit status.

    An unknown command ends with one ``error:`` line (status 2) naming the known ones.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(
            f"error: unknown command {argv[0]!r}; one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    main, _ = COMMANDS[name]
    # Hydra reads sys.argv: the command's own arguments, under the console script's name.
    sys.argv = [f"cnas-{name}", *argv[1:]]
    main()
    return 0
