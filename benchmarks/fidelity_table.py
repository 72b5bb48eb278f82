"""One table of every fidelity study under a results folder: which score ranks cells best.

    python benchmarks/fidelity_table.py runs/fidelity-cifar10

Reads ``<home>/fidelity/*/fidelity.json`` (written by ``launch/fidelity.py``) and prints, per
study and per objective, Kendall tau with its interval, Spearman rho, the top-k overlap, the
tau of the parameter count alone, the score's noise share and the time the scores took.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate


def _interval(value: dict[str, Any] | None) -> str:
    if not value or value.get("value") is None:
        return "-"
    low, high = value.get("low"), value.get("high")
    if low is None or high is None:
        return f"{value['value']:+.2f}"
    return f"{value['value']:+.2f} [{low:+.2f}, {high:+.2f}]"


def rows_of(home: Path) -> list[list[str]]:
    """One row per study and objective."""
    rows = []
    for path in sorted((home / "fidelity").glob("*/fidelity.json")):
        report = json.loads(path.read_text())
        noise = report.get("noise_std")
        spread = report.get("score_spread")
        share = f"{noise / spread:.2f}" if noise is not None and spread else "-"
        for objective, interval in report["by_objective"].items():
            if interval is None:
                continue
            main = objective == report["objective"]
            setup = report.get("setup", {})
            label = (
                f"proxy {setup.get('proxy')} {setup.get('epochs')} ep {setup.get('loss')} "
                f"frac {setup.get('fraction')}"
                if setup
                else path.parent.name
            )
            rows.append(
                [
                    label,
                    objective,
                    str(report["n_measured"]),
                    _interval(interval),
                    _interval(report["rho"]) if main else "",
                    f"{report['top_k_overlap']:.2f}"
                    if main and report["top_k_overlap"] is not None
                    else "",
                    _interval(report["params_tau"]) if main else "",
                    share if main else "",
                    " ".join(f"{t:+.2f}" for t in report["by_epoch"] if t is not None)
                    if main
                    else "",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("home", type=Path, help="the output_dir of the fidelity studies")
    args = parser.parse_args()
    headers = [
        "study", "score", "cells", "Kendall tau [95% CI]", "Spearman rho", "top-5",
        "params tau", "noise share", "tau by epoch",
    ]  # fmt: skip
    print(tabulate(rows_of(args.home), headers, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
