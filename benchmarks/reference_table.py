"""Print the README's side-by-side table from fidelity reports of the same reference cells.

python benchmarks/reference_table.py LABEL=path/to/fidelity.json [LABEL=...]

Each report's rankings are listed under its label (the label names the setting the label-free
rows were measured with); rows that several reports share (params, MACs, the file's rankings)
are printed once, from the first report. Supervised rows are thinned to the cheapest and the
best per cost decade so the table stays readable; every row is in the reports themselves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _interval(value: dict[str, float] | None) -> str:
    if not value:
        return "-"
    return f"{value['value']:+.2f} [{value['low']:+.2f}, {value['high']:+.2f}]"


def _cost(row: dict[str, Any]) -> str:
    cost = row["cost_s"]
    if cost is None:
        return "?"
    if cost == 0:
        return "0"
    if cost >= 3600:
        return f"{cost / 3600:.2f} {row['device']}-h"
    return f"{cost:.0f} {row['device']}-s" if cost >= 10 else f"{cost:.1f} {row['device']}-s"


def main(argv: list[str]) -> None:
    seen: set[str] = set()
    print(
        "| ranking | measured with | labels | cost per cell | Kendall tau [95% CI] | "
        "Spearman rho | top-5 | noise share |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for spec in argv:
        label, _, path = spec.partition("=")
        report = json.loads(Path(path).read_text())
        for row in report["rankings"]:
            shared = row["kind"] in ("size", "supervised (file)")
            key = row["name"] if shared else f"{label}:{row['name']}"
            if key in seen or row["name"] == "knn_accuracy":
                continue
            seen.add(key)
            setting = row.get("note") or ("" if shared else label)
            noise = "-" if row.get("noise_share") is None else f"{row['noise_share']:.2f}"
            top = "-" if row.get("top_k_overlap") is None else f"{row['top_k_overlap']:.1f}"
            print(
                f"| {row['name']} | {setting} | {'yes' if row['labels'] else 'no'} | "
                f"{_cost(row)} | {_interval(row['tau'])} | {_interval(row['rho'])} | {top} | "
                f"{noise} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
