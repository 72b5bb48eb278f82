"""Download a torchvision data set on a node with internet (the login node), or check it.

Compute nodes have no internet, so searches read ``cifar10`` / ``cifar100`` / ``stl10`` from a
folder prepared here::

    python launch/prepare_data.py cifar10 --root /shared/data          # download, then check
    python launch/prepare_data.py cifar10 --root /shared/data --check  # only check

Exit status 0 when the data is ready; 2 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys

from cnas_hpc.config.data import TORCHVISION_SOURCES, DataConfig
from cnas_hpc.data.datasets import check_available, download_dataset


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dataset", choices=TORCHVISION_SOURCES)
    parser.add_argument("--root", required=True, help="folder to hold the data set (data.root)")
    parser.add_argument("--check", action="store_true", help="only check, do not download")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            download_dataset(args.dataset, args.root)
        check_available(DataConfig(source=args.dataset, root=args.root))
    except (OSError, RuntimeError, ValueError) as exc:
        # One line, whatever raised (urllib, torchvision, our checks).
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"prepare_data: error: {message}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is ready under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
