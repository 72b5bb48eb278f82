"""``python -m cnas_hpc <command> [overrides]``: every command of the package, one entry point.

The same commands are installed as console scripts (``cnas-search``, ``cnas-evaluate``, ...) and
run from a clone as ``launch/<command>.py``. ``python -m cnas_hpc <command> --help`` lists the
command's config groups.
"""

from __future__ import annotations

import sys

from cnas_hpc.cli.commands import dispatch

if __name__ == "__main__":
    sys.exit(dispatch(sys.argv[1:]))
